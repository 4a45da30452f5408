"""PhasedTrainer: torchtitan's Trainer running a phase schedule.

The subclass only wires unit-tested pieces into torchtitan's training loop:

* the schedule, resolved once per process (by ``python -m titan_phases.train``'s input check,
  which hands it over; :func:`titan_phases.schedule.load_and_validate` otherwise) and attached
  to the job config for the phased TrainSpec, which freezes the model to phase 0 right after
  parallelisation, so torchtitan builds the optimizer over phase 0's params only, at
  ``[optimizer] lr``: the trainer then starts phase 0 at the schedule's lr (``[phases]
  lr_scale`` applied), which torchtitan's builders do not see;
* :class:`~titan_phases.components.phase_controller.PhaseController` decides transitions and
  is checkpointed under its own key;
* :func:`~titan_phases.components.transition.enter_phase` carries a transition out;
* :mod:`~titan_phases.components.checkpointing.manager` is installed on torchtitan's
  CheckpointManager in one call: integrity records, the checkpoint to resume and the phase
  structure rebuilt to it before torchtitan loads, full saves;
* :class:`~titan_phases.components.checkpointing.best.RestoreBest` for ``restore_best``.

Transitions happen between steps: after step ``S`` has trained, been checkpointed and
validated, the first thing step ``S + 1`` does is ask the controller. A checkpoint therefore
always holds "phase k after step S", and resuming from it repeats the same decision.

After each validation its loss (the same on every rank) feeds a ``ReduceLROnPlateau``
scheduler if one is active and the controller's plateau tracker. torchtitan saves a step's
checkpoint *before* validating at that step, so a job resumed from such a checkpoint repeats
that validation first: the decisions it feeds are then the same as in a run that never stopped.
A plateau in the final phase ends training with a full checkpoint and says why, in the log and
in metrics.jsonl.

After every step the ranks agree (:class:`~titan_phases.components.step_guard.StepGuard`) on
two things, before the step's checkpoint is saved: a non-finite loss stops training (or, with
``phases.nonfinite_loss = 'warn'``, is logged), and a SIGTERM saves a full checkpoint of that
step and stops, so a preempted job restarts where it stopped. A checkpoint save that fails for
want of space stops training too
(:mod:`titan_phases.components.checkpointing.save_failure`), with the checkpoints before it
intact.

Under pipeline parallelism a transition also makes torch's pipeline schedule infer its stages'
metadata again (:mod:`titan_phases.components.pipeline`), and validation losses reach every
rank from the last stage.

**Limitations**
Pipeline parallelism with the zero-bubble schedules is rejected by schedule validation: they drop
the weight grads of stages whose inputs need no grad.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch
from torchtitan.config import JobConfig
from torchtitan.train import Trainer

from titan_phases import patches
from titan_phases.components.checkpointing.best import RestoreBest
from titan_phases.components.checkpointing.manager import install as install_checkpointing
from titan_phases.components.phase_controller import build_phase_controller, Transition
from titan_phases.components.run_record import startup_summary, write_run_record
from titan_phases.components.step_guard import StepGuard, TrainingStopped
from titan_phases.components.thaw import ThawCount
from titan_phases.components.transition import enter_phase, transition_summary
from titan_phases.plan.flops import ideal_phase_ratio
from titan_phases.runtime.ranks import is_rank0
from titan_phases.schedule import attach_schedule, load_and_validate, ResolvedSchedule

logger = logging.getLogger(__name__)


class PhasedTrainer(Trainer):
    """torchtitan's Trainer plus phase transitions; see the module docstring."""

    def __init__(self, job_config: JobConfig, schedule: ResolvedSchedule | None = None) -> None:
        self.schedule = load_and_validate(job_config) if schedule is None else schedule
        attach_schedule(job_config, self.schedule)
        super().__init__(job_config)
        self._full_flops_per_token = self.metrics_processor.num_flops_per_token
        for warning in self.schedule.warnings:
            logger.warning("%s", warning)
        self.lr_schedulers.apply_lambdas_new_pgs = self.schedule.apply_lambdas_new_pgs
        self.lr_schedulers.start_phase0_at(self.schedule.group_lr(0))
        self.phase_controller = build_phase_controller(
            self.schedule, job_config.phases, job_config.validation.enable
        )
        if job_config.phases.fp32_master_weights:
            self.optimizers.use_fp32_masters()
        self.checkpointing = install_checkpointing(
            self.checkpointer, self.phase_controller, self.optimizers.masters
        )
        job_config.training.max_norm = self.schedule.plan(0).max_norm
        self.restore_best = (
            RestoreBest(job_config.job.dump_folder, self.model_parts,
                        self.checkpointing.model_state, self.optimizers, self.lr_schedulers)
            if job_config.phases.restore_best
            else None
        )
        resumed_from = self.checkpointing.prepare_resume(
            job_config.checkpoint, self.phase_controller, self._enter_phase,
            self.optimizers.verify_checkpoint, self.dataloader.dp_world_size,
        )
        write_run_record(job_config.job.dump_folder, self.schedule, job_config, resumed_from)
        if is_rank0():
            logger.info("%s", startup_summary(self.schedule, job_config))
        self._report_phase()
        self.step_guard = StepGuard(self.device)
        self._first_step_of_process = True
        self._first_continue_check = True

    def _enter_phase(self, phase: int) -> ThawCount:
        plan = self.schedule.plan(phase)
        trainable = enter_phase(
            self.model_parts, self.optimizers, self.lr_schedulers, plan,
            compiled=self.job_config.compile.enable,
            pp_schedule=self.pp_schedule if self.parallel_dims.pp_enabled else None,
        )
        self.job_config.training.max_norm = plan.max_norm
        return trainable

    def _transition(self, transition: Transition) -> None:
        plan = self.schedule.plan(transition.to_phase)
        if self.restore_best is not None:
            self.restore_best.restore(transition.from_phase, self.phase_controller.plateau, plan)
        trainable = self._enter_phase(transition.to_phase)
        self.phase_controller.commit(transition)
        self.metrics_processor.log_event(transition.event())
        numels = self.schedule.param_numels
        summary = transition_summary(
            transition, plan, trainable, numels, self.optimizers, self.lr_schedulers
        )
        logger.info("%s", summary)
        self._report_phase()

    def _observe_validation(self) -> None:
        """Feed the validation run after ``self.step`` (if any) to schedulers and controller."""
        loss = self.validator.take_loss(
            self.step, self.device, self.parallel_dims.get_optional_mesh("pp")
        )
        if loss is None:
            return
        if not math.isfinite(loss):
            # A NaN never improves and would count as a plateau; it is no best state either.
            logger.warning("Validation loss after step %d is %s: ignored", self.step, loss)
            return
        self.lr_schedulers.step_on_metric(loss)
        improved = self.phase_controller.observe_validation(self.step, loss)
        if improved and self.restore_best is not None:
            self.restore_best.save(self.phase_controller.phase, self.step)

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

    def _log_end(self, reason: str) -> None:
        self.metrics_processor.log_event({"type": "end", "step": self.step, "reason": reason})

    def _save_full_checkpoint(self) -> str | None:
        return self.checkpointing.save_full(self.model_parts, self.step)

    def close(self) -> None:
        if getattr(self, "checkpointing", None) is not None:
            self.checkpointing.wait()
        super().close()

    def train(self) -> None:
        try:
            super().train()
        except TrainingStopped:
            # Not an Exception, so torchtitan's main does not close the trainer itself.
            self.close()
            raise

    def forward_backward_step(self, **kwargs: Any) -> torch.Tensor:
        loss = super().forward_backward_step(**kwargs)
        self.step_guard.observe_loss(loss)
        return loss

    def should_continue_training(self) -> bool:
        if self._first_continue_check:
            # The checkpoint (if any) was loaded just before the first check.
            self._first_continue_check = False
            self._repeat_validation_after_resume()
        if self.job_config.validation.enable:
            self._observe_validation()
        reason = self.phase_controller.stop_reason
        if reason is not None:
            logger.info("Training stops after step %d: %s", self.step, reason)
            self._log_end(reason)
            self._save_full_checkpoint()
            return False
        return super().should_continue_training()

    def _report_phase(self) -> None:
        phase = self.phase_controller.phase
        ratio = ideal_phase_ratio(
            self.schedule.param_numels, self.schedule.trainable_params(phase)
        )
        self.metrics_processor.phase_started(phase, round(self._full_flops_per_token * ratio))

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
        # A frozen pipeline stage's grad norm would not be in the other stages' dtype.
        with patches.fp32_total_norm() if self.parallel_dims.pp_enabled else nullcontext():
            super().train_step(data_iterator)
        self.step_guard.settle(
            self.step,
            self.phase_controller.phase,
            self.job_config.phases.nonfinite_loss,
            save_full_checkpoint=self._save_full_checkpoint,
            log_end=self._log_end,
        )
