"""A tiny llama3 flavor for end-to-end trainer tests, loaded by ``experimental.custom_import``.

Faults a test can inject through the environment, on every rank of the job:

* ``TITAN_PHASES_TEST_STALL_AT_STEP=N``: stall right after logging step ``N`` (before that
  step's checkpoint is saved), so the test can SIGKILL the job at a known point: the last
  complete checkpoint is then step ``N - 1``.
* ``TITAN_PHASES_TEST_STALL_SAVING=<glob>``: stall inside the first DCP save whose folder
  matches the glob, after every rank wrote its data files and before ``.metadata`` (a save
  killed there leaves a torn folder).
* ``TITAN_PHASES_TEST_STALL_RESTORING_BEST=1``: stall when restore_best is about to restore a
  phase's best state, i.e. between the plateau validation and its transition.
* ``TITAN_PHASES_TEST_NO_SPACE_SAVING=<glob>``: rank 1 (rank 0 on one rank) fails the DCP save
  of a matching folder with ENOSPC after writing part of a file, as a full disk would.

A stalled rank first creates the file ``TITAN_PHASES_TEST_STALL_MARKER`` names, which tells the
test that the moment has come. ``TITAN_PHASES_TEST_ALL_GATHERS`` records backward all-gathers
(:mod:`tests.trainer.backward_all_gathers`).
"""

import dataclasses
import errno
import fnmatch
import os
import time
from pathlib import Path

from torch.distributed.checkpoint.filesystem import _FileSystemWriter
from torchtitan.models.llama3 import TransformerModelArgs
from torchtitan.protocols.train_spec import get_train_spec, register_train_spec

import tests.trainer.rank_hooks  # noqa: F401  (the backward recorder; no final wait)
from titan_phases.components.checkpointing.best import RestoreBest
from titan_phases.components.metrics import PhaseMetricsProcessor
from titan_phases.train_spec import phased

STALL_AT_STEP = int(os.environ.get("TITAN_PHASES_TEST_STALL_AT_STEP", "-1"))
STALL_SAVING = os.environ.get("TITAN_PHASES_TEST_STALL_SAVING")
STALL_RESTORING_BEST = os.environ.get("TITAN_PHASES_TEST_STALL_RESTORING_BEST") == "1"
NO_SPACE_SAVING = os.environ.get("TITAN_PHASES_TEST_NO_SPACE_SAVING")
STALL_MARKER = os.environ.get("TITAN_PHASES_TEST_STALL_MARKER")


def _stall() -> None:
    if STALL_MARKER:
        Path(STALL_MARKER).touch()
    time.sleep(3600)


def _matches(path: object, pattern: str | None) -> bool:
    return pattern is not None and fnmatch.fnmatch(os.path.normpath(str(path)), pattern)


class _StallingMetricsProcessor(PhaseMetricsProcessor):
    def log(self, step, *args, **kwargs):
        super().log(step, *args, **kwargs)
        if step == STALL_AT_STEP:
            _stall()


def _build_metrics_processor(job_config, parallel_dims, model_args=None, tag=None):
    return _StallingMetricsProcessor(job_config, parallel_dims, tag)


def _inject_save_faults() -> None:
    write_data, finish = _FileSystemWriter.write_data, _FileSystemWriter.finish
    failing_rank = min(1, int(os.environ.get("WORLD_SIZE", "1")) - 1)

    def failing_write_data(self, plan, planner):
        if _matches(self.path, NO_SPACE_SAVING) and int(os.environ["RANK"]) == failing_rank:
            partial = Path(self.path) / f"{plan.storage_data.prefix}0.distcp"
            partial.write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(partial))
        return write_data(self, plan, planner)

    def stalling_finish(self, metadata, results):
        # Only DCP's coordinator (rank 0) finishes a save; the other ranks wait for it.
        if _matches(self.path, STALL_SAVING):
            _stall()
        return finish(self, metadata, results)

    _FileSystemWriter.write_data = failing_write_data
    _FileSystemWriter.finish = stalling_finish


def _inject_restore_stall() -> None:
    restore = RestoreBest.restore

    def stalling_restore(self, *args, **kwargs):
        _stall()
        return restore(self, *args, **kwargs)

    RestoreBest.restore = stalling_restore


if STALL_SAVING or NO_SPACE_SAVING:
    _inject_save_faults()
if STALL_RESTORING_BEST:
    _inject_restore_stall()

register_train_spec(
    "llama3_phases_test",
    dataclasses.replace(
        phased(get_train_spec("llama3")),
        model_args={
            "tiny": TransformerModelArgs(
                dim=64, n_layers=4, n_heads=4, vocab_size=2048, rope_theta=500000
            ),
            # Same parameter names, other shapes: a checkpoint of one does not load in the other.
            "tiny_wide": TransformerModelArgs(
                dim=96, n_layers=4, n_heads=4, vocab_size=2048, rope_theta=500000
            ),
        },
        build_metrics_processor_fn=_build_metrics_processor,
    ),
)
