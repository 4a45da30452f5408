"""Integrity records of DCP checkpoints, their verification and the choice of what to load.

Single-process tests save real DCP checkpoints with ``no_dist``. Records of saves by
torchtitan's CheckpointManager are tested with the adapter that writes them
(``test_manager.py``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from titan_phases.components.checkpointing import integrity as checkpoint_integrity
from titan_phases.components.checkpointing.integrity import (
    CheckpointLoadError,
    choose_checkpoint,
    record_path,
    record_when_done,
    verify,
    write_record,
)

DATA = "__0_0.distcp"


def _state(value: float = 1.0) -> dict:
    return {"model": {"w": torch.full((4096,), value), "b": torch.arange(512.0)}, "step": 3}


def _dcp_save(path: Path, value: float = 1.0) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no_dist "assumes a single process"
        dcp.save(_state(value), checkpoint_id=path, no_dist=True)


def _save(path: Path, value: float = 1.0, record: bool = True) -> Path:
    _dcp_save(path, value)
    if record:
        assert write_record(path) == record_path(path, 0)
    return path


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def flip_64_bytes(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        chunk = f.read(64)
        f.seek(-64, os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))


def test_the_record_lists_every_file_of_the_checkpoint(tmp_path: Path):
    checkpoint = _save(tmp_path / "step-1")
    record = json.loads(record_path(checkpoint, 0).read_text())
    assert (record["rank"], record["world_size"]) == (0, 1)
    assert set(record["files"]) == {DATA, ".metadata"}
    assert record["files"][DATA]["size"] == (checkpoint / DATA).stat().st_size
    assert not list(checkpoint.glob("*.tmp"))


def test_an_intact_checkpoint_verifies(tmp_path: Path):
    assert verify(_save(tmp_path / "step-1")) == []


def test_a_truncated_distcp_file_is_named(tmp_path: Path):
    checkpoint = _save(tmp_path / "step-1")
    _truncate(checkpoint / DATA)
    (problem,) = verify(checkpoint)
    assert problem.startswith(f"{checkpoint / DATA}: truncated")


def test_64_flipped_bytes_load_silently_but_do_not_verify(tmp_path: Path):
    checkpoint = _save(tmp_path / "step-1")
    flip_64_bytes(checkpoint / DATA)
    loaded = _state(0.0)
    dcp.load(loaded, checkpoint_id=checkpoint, no_dist=True)
    assert not torch.equal(loaded["model"]["w"], _state()["model"]["w"]) or not torch.equal(
        loaded["model"]["b"], _state()["model"]["b"]
    )
    (problem,) = verify(checkpoint)
    assert problem.startswith(f"{checkpoint / DATA}: contents changed since the save")
    assert verify(checkpoint, checksums=False) == []  # sizes only: the ranks hash later


def test_a_truncated_file_fails_even_the_size_check(tmp_path: Path):
    checkpoint = _save(tmp_path / "step-1")
    data = (checkpoint / DATA).read_bytes()
    (checkpoint / DATA).write_bytes(data[: len(data) // 2])
    (problem,) = verify(checkpoint, checksums=False)
    assert problem.startswith(f"{checkpoint / DATA}: truncated")


def test_damaged_metadata_and_missing_files_are_named(tmp_path: Path):
    checkpoint = _save(tmp_path / "step-1")
    flip_64_bytes(checkpoint / ".metadata")
    (checkpoint / DATA).unlink()
    problems = verify(checkpoint)
    assert f"{checkpoint / DATA}: missing" in problems
    assert any(p.startswith(f"{checkpoint / '.metadata'}: contents changed") for p in problems)


def test_an_unreadable_record_is_a_problem(tmp_path: Path):
    checkpoint = _save(tmp_path / "step-1")
    record_path(checkpoint, 0).write_text('{"files": ')
    (problem,) = verify(checkpoint)
    assert problem.startswith(f"{record_path(checkpoint, 0)}: unreadable integrity record")


def test_the_records_of_every_rank_spare_parsing_the_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    checkpoint = _save(tmp_path / "step-1")

    def parse(directory: Path) -> dict[str, int]:
        raise AssertionError(".metadata parsed")

    monkeypatch.setattr(checkpoint_integrity, "_needed_sizes", parse)
    assert verify(checkpoint) == []


def test_files_of_a_missing_record_are_checked_against_the_metadata(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    checkpoint = _save(tmp_path / "step-1")
    record = json.loads(record_path(checkpoint, 0).read_text())
    # As if the data file were rank 1's, and rank 1 had stopped before writing its record.
    del record["files"][DATA]
    record["world_size"] = 2
    record_path(checkpoint, 0).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        assert verify(checkpoint) == []
    assert f"{checkpoint}: no integrity record covers {DATA}" in caplog.text
    _truncate(checkpoint / DATA)
    (problem,) = verify(checkpoint)
    assert problem.startswith(f"{checkpoint / DATA}: truncated") and "needs at least" in problem


def test_a_checkpoint_without_record_is_accepted_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    checkpoint = _save(tmp_path / "initial", record=False)
    with caplog.at_level(logging.INFO):
        assert verify(checkpoint) == []
    assert f"{checkpoint} has no titan_phases integrity record" in caplog.text


def test_a_truncated_checkpoint_without_record_is_still_found(tmp_path: Path):
    checkpoint = _save(tmp_path / "initial", record=False)
    _truncate(checkpoint / DATA)
    (problem,) = verify(checkpoint)
    assert problem.startswith(f"{checkpoint / DATA}: truncated") and "needs at least" in problem


def test_the_newest_intact_checkpoint_is_loaded_and_the_damaged_one_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    _save(tmp_path / "step-10")
    damaged = _save(tmp_path / "step-20", 2.0)
    flip_64_bytes(damaged / DATA)
    with caplog.at_level(logging.WARNING):
        choice = choose_checkpoint(tmp_path)
    assert (choice.step, choice.path, choice.fresh_start) == (10, str(tmp_path / "step-10"), False)
    (skipped,) = choice.skipped
    assert skipped.step == 20 and skipped.reason.startswith(f"damaged: {damaged / DATA}")
    assert f"Skipping checkpoint {damaged}" in caplog.text
    assert f"loading {tmp_path / 'step-10'} instead" in caplog.text


def test_none_intact_is_an_error_naming_the_files(tmp_path: Path):
    for step in (10, 20):
        _truncate(_save(tmp_path / f"step-{step}") / DATA)
    with pytest.raises(CheckpointLoadError, match="no checkpoint in .* is intact") as error:
        choose_checkpoint(tmp_path)
    assert str(tmp_path / "step-20" / DATA) in str(error.value)
    assert str(tmp_path / "step-10" / DATA) in str(error.value)


def test_a_damaged_load_step_is_an_error_naming_the_newest_intact_one(tmp_path: Path):
    _save(tmp_path / "step-10")
    _save(tmp_path / "step-20")
    flip_64_bytes(_save(tmp_path / "step-30") / DATA)
    with pytest.raises(CheckpointLoadError) as error:
        choose_checkpoint(tmp_path, load_step=30)
    message = str(error.value)
    assert str(tmp_path / "step-30" / DATA) in message
    assert "--checkpoint.load_step 20 loads the newest intact one" in message


def test_an_intact_load_step_is_loaded(tmp_path: Path):
    _save(tmp_path / "step-10")
    _save(tmp_path / "step-20")
    choice = choose_checkpoint(tmp_path, load_step=10)
    assert (choice.step, choice.skipped) == (10, [])


def test_a_missing_load_step_is_an_error_naming_the_steps_that_exist(tmp_path: Path):
    _save(tmp_path / "step-10")
    _save(tmp_path / "step-20")
    (tmp_path / "step-30").mkdir()
    with pytest.raises(CheckpointLoadError) as error:
        choose_checkpoint(tmp_path, load_step=15)
    assert str(error.value) == (
        f"--checkpoint.load_step 15: there is no checkpoint of step 15: {tmp_path} holds the "
        "checkpoints of steps 10, 20 (incomplete: steps 30)"
    )


def test_a_load_step_in_a_missing_folder_is_an_error(tmp_path: Path):
    with pytest.raises(CheckpointLoadError, match="checkpoint folder .*nowhere does not exist"):
        choose_checkpoint(tmp_path / "nowhere", load_step=5)


def test_incomplete_folders_are_skipped_and_named_at_every_step(tmp_path: Path):
    (tmp_path / "step-5").mkdir()
    _save(tmp_path / "step-10")
    (tmp_path / "step-20").mkdir()
    (tmp_path / "step-20" / DATA).write_bytes(b"partial")
    choice = choose_checkpoint(tmp_path)
    assert choice.step == 10
    assert [(s.step, s.reason.split(":")[0]) for s in choice.skipped] == [
        (20, "incomplete"),
        (5, "incomplete"),
    ]


def test_an_incomplete_load_step_is_an_error(tmp_path: Path):
    _save(tmp_path / "step-10")
    (tmp_path / "step-20").mkdir()
    with pytest.raises(CheckpointLoadError, match=r"step-20 is incomplete.*load_step 10 loads"):
        choose_checkpoint(tmp_path, load_step=20)


def test_a_folder_without_complete_checkpoint_is_a_fresh_start(tmp_path: Path):
    (tmp_path / "step-10").mkdir()
    choice = choose_checkpoint(tmp_path)
    assert choice.fresh_start and choice.path is None
    assert [s.step for s in choice.skipped] == [10]
    assert choose_checkpoint(tmp_path / "missing").fresh_start


def test_an_async_record_is_written_when_the_save_completes(tmp_path: Path):
    checkpoint = tmp_path / "step-1"
    _dcp_save(checkpoint)
    save_future: Future = Future()
    recorded = record_when_done(save_future, checkpoint)
    assert not record_path(checkpoint, 0).exists()
    writer = threading.Thread(target=save_future.set_result, args=(None,))
    writer.start()
    writer.join()
    recorded.result(timeout=30)
    assert verify(checkpoint) == [] and record_path(checkpoint, 0).exists()


def test_a_failed_async_save_gets_no_record(tmp_path: Path):
    checkpoint = tmp_path / "step-1"
    _dcp_save(checkpoint)
    save_future: Future = Future()
    recorded = record_when_done(save_future, checkpoint)
    save_future.set_exception(RuntimeError("disk full"))
    recorded.result(timeout=30)
    assert not record_path(checkpoint, 0).exists()


def test_a_record_that_cannot_be_written_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    checkpoint = tmp_path / "step-1"
    _dcp_save(checkpoint)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    save_future: Future = Future()
    save_future.set_result(None)
    with caplog.at_level(logging.WARNING):
        record_when_done(save_future, checkpoint).result(timeout=30)
    assert f"No integrity record of {checkpoint}: [Errno 28] No space left" in caplog.text
    assert not record_path(checkpoint, 0).exists()
