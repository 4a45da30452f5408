"""The one adapter between titan_phases and torchtitan's ``CheckpointManager``.

:func:`install` puts everything titan_phases changes about a job's checkpoints onto the
trainer's CheckpointManager, in one call; no other module touches the manager:

* the phase controller is saved under :data:`~.format.PHASES_KEY`, and with fp32 master
  weights the masters in the trainable params' place;
* every save, torchtitan's own included, also writes this rank's integrity record
  (:mod:`.integrity`), and a save that fails for want of space stops training with one message
  (:mod:`.save_failure`);
* :meth:`PhasedCheckpointing.prepare_resume`, run before torchtitan loads, makes it load the
  newest *intact* checkpoint, refuses one of another model or schedule, rebuilds the phase
  structure to it (:mod:`.resume`), leaves the dataloader out when the data-parallel ranks
  changed, and starts from ``initial_load_path`` in a folder without a complete checkpoint;
* :meth:`PhasedCheckpointing.save_full` saves a step in full whatever
  ``last_save_model_only`` says, for ends a run may be resumed from.

**Limitations** (private torchtitan 0.2.2 API this module relies on; check on upgrades)
``CheckpointManager._should_save`` and ``_create_checkpoint_id`` tell whether and where a step
is saved. A fresh start in a folder that holds no complete checkpoint is made by pointing
``CheckpointManager.folder`` at a path that does not exist for the one ``load`` call: torchtitan
decides between resuming and ``initial_load_path`` on whether that folder exists. torchft's
per-replica checkpoints get no integrity record.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TYPE_CHECKING

import torch.distributed as dist
import torch.nn as nn
from torch.distributed.checkpoint.stateful import Stateful
from torchtitan.components.checkpoint import MODEL

from titan_phases.components.master_weights import MasterWeights, ModelStateWithMasters
from titan_phases.components.phase_controller import PhaseController
from titan_phases.components.thaw import reshard_fsdp_modules

from .format import model_mismatch, PHASES_KEY
from .integrity import (
    CheckpointLoadError,
    choose_checkpoint,
    is_complete,
    record_checkpoint,
    record_when_done,
    verify_on_ranks,
)
from .resume import (
    dataloader_ranks_saved,
    initial_weights_problem,
    rebuild_to_checkpoint,
    refuse_if_any_rank_objects,
)
from .save_failure import reporting_save_failure

if TYPE_CHECKING:
    from torchtitan.components.checkpoint import CheckpointManager

__all__ = ["PhasedCheckpointing", "install"]

logger = logging.getLogger(__name__)

_NO_CHECKPOINT_FOLDER = "titan_phases-no-complete-checkpoint"


class PhasedCheckpointing:
    """titan_phases' side of a job's CheckpointManager; see the module docstring."""

    def __init__(
        self,
        checkpointer: CheckpointManager,
        controller: PhaseController,
        masters: MasterWeights | None = None,
    ) -> None:
        self._checkpointer = checkpointer
        self._save = checkpointer.save
        self._rank = dist.get_rank() if dist.is_initialized() else 0
        self._world_size = dist.get_world_size() if dist.is_initialized() else 1
        self._pending: list[Future[None]] = []
        self._records = checkpointer.enable and not checkpointer.enable_ft_dataloader_checkpoints
        if checkpointer.enable and not self._records:
            logger.warning("torchft checkpoints get no titan_phases integrity record")
        checkpointer.states[PHASES_KEY] = controller
        if masters is not None:
            checkpointer.states[MODEL] = ModelStateWithMasters(checkpointer.states[MODEL], masters)
        checkpointer.save = self.save

    @property
    def model_state(self) -> Stateful:
        """torchtitan's Stateful wrapper of the model parts (what ``restore_best`` saves)."""
        return self._checkpointer.states[MODEL]

    def path(self, step: int) -> str:
        """Where the checkpoint of ``step`` is (or would be) saved."""
        return self._checkpointer._create_checkpoint_id(step)

    def save(self, curr_step: int, last_step: bool = False) -> None:
        """Save as torchtitan's ``CheckpointManager.save(curr_step, last_step)`` does, then write
        this rank's integrity record: at once for a synchronous save, when its future completes
        for an async one. A record that cannot be written only leaves the checkpoint
        unverified (a warning).

        Raises :class:`~.save_failure.CheckpointSaveFailed` when the save fails for want of
        space (or any other ``OSError``).
        """
        checkpointer = self._checkpointer
        if not self._records or not checkpointer._should_save(curr_step, last_step):
            self._save(curr_step, last_step)
            return
        previous_future = checkpointer.save_future
        checkpoint_dir = self.path(curr_step)
        with reporting_save_failure(checkpoint_dir):
            self._save(curr_step, last_step)
        future = checkpointer.save_future
        if future is not None and future is not previous_future:
            # An earlier record may still be written while this save runs: keep waiting for it.
            self._pending = [f for f in self._pending if not f.done()]
            self._pending.append(
                record_when_done(future, checkpoint_dir, self._rank, self._world_size)
            )
        else:
            record_checkpoint(checkpoint_dir, self._rank, self._world_size)

    def wait(self) -> None:
        """Block until the records of all async saves so far are written."""
        for pending in self._pending:
            pending.result()
        self._pending = []

    def save_full(self, model_parts: list[nn.Module], step: int) -> str | None:
        """Save ``step`` in full (model, optimizer, LR schedulers, dataloader, phase state)
        whatever ``last_save_model_only`` says, unless it is saved already; return where, or
        None when checkpointing is off. A folder of ``step`` left incomplete by an interrupted
        save is saved again."""
        checkpointer = self._checkpointer
        if not checkpointer.enable:
            return None
        path = self.path(step)
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

    def prepare_resume(
        self,
        checkpoint_config: Any,
        controller: PhaseController,
        enter_phase: Callable[[int], object],
        verify_optimizer: Callable[[str], None],
        dp_world_size: int,
    ) -> str | None:
        """Everything before torchtitan's ``load``; call on every rank. Returns the checkpoint
        that will be resumed (None: a fresh start).

        Chooses the intact checkpoint, checks that it holds this model, sets
        ``checkpoint_config.load_step`` to it (what torchtitan loads), rebuilds the phase
        structure to it and leaves the dataloader out when the number of data-parallel ranks
        changed; in a folder without a complete checkpoint, makes the load start from
        ``initial_load_path``. Raises CheckpointLoadError or ScheduleMismatchError on every
        rank, before anything loads.
        """
        checkpointer = self._checkpointer
        if not checkpointer.enable:
            return None
        choice = choose_checkpoint(
            checkpointer.folder, checkpoint_config.load_step, verify=verify_on_ranks
        )
        model_shapes = {name: t.shape for name, t in self.model_state.state_dict().items()}
        if choice.fresh_start:
            refuse_if_any_rank_objects(
                initial_weights_problem(checkpoint_config, checkpointer.folder, model_shapes),
                CheckpointLoadError,
            )
            if os.path.isdir(checkpointer.folder):
                self._load_once_as_fresh_start()
            return None
        refuse_if_any_rank_objects(model_mismatch(choice.path, model_shapes), CheckpointLoadError)
        checkpoint_config.load_step = choice.step
        if choice.step > 0:
            rebuild_to_checkpoint(choice.path, controller, enter_phase, verify_optimizer)
            self._exclude_dataloader_if_resharded(choice.path, dp_world_size)
        return choice.path

    def _load_once_as_fresh_start(self) -> None:
        checkpointer = self._checkpointer
        load = checkpointer.load

        def load_as_fresh_start(step: int = -1) -> bool:
            folder = checkpointer.folder
            checkpointer.folder = os.path.join(folder, _NO_CHECKPOINT_FOLDER)
            try:
                return load(step=-1)
            finally:
                checkpointer.folder = folder
                checkpointer.load = load

        checkpointer.load = load_as_fresh_start

    def _exclude_dataloader_if_resharded(self, checkpoint_id: str, dp_world_size: int) -> None:
        checkpointer = self._checkpointer
        if "dataloader" in checkpointer.exclude_from_loading:
            return
        saved = dataloader_ranks_saved(checkpoint_id)
        if saved in (0, dp_world_size):
            return
        # torchtitan saves one dataloader state per data-parallel rank and cannot reshard them
        # ("Missing key ... dataloader.dp_rank_N"); everything else reshards.
        checkpointer.exclude_from_loading = [*checkpointer.exclude_from_loading, "dataloader"]
        logger.warning(
            "%s was saved with %d data-parallel ranks, this run has %d: torchtitan cannot "
            "reshard the dataloader state, so it is not loaded and the data starts over "
            "(everything else is resumed). Pass --checkpoint.exclude_from_loading dataloader to "
            "say so explicitly.",
            checkpoint_id,
            saved,
            dp_world_size,
        )


def install(
    checkpointer: CheckpointManager,
    controller: PhaseController,
    masters: MasterWeights | None = None,
) -> PhasedCheckpointing:
    """Put titan_phases' checkpointing onto ``checkpointer`` (see the module docstring);
    ``masters``: the fp32 masters of a bf16 model, saved and loaded in the trainable params'
    place (:class:`~titan_phases.components.master_weights.ModelStateWithMasters`)."""
    return PhasedCheckpointing(checkpointer, controller, masters)
