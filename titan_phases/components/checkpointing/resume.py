"""Resuming a phased job: what a checkpoint holds, whether this job can continue it, and
rebuilding the live phase structure to it before it is loaded.

The checkpoint adapter (:meth:`.manager.PhasedCheckpointing.prepare_resume`) runs these on every
rank before torchtitan loads; ``titan-phases validate`` and ``run_train.sh``'s check run
:func:`resume_report` in one process first, checking as the ranks will.

DCP loads optimizer state into the param groups that exist, so the structure must match the
checkpoint's before torchtitan loads it (a phase-1 checkpoint loaded into a phase-0 optimizer
silently drops state; the reverse fails inside DCP). :func:`rebuild_to_checkpoint` therefore

1. reads the phase controller's saved state (a few bytes, on each rank alone);
2. loads it into the controller, which refuses a job whose phases ``0..saved`` changed in what
   the checkpoint fixes: their params, and the settings it restores (lrs, optimizer and LR
   scheduler classes and arguments, ``[optimizer]``, ``lr_scale``: see
   :meth:`~titan_phases.schedule.ResolvedSchedule.fixed_settings`);
3. enters phases ``1..saved`` exactly as the transitions did (nothing is replayed);
4. checks the optimizer against the checkpoint's metadata, so a mismatch gets a clear error
   rather than DCP's "Missing key".

A refusal is agreed between the ranks first (:mod:`titan_phases.runtime.agreement`), so every
rank raises :class:`~titan_phases.components.phase_controller.ScheduleMismatchError` with the
same report, before anything is loaded. A checkpoint of another model is refused in one line
(:func:`~.format.model_mismatch`) rather than by DCP's size mismatch, and a missing
``initial_load_path`` is named (:func:`initial_weights_problem`).

A checkpoint saved before the controller saved those settings is resumed as before, unchecked,
and both the ranks and :func:`resume_report` say so (:data:`SETTINGS_UNCHECKED`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from titan_phases.components.checkpointing.format import (
    entry_names,
    model_mismatch,
    PhaseMismatchError,
    read_saved_phase_state,
)
from titan_phases.components.checkpointing.integrity import (
    CheckpointLoadError,
    choose_checkpoint,
    is_complete,
)
from titan_phases.components.phase_controller import PhaseController, ScheduleMismatchError
from titan_phases.runtime.agreement import agreed_report

__all__ = [
    "SETTINGS_UNCHECKED",
    "dataloader_ranks_saved",
    "initial_weights_problem",
    "rebuild_to_checkpoint",
    "refuse_if_any_rank_objects",
    "resume_report",
]

logger = logging.getLogger(__name__)


_DATALOADER_RANK_PREFIX = "dataloader.dp_rank_"

SETTINGS_UNCHECKED = (
    "saved before checkpoints recorded their phases' settings: the params of phases 0..saved "
    "are checked, their lrs, optimizer and LR scheduler settings are not (the checkpoint's "
    "win); keep them as the run was started"
)
"""What a resume of a checkpoint without saved settings says."""


def dataloader_ranks_saved(checkpoint_id: str) -> int:
    """How many data-parallel ranks saved a dataloader state in the checkpoint (0: none)."""
    return sum(name.startswith(_DATALOADER_RANK_PREFIX) for name in entry_names(checkpoint_id))



def initial_weights_problem(
    checkpoint_config: Any, checkpoint_folder: str, model_shapes: Mapping[str, Sequence[int]]
) -> str | None:
    """What keeps a fresh start from loading ``[checkpoint] initial_load_path``, or None.

    The path must be a folder (torchtitan only says "the path is not valid", without naming
    it) and, unless it is in HF format, hold a complete checkpoint of this model.
    """
    path = checkpoint_config.initial_load_path
    if not path:
        return None
    if not os.path.isdir(path):
        return (
            f"[checkpoint] initial_load_path = {path!r} does not exist (or is not a folder), "
            f"and {checkpoint_folder} holds no checkpoint to resume. Correct the path, or "
            "leave it empty to start from freshly initialized weights"
        )
    if checkpoint_config.initial_load_in_hf:
        return None
    if not is_complete(path):
        return (
            f"[checkpoint] initial_load_path = {path!r} is not a complete DCP checkpoint (it "
            "has no .metadata; its save did not finish, or it is in HF format: then set "
            "initial_load_in_hf = true)"
        )
    problem = model_mismatch(path, model_shapes)
    return None if problem is None else f"[checkpoint] initial_load_path: {problem}"


def resume_report(
    checkpoint_config: Any,
    checkpoint_folder: str,
    controller: PhaseController,
    verify: Any,
    model_shapes: Mapping[str, Sequence[int]],
    initial_weights_pending: bool = False,
) -> tuple[str | None, str | None]:
    """What a job would resume from ``checkpoint_folder`` and whether it can, checked as
    :meth:`.manager.PhasedCheckpointing.prepare_resume` checks it: ``(what it resumes or None
    for a fresh start, the problem or None)``. One process; ``model_shapes`` may come from a
    meta-device model. ``initial_weights_pending``: the initial checkpoint is missing but will
    be produced first (a ``[pretrained]`` recipe), so it is not checked."""
    try:
        choice = choose_checkpoint(checkpoint_folder, checkpoint_config.load_step, verify=verify)
    except CheckpointLoadError as exc:
        return None, str(exc)
    if choice.fresh_start:
        if initial_weights_pending:
            return None, None
        return None, initial_weights_problem(checkpoint_config, checkpoint_folder, model_shapes)
    mismatch = model_mismatch(choice.path, model_shapes)
    if mismatch is not None:
        return None, mismatch
    if not choice.step:
        return None, None
    saved = read_saved_phase_state(choice.path)
    if saved is None:
        return f"{choice.path} (no phase state: phase 0)", None
    try:
        controller.load_state_dict(saved)
    except ScheduleMismatchError as exc:
        return None, f"cannot resume {choice.path}: {exc}"
    resumes = f"{choice.path}: phase {controller.phase} after step {choice.step}"
    if controller.settings_unchecked:
        resumes += f" ({SETTINGS_UNCHECKED})"
    return resumes, None


def refuse_if_any_rank_objects(
    problem: str | None, error: type[Exception] = ScheduleMismatchError
) -> None:
    """Raise ``error`` with the agreed report on every rank when any rank has a problem; call
    on every rank."""
    report = agreed_report(problem)
    if report is not None:
        raise error(report)


def rebuild_to_checkpoint(
    checkpoint_id: str,
    controller: PhaseController,
    enter_phase: Callable[[int], object],
    verify_optimizer: Callable[[str], None],
) -> int:
    """Bring the controller and the live structure to the checkpoint's phase; return it.

    A checkpoint without phase state (e.g. an initial, stock torchtitan one) leaves phase 0.
    ``enter_phase(k)`` carries out the transition into phase ``k``; ``verify_optimizer`` raises
    :class:`~.format.PhaseMismatchError` when the optimizer does not
    fit the checkpoint. Raises ScheduleMismatchError on every rank if any rank objects.
    """
    saved = read_saved_phase_state(checkpoint_id)
    if saved is None:
        return controller.phase
    problem = None
    try:
        controller.load_state_dict(saved)
    except ScheduleMismatchError as exc:
        problem = f"{checkpoint_id}: {exc}"
    refuse_if_any_rank_objects(problem)
    if controller.settings_unchecked:
        logger.warning("%s was %s", checkpoint_id, SETTINGS_UNCHECKED)
    target = controller.phase
    if target > 0:
        logger.info(
            "Resuming in phase %d from %s: rebuilding the phase structure before loading",
            target,
            checkpoint_id,
        )
    for phase in range(1, target + 1):
        enter_phase(phase)
    problem = None
    try:
        verify_optimizer(checkpoint_id)
    except PhaseMismatchError as exc:
        problem = str(exc)
    refuse_if_any_rank_objects(problem)
    return target
