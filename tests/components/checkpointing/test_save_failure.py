"""A save that fails for want of space becomes one clear stop; other failures stay bugs."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from torch.distributed.checkpoint.api import _wrap_exception, CheckpointException

from titan_phases.components.checkpointing.save_failure import (
    CheckpointSaveFailed,
    reporting_save_failure,
)
from titan_phases.components.step_guard import TrainingStopped
from titan_phases.runtime.process_exit import EXIT_SAVE_FAILED


def _no_space(path: Path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _failure_on_rank(rank: int, exc: BaseException) -> CheckpointException:
    try:
        raise exc
    except BaseException as raised:
        return CheckpointException("write", {rank: _wrap_exception(raised)})


def test_a_full_disk_on_one_rank_stops_with_the_folder_named(tmp_path: Path):
    folder = tmp_path / "checkpoint" / "step-5"
    with pytest.raises(CheckpointSaveFailed) as stopped:
        with reporting_save_failure(str(folder)):
            raise _failure_on_rank(1, _no_space(folder / "__1_0.distcp"))
    message = str(stopped.value)
    assert isinstance(stopped.value, TrainingStopped)
    assert stopped.value.exit_code == EXIT_SAVE_FAILED == 74
    assert f"saving the checkpoint {folder} failed: rank 1: [Errno 28]" in message
    assert "MiB are free there now" in message and "run the same command again" in message
    assert "Traceback" not in message


def test_an_os_error_outside_dcp_is_reported_too(tmp_path: Path):
    with pytest.raises(CheckpointSaveFailed, match="Permission denied"):
        with reporting_save_failure(str(tmp_path)):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))


def test_a_failure_that_is_not_the_machine_is_left_as_it_is(tmp_path: Path):
    with pytest.raises(CheckpointException):
        with reporting_save_failure(str(tmp_path)):
            raise _failure_on_rank(0, KeyError("model.w"))
    with pytest.raises(KeyError):
        with reporting_save_failure(str(tmp_path)):
            raise KeyError("model.w")
