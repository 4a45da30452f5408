"""A checkpoint save that fails on a full disk (or a lost mount) stops training with a clear error.

DCP reports a failed save on every rank as a ``CheckpointException`` listing each failed rank's
exception and traceback, and torchtitan lets it through: the job dies with several tracebacks
that name neither the folder nor what to do. :func:`reporting_save_failure` turns a save failure
caused by an ``OSError`` into :class:`CheckpointSaveFailed`, which stops training on every rank
(:class:`~titan_phases.components.step_guard.TrainingStopped`) with
:data:`~titan_phases.runtime.process_exit.EXIT_SAVE_FAILED` and one message naming the folder.

Nothing is lost: DCP writes a checkpoint's ``.metadata`` last, so the folder of the failed save
counts as incomplete and a restart skips it, naming it
(:mod:`titan_phases.components.checkpointing.integrity`); torchtitan deletes old checkpoints
(``keep_latest_k``) only after a save succeeded, so the newest complete one is still there.

**Limitations**
Covers synchronous saves, which include torchtitan's last-step save and every titan_phases
save. An async save fails on torchtitan's background thread and surfaces at the next save,
or at the end of training, as the original exception. Failures other than an ``OSError`` are
re-raised as they are: they are bugs, not the machine. Relies on the ``failures`` mapping of
``torch.distributed.checkpoint.api.CheckpointException``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from torch.distributed.checkpoint.api import CheckpointException

from titan_phases.components.step_guard import TrainingStopped
from titan_phases.runtime.process_exit import EXIT_SAVE_FAILED

__all__ = ["CheckpointSaveFailed", "reporting_save_failure"]


class CheckpointSaveFailed(TrainingStopped):
    exit_code = EXIT_SAVE_FAILED

    def __init__(self, path: str, causes: list[str]) -> None:
        super().__init__(
            f"saving the checkpoint {path} failed: {'; '.join(causes)}. Training stopped. That "
            f"folder is incomplete and a restart skips it; the checkpoints saved before it are "
            f"unchanged.{_free_space(path)} Make room and run the same command again to "
            "resume from the newest complete checkpoint"
        )


def _free_space(path: str) -> str:
    existing = path
    while existing and not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    try:
        free = shutil.disk_usage(existing or ".").free
    except OSError:
        return ""
    return f" {free / 2**20:.0f} MiB are free there now."


def _os_errors(exc: BaseException) -> list[str]:
    if isinstance(exc, OSError):
        return [str(exc)]
    if isinstance(exc, CheckpointException):
        return [
            f"rank {rank}: {error}"
            for rank, (error, _traceback) in sorted(exc.failures.items())
            if isinstance(error, OSError)
        ]
    return []


@contextmanager
def reporting_save_failure(path: str) -> Iterator[None]:
    """Run a save of ``path``; an ``OSError`` in it, on any rank, raises
    :class:`CheckpointSaveFailed` instead."""
    try:
        yield
    except (OSError, CheckpointException) as exc:
        causes = _os_errors(exc)
        if not causes:
            raise
        raise CheckpointSaveFailed(path, causes) from None
