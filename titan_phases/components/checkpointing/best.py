"""``[phases] restore_best``: each phase's best state, saved as it is reached and restored
before the phase's transition.

:class:`RestoreBest` decides what goes in (the model always; the optimizer and LR scheduler
state unless the next phase replaces them) and says what it did; :class:`BestCheckpoints`
stores the states as DCP checkpoints.

They live in ``<job.dump_folder>/best_checkpoints/phase-<k>/after-step-<S>``, outside
torchtitan's checkpoint folder, so ``checkpoint.keep_latest_k`` never purges them and resuming
never picks them up. Each save goes to a new directory: the previous best stays complete until
the new one is, and only then is it removed (the newest two are kept). DCP makes them
loadable on any number of ranks.

**Limitations**
Like torchtitan's checkpoints, a multi-node job needs the dump folder on a shared filesystem.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any

import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.stateful import Stateful

from titan_phases.components.checkpointing.integrity import is_complete
from titan_phases.components.checkpointing.save_failure import reporting_save_failure
from titan_phases.components.plateau import PlateauTracker
from titan_phases.components.thaw import reshard_fsdp_modules
from titan_phases.runtime.ranks import barrier, is_rank0
from titan_phases.schedule import PhasePlan

logger = logging.getLogger(__name__)

BEST_FOLDER = "best_checkpoints"
_KEPT_PER_PHASE = 2
_SAVED = re.compile(r"^after-step-(\d+)$")


class BestCheckpoints:
    """Saves and restores the best state of a phase; the caller decides what goes in."""

    def __init__(self, dump_folder: str) -> None:
        self.root = os.path.join(dump_folder, BEST_FOLDER)

    def path(self, phase: int, step: int) -> str:
        return os.path.join(self.root, f"phase-{phase}", f"after-step-{step}")

    def save(self, phase: int, step: int, states: Mapping[str, Stateful]) -> str:
        path = self.path(phase, step)
        with reporting_save_failure(path):
            dcp.save(dict(states), checkpoint_id=path)
        barrier()
        if is_rank0():
            self._prune(os.path.dirname(path))
        barrier()
        return path

    def _prune(self, phase_dir: str) -> None:
        saved = sorted(
            (int(m.group(1)), name)
            for name in os.listdir(phase_dir)
            if (m := _SAVED.match(name))
        )
        for _, name in saved[:-_KEPT_PER_PHASE]:
            shutil.rmtree(os.path.join(phase_dir, name), ignore_errors=True)

    def restore(self, path: str, states: Mapping[str, Stateful]) -> None:
        if not is_complete(path):
            raise FileNotFoundError(
                f"best checkpoint {path} is missing or incomplete; it is needed by "
                "[phases] restore_best. Restore the directory or set restore_best = false"
            )
        dcp.load(dict(states), checkpoint_id=path)


class RestoreBest:
    """Saves a phase's state at each new best validation; restores the best before moving on.

    Args:
        dump_folder: the job's ``job.dump_folder``.
        model_parts: the (FSDP2-sharded) model parts, resharded before every save and restore.
        model_state: torchtitan's Stateful model wrapper (the checkpointer's ``"model"``).
        optimizers, lr_schedulers: the phase-aware containers.
    """

    def __init__(
        self,
        dump_folder: str,
        model_parts: list[nn.Module],
        model_state: Stateful,
        optimizers: Stateful,
        lr_schedulers: Stateful,
    ) -> None:
        self.checkpoints = BestCheckpoints(dump_folder)
        self.model_parts = model_parts
        self.model_state = model_state
        self.optimizers = optimizers
        self.lr_schedulers = lr_schedulers

    def _states(self, with_optimizer: bool, with_lr_scheduler: bool) -> dict[str, Any]:
        # After a validation forward the root module is still unsharded, and the optimizer's
        # state dict would look its params up among the unsharded tensors.
        reshard_fsdp_modules(self.model_parts)
        states: dict[str, Any] = {"model": self.model_state}
        if with_optimizer:
            states["optimizer"] = self.optimizers
        if with_lr_scheduler:
            states["lr_scheduler"] = self.lr_schedulers
        return states

    def save(self, phase: int, step: int) -> str:
        """Save the state after ``step`` as phase ``phase``'s best."""
        return self.checkpoints.save(phase, step, self._states(True, True))

    def restore(self, from_phase: int, plateau: PlateauTracker, following: PhasePlan) -> None:
        """Restore ``from_phase``'s best state before entering ``following``; log what it did."""
        if plateau.best_step is None:
            logger.info(
                "restore_best: phase %d had no validation; continuing from its last state",
                from_phase,
            )
            return
        keep_optimizer = following.optimizer is None
        keep_scheduler = following.lr_scheduler is None
        path = self.checkpoints.path(from_phase, plateau.best_step)
        self.checkpoints.restore(path, self._states(keep_optimizer, keep_scheduler))
        skipped = [
            f"{what} state (phase {following.index} builds a new one)"
            for what, kept in (("optimizer", keep_optimizer), ("lr scheduler", keep_scheduler))
            if not kept
        ]
        logger.info(
            "restore_best: restored phase %d's best state (validation loss %.6g after step %d) "
            "from %s%s",
            from_phase,
            plateau.best,
            plateau.best_step,
            path,
            f"; not restored: {', '.join(skipped)}" if skipped else "",
        )
