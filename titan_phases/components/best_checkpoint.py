"""DCP checkpoints of each phase's best state, for ``[phases] restore_best``.

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

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.stateful import Stateful

logger = logging.getLogger(__name__)

BEST_FOLDER = "best_checkpoints"
_KEPT_PER_PHASE = 2
_SAVED = re.compile(r"^after-step-(\d+)$")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


class BestCheckpoints:
    """Saves and restores the best state of a phase; the caller decides what goes in."""

    def __init__(self, dump_folder: str) -> None:
        self.root = os.path.join(dump_folder, BEST_FOLDER)

    def path(self, phase: int, step: int) -> str:
        return os.path.join(self.root, f"phase-{phase}", f"after-step-{step}")

    def save(self, phase: int, step: int, states: Mapping[str, Stateful]) -> str:
        path = self.path(phase, step)
        dcp.save(dict(states), checkpoint_id=path)
        _barrier()
        if _is_rank0():
            self._prune(os.path.dirname(path))
        _barrier()
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
        if not os.path.isfile(os.path.join(path, ".metadata")):
            raise FileNotFoundError(
                f"best checkpoint {path} is missing or incomplete; it is needed by "
                "[phases] restore_best. Restore the directory or set restore_best = false"
            )
        dcp.load(dict(states), checkpoint_id=path)
