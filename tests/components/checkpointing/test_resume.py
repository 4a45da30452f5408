"""Resuming: rebuilding to a checkpoint and whether a job can continue it, on real DCP
checkpoints and without a process group."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed.checkpoint as dcp

from titan_phases.components.checkpointing.format import PhaseMismatchError, PHASES_KEY
from titan_phases.components.checkpointing.integrity import verify
from titan_phases.components.checkpointing.resume import (
    initial_weights_problem,
    rebuild_to_checkpoint,
    resume_report,
)
from titan_phases.components.phase_controller import (
    PhaseController,
    REASON_STEP,
    ScheduleMismatchError,
)

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


def _checkpoint_config(initial_load_path: str = "", load_step: int = -1) -> SimpleNamespace:
    return SimpleNamespace(
        initial_load_path=initial_load_path, initial_load_in_hf=False, load_step=load_step
    )


def test_a_fresh_start_from_a_missing_initial_path_names_it(tmp_path: Path):
    missing = str(tmp_path / "pretrained" / "step-100")
    config = _checkpoint_config(missing)
    problem = initial_weights_problem(config, str(tmp_path / "checkpoint"), {"w": (2,)})
    assert f"initial_load_path = {missing!r} does not exist" in problem
    assert initial_weights_problem(_checkpoint_config(), str(tmp_path), {"w": (2,)}) is None
    resumes, reported = resume_report(
        config, str(tmp_path / "checkpoint"), _controller(), verify, {"w": (2,)}
    )
    assert resumes is None and reported == problem
    pending = resume_report(
        config, str(tmp_path / "checkpoint"), _controller(), verify, {"w": (2,)},
        initial_weights_pending=True,
    )
    assert pending == (None, None)


def test_initial_weights_of_another_model_are_refused(tmp_path: Path):
    initial = tmp_path / "pretrained"
    dcp.save({"w": torch.ones(2)}, checkpoint_id=initial, no_dist=True)
    config = _checkpoint_config(str(initial))
    assert initial_weights_problem(config, str(tmp_path / "ckpt"), {"w": (2,)}) is None
    problem = initial_weights_problem(config, str(tmp_path / "ckpt"), {"w": (3,)})
    assert problem.startswith("[checkpoint] initial_load_path: ")
    assert "w is [2] there and [3] in this job's model" in problem
    (initial / ".metadata").unlink()
    problem = initial_weights_problem(config, str(tmp_path / "ckpt"), {"w": (2,)})
    assert f"initial_load_path = {str(initial)!r} is not a complete DCP checkpoint" in problem


def test_resume_report_refuses_a_checkpoint_of_another_model(tmp_path: Path):
    _save(tmp_path / "step-5", _in_phase_2())
    resumes, problem = resume_report(
        _checkpoint_config(), str(tmp_path), _controller(), verify, {"model.w": (4,)}
    )
    assert resumes is None and "model.w is [2] there and [4]" in problem
    resumes, problem = resume_report(
        _checkpoint_config(), str(tmp_path), _controller(), verify, {"model.w": (2,)}
    )
    assert problem is None and resumes.endswith("phase 2 after step 5")


def _with_settings(lrs=(None, 2e-3, 1e-3)) -> PhaseController:
    return PhaseController([2, 4, None], PARAMS, phase_settings=[{"lr": lr} for lr in lrs])


def test_a_changed_lr_of_a_saved_phase_is_refused_before_anything_is_entered(tmp_path: Path):
    saved = _with_settings()
    for completed in range(5):
        transition = saved.due(completed)
        if transition:
            saved.commit(transition)
    checkpoint = _save(tmp_path / "step-5", saved)
    calls: list[object] = []
    with pytest.raises(ScheduleMismatchError) as refused:
        rebuild_to_checkpoint(checkpoint, _with_settings((None, 3e-4, 1e-3)), calls.append,
                              calls.append)
    assert f"{checkpoint}: the checkpoint is in phase 2, and this job changes" in str(
        refused.value
    )
    assert "\n  phase 1 lr: 0.002 in the checkpoint, 0.0003 now\n" in str(refused.value)
    assert calls == []
    resumes, problem = resume_report(
        _checkpoint_config(), str(tmp_path), _with_settings((None, 3e-4, 1e-3)), verify,
        {"model.w": (2,)},
    )
    assert resumes is None and problem.startswith(f"cannot resume {checkpoint}: the checkpoint")
    assert "phase 1 lr: 0.002 in the checkpoint, 0.0003 now" in problem


def test_a_checkpoint_saved_without_settings_is_resumed_as_before_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    import json

    from titan_phases.components.checkpointing.resume import SETTINGS_UNCHECKED

    state = _in_phase_2().state_dict()
    fields = json.loads(state["json"])
    assert fields.pop("settings") is None  # a controller without settings saves none
    old = {"phase": state["phase"], "json": json.dumps(fields)}
    checkpoint = tmp_path / "step-5"
    dcp.save({"model": {"w": torch.ones(2)}, PHASES_KEY: old}, checkpoint_id=checkpoint,
             no_dist=True)
    resumes, problem = resume_report(
        _checkpoint_config(), str(tmp_path), _with_settings((None, 3e-4, 1e-3)), verify,
        {"model.w": (2,)},
    )
    assert problem is None
    assert resumes == f"{checkpoint}: phase 2 after step 5 ({SETTINGS_UNCHECKED})"
    calls: list[object] = []
    with caplog.at_level("WARNING"):
        phase = rebuild_to_checkpoint(str(checkpoint), _with_settings(), calls.append,
                                      calls.append)
    assert phase == 2 and calls == [1, 2, str(checkpoint)]
    assert f"{checkpoint} was {SETTINGS_UNCHECKED}" in caplog.text
