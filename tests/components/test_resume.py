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


def test_the_checkpoint_to_load_is_the_newest_complete_one(tmp_path: Path):
    from titan_phases.components.checkpoint_integrity import verify

    _save(tmp_path / "step-3", _in_phase_2())
    (tmp_path / "step-7").mkdir()  # torn: no .metadata
    checkpointer = SimpleNamespace(enable=True, folder=str(tmp_path))
    choice = checkpoint_to_load(checkpointer, -1, verify=verify)
    assert choice.step == 3 and choice.path == str(tmp_path / "step-3")
    assert [s.step for s in choice.skipped] == [7]
    assert checkpoint_to_load(SimpleNamespace(enable=False, folder=str(tmp_path)), -1) is None
    fresh = checkpoint_to_load(
        SimpleNamespace(enable=True, folder=str(tmp_path / "none")), -1, verify=verify
    )
    assert fresh.fresh_start
