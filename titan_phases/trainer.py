"""PhasedTrainer: torchtitan's Trainer running a phase schedule.

The subclass is thin; the logic lives in unit-tested pieces:

* the schedule (:mod:`titan_phases.schedule`) is validated before any process group exists
  (:func:`schedule_for`); the phased TrainSpec freezes the model to phase 0 right after
  parallelisation, so torchtitan builds the optimizer over phase 0's params only;
* :class:`~titan_phases.components.phase_controller.PhaseController` decides transitions and is
  checkpointed under its own key;
* :mod:`titan_phases.components.thaw` and the phase-aware optimizer/LR containers carry them out.

Transitions happen between steps: after step ``S`` has trained, been checkpointed and
validated, the first thing step ``S + 1`` does is ask the controller. A checkpoint therefore
always holds "phase k after step S", and resuming from it repeats the same decision.

Resume order: read the saved phase from the checkpoint, check the schedule is compatible, thaw
and rebuild optimizer and schedulers to that phase, and only then let torchtitan load the state.

Validation (issue: plateau transitions). After each validation the loss (identical on every
rank: torchtitan reduces it, and rank 0's value is broadcast) feeds a ``ReduceLROnPlateau``
scheduler if one is active and the controller's plateau tracker. torchtitan saves a step's
checkpoint *before* validating at that step, so a job resumed from such a checkpoint repeats
that validation first: the decisions it feeds are then the same as in a run that never stopped.
A plateau in the final phase ends training with a full checkpoint and says why, in the log and
in metrics.jsonl. With ``restore_best`` each new best state of a phase is saved
(:mod:`titan_phases.components.best_checkpoint`) and restored before the phase's transition:
the model always, optimizer and LR scheduler state unless the next phase replaces them.

**Limitations**
No pipeline parallelism: torchtitan builds pipeline schedules once and a transition cannot
rebuild them (schedule validation rejects ``pipeline_parallel_degree > 1``).
Uses two private helpers of torchtitan 0.2.2's CheckpointManager (``_find_load_step``,
``_create_checkpoint_id``) to find the checkpoint it will load.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterator

import torch
from torchtitan.config import JobConfig
from torchtitan.train import Trainer

from titan_phases.agreement import agreed_report
from titan_phases.components.best_checkpoint import BestCheckpoints
from titan_phases.components.checkpoint_entries import entry_names, read_entries
from titan_phases.components.early_stopping import PlateauTracker
from titan_phases.components.flops import ideal_phase_ratio
from titan_phases.components.optimizer import PhaseMismatchError
from titan_phases.components.phase_controller import (
    CHECKPOINT_KEY,
    PhaseController,
    ScheduleMismatchError,
    Transition,
)
from titan_phases.components.thaw import (
    limit_backward_all_gathers,
    parameters_named,
    reshard_fsdp_modules,
    set_trainable,
    ThawCount,
)
from titan_phases.schedule import load_and_validate, ResolvedSchedule

logger = logging.getLogger(__name__)

_schedules: dict[str, ResolvedSchedule] = {}


def schedule_for(job_config: JobConfig) -> ResolvedSchedule:
    """The job's validated schedule (raises ScheduleError), computed once per configuration."""
    key = json.dumps(job_config.to_dict(), sort_keys=True, default=str)
    if key not in _schedules:
        resolved = load_and_validate(job_config)
        for warning in resolved.warnings:
            logger.warning("%s", warning)
        _schedules[key] = resolved
    return _schedules[key]


def read_saved_phase_state(checkpoint_id: str) -> dict[str, Any] | None:
    """The PhaseController state stored in a DCP checkpoint, or None if it has none."""
    if f"{CHECKPOINT_KEY}.phase" not in entry_names(checkpoint_id):
        return None
    state = {CHECKPOINT_KEY: {"phase": 0, "json": ""}}
    read_entries(state, checkpoint_id)
    return state[CHECKPOINT_KEY]


def _refuse_resume_if_any_rank_objects(problem: str | None) -> None:
    """Raise ScheduleMismatchError on every rank if any rank found ``problem`` with the resume."""
    report = agreed_report(problem)
    if report is not None:
        raise ScheduleMismatchError(report)


class PhasedTrainer(Trainer):
    """torchtitan's Trainer plus phase transitions; see the module docstring."""

    def __init__(self, job_config: JobConfig) -> None:
        super().__init__(job_config)
        self._full_flops_per_token = self.metrics_processor.num_flops_per_token
        self.schedule = schedule_for(job_config)
        phases_config = job_config.phases
        mode = phases_config.effective_transition_mode(job_config.validation.enable)
        self.phase_controller = PhaseController(
            [p.max_transition_step for p in self.schedule.schedule.phases],
            self.schedule.phase_params,
            PlateauTracker(phases_config.patience, phases_config.min_delta, phases_config.mode),
            plateau_transitions=mode in ("plateau", "both"),
        )
        self.checkpointer.states[CHECKPOINT_KEY] = self.phase_controller
        job_config.training.max_norm = self.schedule.max_norm_at(0)
        self.best_checkpoints = (
            BestCheckpoints(job_config.job.dump_folder) if phases_config.restore_best else None
        )
        self._resume_phase_structure()
        self._report_phase()
        self._first_step_of_process = True
        self._first_continue_check = True

    def _checkpoint_to_load(self) -> str | None:
        checkpointer = self.checkpointer
        if not checkpointer.enable or not os.path.isdir(checkpointer.folder):
            return None
        load_step = self.job_config.checkpoint.load_step
        step = checkpointer._find_load_step() if load_step == -1 else load_step
        if step <= 0:
            return None
        return checkpointer._create_checkpoint_id(step)

    def _resume_phase_structure(self) -> None:
        checkpoint_id = self._checkpoint_to_load()
        saved = read_saved_phase_state(checkpoint_id) if checkpoint_id else None
        if saved is None:
            return
        problem = None
        try:
            self.phase_controller.load_state_dict(saved)
        except ScheduleMismatchError as exc:
            problem = f"{checkpoint_id}: {exc}"
        _refuse_resume_if_any_rank_objects(problem)
        target = self.phase_controller.phase
        if target > 0:
            logger.info(
                "Resuming in phase %d from %s: rebuilding the phase structure before loading",
                target,
                checkpoint_id,
            )
        for phase in range(1, target + 1):
            self._enter_phase(phase)
        # DCP's own error for a live optimizer ahead of the checkpoint is opaque; this names both.
        problem = None
        try:
            self.optimizers.verify_checkpoint(checkpoint_id)
        except PhaseMismatchError as exc:
            problem = str(exc)
        _refuse_resume_if_any_rank_objects(problem)

    def _enter_phase(self, phase: int) -> ThawCount:
        """Thaw ``phase``'s params and extend optimizers and LR schedulers to it."""
        schedule = self.schedule
        spec = schedule.schedule.phases[phase]
        trainable = set_trainable(self.model_parts, schedule.trainable_params(phase))
        new_params = parameters_named(self.model_parts, schedule.phase_params[phase])
        optimizer = None
        if spec.new_optimizer is not None:
            optimizer = (spec.new_optimizer.class_path, schedule.optimizer_kwargs(spec.new_optimizer))
        self.optimizers.add_phase(phase, new_params, lr=schedule.group_lr(phase), optimizer=optimizer)
        scheduler = spec.new_lr_scheduler
        if scheduler is None:
            self.lr_schedulers.add_phase(phase)
        else:
            self.lr_schedulers.add_phase(
                phase,
                (scheduler.class_path, dict(scheduler.init_args)),
                init_pg_lrs=schedule.init_pg_lrs(phase),
                use_current_optimizer_pg_lrs=scheduler.use_current_optimizer_pg_lrs,
            )
        limit_backward_all_gathers(self.model_parts)
        self.job_config.training.max_norm = schedule.max_norm_at(phase)
        if self.job_config.compile.enable:
            # Compiled graphs may have specialised on requires_grad (pytorch issue 139476).
            torch._dynamo.reset()
        return trainable

    def _transition(self, transition: Transition) -> None:
        if self.best_checkpoints is not None:
            self._restore_best(transition)
        trainable = self._enter_phase(transition.to_phase)
        self.phase_controller.commit(transition)
        self.metrics_processor.log_event(
            {
                "type": "transition",
                "step": transition.after_step,
                "from_phase": transition.from_phase,
                "to_phase": transition.to_phase,
                "reason": transition.reason,
            }
        )
        numels = self.schedule.param_numels
        thawed = self.schedule.phase_params[transition.to_phase]
        lrs = [f"{g['lr']:.3g}" for g in next(iter(self.optimizers)).param_groups]
        logger.info(
            "Phase %d -> %d after step %d (%s): thawed %d tensors, %s elements "
            "(%s of %s trainable); optimizer %s; lr scheduler %s; group lrs [%s]",
            transition.from_phase,
            transition.to_phase,
            transition.after_step,
            transition.reason,
            len(thawed),
            f"{sum(numels[name] for name in thawed):,}",
            f"{trainable.elements:,}",
            f"{sum(numels.values()):,}",
            self.optimizers.optimizer_cls.__name__,
            type(self.lr_schedulers.schedulers[0]).__name__,
            ", ".join(lrs),
        )
        self._report_phase()

    def _best_states(self, with_optimizer: bool, with_lr_scheduler: bool) -> dict[str, Any]:
        # After a validation forward the root module is still unsharded, and the optimizer's
        # state dict would look its params up among the unsharded tensors.
        reshard_fsdp_modules(self.model_parts)
        states: dict[str, Any] = {"model": self.checkpointer.states["model"]}
        if with_optimizer:
            states["optimizer"] = self.optimizers
        if with_lr_scheduler:
            states["lr_scheduler"] = self.lr_schedulers
        return states

    def _restore_best(self, transition: Transition) -> None:
        plateau = self.phase_controller.plateau
        if plateau.best_step is None:
            logger.info(
                "restore_best: phase %d had no validation; continuing from its last state",
                transition.from_phase,
            )
            return
        following = self.schedule.schedule.phases[transition.to_phase]
        keep_optimizer = following.new_optimizer is None
        keep_scheduler = following.new_lr_scheduler is None
        path = self.best_checkpoints.path(transition.from_phase, plateau.best_step)
        self.best_checkpoints.restore(path, self._best_states(keep_optimizer, keep_scheduler))
        skipped = [
            f"{what} state (phase {transition.to_phase} builds a new one)"
            for what, kept in (("optimizer", keep_optimizer), ("lr scheduler", keep_scheduler))
            if not kept
        ]
        logger.info(
            "restore_best: restored phase %d's best state (validation loss %.6g after step %d) "
            "from %s%s",
            transition.from_phase,
            plateau.best,
            plateau.best_step,
            path,
            f"; not restored: {', '.join(skipped)}" if skipped else "",
        )

    def _observe_validation(self) -> None:
        """Feed the validation just run after ``self.step`` (if any) to schedulers and controller."""
        result = self.metrics_processor.last_validation
        if result is None or result[0] != self.step:
            return
        self.metrics_processor.last_validation = None
        value = torch.tensor([result[1]], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(value, src=0)
        loss = value.item()
        self.lr_schedulers.step_on_metric(loss)
        improved = self.phase_controller.observe_validation(self.step, loss)
        if improved and self.best_checkpoints is not None:
            self.best_checkpoints.save(
                self.phase_controller.phase, self.step, self._best_states(True, True)
            )

    def _repeat_validation_after_resume(self) -> None:
        validator = getattr(self, "validator", None)
        if (
            validator is None
            or self.step == 0
            or not validator.should_validate(self.step)
            or self.phase_controller.last_validation_step == self.step
        ):
            return
        logger.info("Repeating the validation of step %d, run after its checkpoint", self.step)
        validator.validate(self.model_parts, self.step)

    def _end_early(self) -> None:
        reason = self.phase_controller.stop_reason
        logger.info("Training stops after step %d: %s", self.step, reason)
        self.metrics_processor.log_event({"type": "end", "step": self.step, "reason": reason})
        checkpointer = self.checkpointer
        if checkpointer.enable and not os.path.isdir(checkpointer._create_checkpoint_id(self.step)):
            # A full checkpoint, whatever last_save_model_only says: the run may be resumed
            # or restarted with a longer schedule.
            model_only = checkpointer.last_save_model_only
            checkpointer.last_save_model_only = False
            try:
                checkpointer.save(self.step, last_step=True)
            finally:
                checkpointer.last_save_model_only = model_only

    def should_continue_training(self) -> bool:
        if self._first_continue_check:
            # The checkpoint (if any) was loaded just before the first check.
            self._first_continue_check = False
            self._repeat_validation_after_resume()
        if self.job_config.validation.enable:
            self._observe_validation()
        if self.phase_controller.stop_reason is not None:
            self._end_early()
            return False
        return super().should_continue_training()

    def _report_phase(self) -> None:
        processor = self.metrics_processor
        processor.add_step_metrics({"phase": self.phase_controller.phase})
        processor.phase_changed()
        # torchtitan's FLOPs per token assume every parameter trains; MFU uses the phase's own.
        processor.num_flops_per_token = round(
            self._full_flops_per_token
            * ideal_phase_ratio(
                self.schedule.param_numels,
                self.schedule.trainable_params(self.phase_controller.phase),
            )
        )

    def train_step(
        self, data_iterator: Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]
    ) -> None:
        if self._first_step_of_process:
            # The checkpoint (if any) is loaded now; time steps from here, not from __init__.
            self.metrics_processor.start_at(self.step - 1)
            self._first_step_of_process = False
        transition = self.phase_controller.due(self.step - 1)
        if transition is not None:
            self._transition(transition)
        super().train_step(data_iterator)
