"""The resume sequence, on real DCP checkpoints and without a process group."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed.checkpoint as dcp

from titan_phases.components.checkpoint import PhaseMismatchError, PHASES_KEY
from titan_phases.components.phase_controller import (
    PhaseController,
    REASON_STEP,
    ScheduleMismatchError,
)
from titan_phases.components.resume import checkpoint_to_load, rebuild_to_checkpoint

PARAMS = [["output.weight"], ["layers.1.w"], ["layers.0.w"]]


def _controller(params=PARAMS) -> PhaseController:
    return PhaseController([2, 4, None], params)


def _save(path: Path, controller: PhaseController | None) -> str:
    state = {"model": {"w": torch.ones(2)}}
    if controller is not None:
        state[PHASES_KEY] = controller
    dcp.save(state, checkpoint_id=path, no_dist=True)
    return str(path)


def _in_phase_2() -> PhaseController:
    controller = _controller()
    for completed in range(5):
        transition = controller.due(completed)
        if transition:
            controller.commit(transition)
    assert controller.phase == 2
    return controller


def test_rebuilds_phase_by_phase_then_verifies_the_optimizer(tmp_path: Path):
    checkpoint = _save(tmp_path / "step-5", _in_phase_2())
    calls: list[object] = []
    live = _controller()
    phase = rebuild_to_checkpoint(checkpoint, live, calls.append, lambda c: calls.append(c))
    assert phase == live.phase == 2
    assert calls == [1, 2, checkpoint]
    assert [t.reason for t in live.history] == [REASON_STEP, REASON_STEP]


def test_a_checkpoint_without_phase_state_stays_in_phase_0(tmp_path: Path):
    checkpoint = _save(tmp_path / "initial", None)
    calls: list[object] = []
    assert rebuild_to_checkpoint(checkpoint, _controller(), calls.append, calls.append) == 0
    assert calls == []


def test_a_changed_schedule_is_refused_before_anything_is_entered(tmp_path: Path):
    checkpoint = _save(tmp_path / "step-5", _in_phase_2())
    changed = [["output.weight"], ["layers.1.w", "layers.0.w"], ["tok_embeddings.weight"]]
    calls: list[object] = []
    with pytest.raises(ScheduleMismatchError, match=r"step-5: the checkpoint is in phase 2"):
        rebuild_to_checkpoint(checkpoint, _controller(changed), calls.append, calls.append)
    assert calls == []


def test_an_optimizer_that_does_not_fit_is_refused_with_its_reason(tmp_path: Path):
    checkpoint = _save(tmp_path / "step-5", _in_phase_2())

    def verify(checkpoint_id: str) -> None:
        raise PhaseMismatchError(f"{checkpoint_id} optimizes other parameters")

    with pytest.raises(ScheduleMismatchError, match="optimizes other parameters"):
        rebuild_to_checkpoint(checkpoint, _controller(), lambda phase: None, verify)


def test_the_checkpoint_to_load_follows_torchtitans_choice(tmp_path: Path):
    def checkpointer(enable: bool = True, latest: int = 7) -> SimpleNamespace:
        return SimpleNamespace(
            enable=enable,
            folder=str(tmp_path),
            _find_load_step=lambda: latest,
            _create_checkpoint_id=lambda step: str(tmp_path / f"step-{step}"),
        )

    assert checkpoint_to_load(checkpointer(), -1) == str(tmp_path / "step-7")
    assert checkpoint_to_load(checkpointer(), 3) == str(tmp_path / "step-3")
    assert checkpoint_to_load(checkpointer(latest=-1), -1) is None
    assert checkpoint_to_load(checkpointer(enable=False), -1) is None
    missing = SimpleNamespace(enable=True, folder=str(tmp_path / "none"))
    assert checkpoint_to_load(missing, -1) is None
