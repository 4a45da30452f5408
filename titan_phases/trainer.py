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

**Limitations**
Pipeline-parallel schedules are not rebuilt at a transition (torchtitan builds them once).
Uses two private helpers of torchtitan 0.2.2's CheckpointManager (``_find_load_step``,
``_create_checkpoint_id``) to find the checkpoint it will load.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterator

import torch
import torch.distributed.checkpoint as dcp
from torchtitan.config import JobConfig
from torchtitan.train import Trainer

from titan_phases.components.phase_controller import (
    CHECKPOINT_KEY,
    PhaseController,
    ScheduleMismatchError,
    Transition,
)
from titan_phases.components.thaw import (
    limit_backward_all_gathers,
    parameters_named,
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
    metadata = dcp.FileSystemReader(checkpoint_id).read_metadata()
    if f"{CHECKPOINT_KEY}.phase" not in metadata.state_dict_metadata:
        return None
    state = {CHECKPOINT_KEY: {"phase": 0, "json": ""}}
    dcp.load(state, checkpoint_id=checkpoint_id, no_dist=True)
    return state[CHECKPOINT_KEY]


class PhasedTrainer(Trainer):
    """torchtitan's Trainer plus phase transitions; see the module docstring."""

    def __init__(self, job_config: JobConfig) -> None:
        super().__init__(job_config)
        self.schedule = schedule_for(job_config)
        phases = self.schedule.schedule.phases
        self.phase_controller = PhaseController(
            [p.max_transition_step for p in phases], self.schedule.phase_params
        )
        self.checkpointer.states[CHECKPOINT_KEY] = self.phase_controller
        self._resume_phase_structure()
        self._report_phase()
        self._first_step_of_process = True

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
        try:
            self.phase_controller.load_state_dict(saved)
        except ScheduleMismatchError as exc:
            raise ScheduleMismatchError(f"{checkpoint_id}: {exc}") from None
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
        self.optimizers.verify_checkpoint(checkpoint_id)

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
        before = sum(
            p.numel() for m in self.model_parts for p in m.parameters() if p.requires_grad
        )
        trainable = self._enter_phase(transition.to_phase)
        self.phase_controller.commit(transition)
        thawed = len(self.schedule.phase_params[transition.to_phase])
        lrs = [f"{g['lr']:.3g}" for g in next(iter(self.optimizers)).param_groups]
        logger.info(
            "Phase %d -> %d after step %d (%s): thawed %d tensors, %s elements "
            "(%s of %s trainable); optimizer %s; lr scheduler %s; group lrs [%s]",
            transition.from_phase,
            transition.to_phase,
            transition.after_step,
            transition.reason,
            thawed,
            f"{trainable.elements - before:,}",
            f"{trainable.elements:,}",
            f"{sum(self.schedule.param_numels.values()):,}",
            self.optimizers.optimizer_cls.__name__,
            type(self.lr_schedulers.schedulers[0]).__name__,
            ", ".join(lrs),
        )
        self._report_phase()

    def _report_phase(self) -> None:
        self.metrics_processor.add_step_metrics({"phase": self.phase_controller.phase})

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
