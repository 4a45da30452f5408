"""Resuming a phased job: which checkpoint loads, rebuilding the live phase structure to it
before it is loaded, and saving a step in full so that a run can be resumed from it.

:func:`prepare_resume` is the whole sequence the trainer runs before torchtitan loads: it
chooses the newest *intact* checkpoint (:mod:`titan_phases.components.checkpointing.integrity`:
incomplete and damaged ones are skipped and named), makes torchtitan load exactly that one,
and when the folder holds no complete checkpoint at all, makes torchtitan start from
``initial_load_path`` as it does for a folder that does not exist. Whatever loads is first
compared with the model (:func:`~titan_phases.components.checkpointing.format.model_mismatch`), so a
checkpoint of another flavor is refused in one line rather than by DCP's size mismatch, and
a missing ``initial_load_path`` is named (:func:`initial_weights_problem`).

DCP loads optimizer state into the param groups that exist, so the structure must match the
checkpoint's before torchtitan loads it (a phase-1 checkpoint loaded into a phase-0 optimizer
silently drops state; the reverse fails inside DCP). :func:`rebuild_to_checkpoint` therefore

1. reads the phase controller's saved state (a few bytes, on each rank alone);
2. loads it into the controller, which refuses a schedule whose phases ``0..saved`` changed;
3. enters phases ``1..saved`` exactly as the transitions did (nothing is replayed);
4. checks the optimizer against the checkpoint's metadata, so a mismatch gets a clear error
   rather than DCP's "Missing key".

A refusal is agreed between the ranks first (:mod:`titan_phases.runtime.agreement`), so every
rank raises :class:`~titan_phases.components.phase_controller.ScheduleMismatchError` with the
same report, before anything is loaded.

**Limitations** (private torchtitan API this module relies on; check on upgrades)
``CheckpointManager._create_checkpoint_id`` of torchtitan 0.2.2 tells where a step is saved.
A fresh start in an existing folder is made by pointing ``CheckpointManager.folder`` at a path
that does not exist for the one ``load`` call: torchtitan 0.2.2 decides between resuming and
``initial_load_path`` on whether that folder exists.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torchtitan.components.checkpoint import MODEL

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
    LoadChoice,
    verify_on_ranks,
)
from titan_phases.components.phase_controller import PhaseController, ScheduleMismatchError
from titan_phases.components.thaw import reshard_fsdp_modules
from titan_phases.runtime.agreement import agreed_report

__all__ = [
    "checkpoint_path",
    "checkpoint_to_load",
    "exclude_dataloader_if_resharded",
    "initial_weights_problem",
    "prepare_resume",
    "rebuild_to_checkpoint",
    "resume_report",
    "save_full_checkpoint",
]

logger = logging.getLogger(__name__)


def checkpoint_path(checkpointer: Any, step: int) -> str:
    """Where torchtitan's ``checkpointer`` keeps (or would keep) the checkpoint of ``step``."""
    return checkpointer._create_checkpoint_id(step)


def checkpoint_to_load(
    checkpointer: Any, load_step: int, verify: Any = verify_on_ranks
) -> LoadChoice | None:
    """The intact checkpoint to load for ``--checkpoint.load_step`` (None: checkpointing off).

    Collective with the default ``verify``: call on every rank. Raises
    :class:`~titan_phases.components.checkpointing.integrity.CheckpointLoadError`.
    """
    if not checkpointer.enable:
        return None
    return choose_checkpoint(checkpointer.folder, load_step, verify=verify)


def _load_initial_weights(checkpointer: Any) -> None:
    load = checkpointer.load

    def load_as_fresh_start(step: int = -1) -> bool:
        folder = checkpointer.folder
        checkpointer.folder = os.path.join(folder, "titan_phases-no-complete-checkpoint")
        try:
            return load(step=-1)
        finally:
            checkpointer.folder = folder
            checkpointer.load = load

    checkpointer.load = load_as_fresh_start


def prepare_resume(
    checkpointer: Any,
    checkpoint_config: Any,
    controller: PhaseController,
    enter_phase: Callable[[int], object],
    verify_optimizer: Callable[[str], None],
    dp_world_size: int,
) -> str | None:
    """Everything before torchtitan's ``checkpointer.load``; call on every rank. Returns the
    checkpoint that will be resumed (None: a fresh start).

    Chooses the intact checkpoint, checks that it holds this model, sets
    ``checkpoint_config.load_step`` to it (what torchtitan loads), rebuilds the phase structure
    to it and leaves the dataloader out when the number of data-parallel ranks changed; in a
    folder without a complete checkpoint, makes the load start from ``initial_load_path``.
    Raises CheckpointLoadError or ScheduleMismatchError on every rank, before anything loads.
    """
    choice = checkpoint_to_load(checkpointer, checkpoint_config.load_step)
    if choice is None:
        return None
    model_shapes = {
        name: tensor.shape for name, tensor in checkpointer.states[MODEL].state_dict().items()
    }
    if choice.fresh_start:
        _refuse_if_any_rank_objects(
            initial_weights_problem(checkpoint_config, checkpointer.folder, model_shapes),
            CheckpointLoadError,
        )
        if os.path.isdir(checkpointer.folder):
            _load_initial_weights(checkpointer)
        return None
    _refuse_if_any_rank_objects(model_mismatch(choice.path, model_shapes), CheckpointLoadError)
    checkpoint_config.load_step = choice.step
    if choice.step > 0:
        rebuild_to_checkpoint(choice.path, controller, enter_phase, verify_optimizer)
        exclude_dataloader_if_resharded(checkpointer, choice.path, dp_world_size)
    return choice.path


_DATALOADER_RANK_PREFIX = "dataloader.dp_rank_"


def exclude_dataloader_if_resharded(
    checkpointer: Any, checkpoint_id: str, dp_world_size: int
) -> int | None:
    """Leave the dataloader out of loading when the checkpoint has another number of
    data-parallel ranks; return that number (None when nothing changed).

    torchtitan saves one dataloader state per data-parallel rank and cannot reshard them (it
    fails with "Missing key ... dataloader.dp_rank_N"); model, optimizer, LR and phase state do
    reshard. The data then restarts from its beginning, which is logged as a warning.
    """
    if "dataloader" in checkpointer.exclude_from_loading:
        return None
    saved = sum(name.startswith(_DATALOADER_RANK_PREFIX) for name in entry_names(checkpoint_id))
    if saved in (0, dp_world_size):
        return None
    checkpointer.exclude_from_loading = [*checkpointer.exclude_from_loading, "dataloader"]
    logger.warning(
        "%s was saved with %d data-parallel ranks, this run has %d: torchtitan cannot reshard "
        "the dataloader state, so it is not loaded and the data starts over (everything else "
        "is resumed). Pass --checkpoint.exclude_from_loading dataloader to say so explicitly.",
        checkpoint_id,
        saved,
        dp_world_size,
    )
    return saved


def save_full_checkpoint(checkpointer: Any, model_parts: list[Any], step: int) -> str | None:
    """Save ``step`` in full (model, optimizer, LR schedulers, dataloader, phase state) whatever
    ``last_save_model_only`` says, unless it is saved already; return where, or None when
    checkpointing is off. For ends the run may be resumed or extended from: an early end,
    preemption. A folder of ``step`` left incomplete by an interrupted save is saved again."""
    if not checkpointer.enable:
        return None
    path = checkpoint_path(checkpointer, step)
    if is_complete(path):
        return path
    # A validation forward leaves FSDP's root module unsharded, and the state dicts must see
    # the sharded parameters.
    reshard_fsdp_modules(model_parts)
    model_only = checkpointer.last_save_model_only
    checkpointer.last_save_model_only = False
    try:
        checkpointer.save(step, last_step=True)
    finally:
        checkpointer.last_save_model_only = model_only
    return path


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
    :func:`prepare_resume` checks it: ``(what it resumes or None for a fresh start, the
    problem or None)``. One process; ``model_shapes`` may come from a meta-device model.
    ``initial_weights_pending``: the initial checkpoint is missing but will be produced first
    (a ``[pretrained]`` recipe), so it is not checked."""
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
    return f"{choice.path}: phase {controller.phase} after step {choice.step}", None


def _refuse_if_any_rank_objects(
    problem: str | None, error: type[Exception] = ScheduleMismatchError
) -> None:
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
    _refuse_if_any_rank_objects(problem)
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
    _refuse_if_any_rank_objects(problem)
    return target
