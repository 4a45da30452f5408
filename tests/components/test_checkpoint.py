"""Each rank reads titan_phases' small checkpoint entries by itself, without a process group."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from titan_phases.components.checkpoint import entry_names, read_entries


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    state = {"phases": {"phase": 2, "json": '{"history": []}'}, "model": {"w": torch.ones(3)}}
    dcp.save(state, checkpoint_id=tmp_path, no_dist=True)
    return tmp_path


def test_entry_names_are_the_flattened_keys(checkpoint: Path):
    assert {"phases.phase", "phases.json", "model.w"} <= set(entry_names(checkpoint))


def test_read_entries_fills_only_what_was_asked(checkpoint: Path):
    target = {"phases": {"phase": 0, "json": ""}}
    read_entries(target, checkpoint)
    assert target == {"phases": {"phase": 2, "json": '{"history": []}'}}


def test_an_entry_the_checkpoint_lacks_raises(checkpoint: Path):
    with pytest.raises(CheckpointException):
        read_entries({"optimizer": {"metadata": ""}}, checkpoint)
