"""Each rank reads titan_phases' small checkpoint entries by itself, without a process group."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from titan_phases.components.checkpointing.format import entry_names, model_mismatch, read_entries


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


def _model_checkpoint(path: Path, model: torch.nn.Module) -> Path:
    dcp.save(model.state_dict(), checkpoint_id=path, no_dist=True)
    return path


def test_a_checkpoint_of_the_same_model_fits(tmp_path: Path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    saved = _model_checkpoint(tmp_path / "ckpt", model)
    shapes = {name: t.shape for name, t in model.state_dict().items()}
    assert model_mismatch(saved, shapes) is None


def test_a_checkpoint_of_another_flavor_is_named_with_its_shapes(tmp_path: Path):
    saved = _model_checkpoint(
        tmp_path / "ckpt", torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    )
    wider = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(16, 2))
    deeper = {**{n: t.shape for n, t in wider.state_dict().items()}, "2.weight": (2, 2)}
    problem = model_mismatch(saved, deeper)
    assert problem is not None and str(tmp_path / "ckpt") in problem
    assert "4 of its 5 tensors differ" in problem
    assert "0.weight is [8, 4] there and [16, 4] in this job's model" in problem
    assert "(and 1 more)" in problem
    assert "\n" not in problem
