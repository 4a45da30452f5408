"""Validation-driven transitions, early end of training and restore_best, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.jobs import JobResult, run_job

pytestmark = pytest.mark.usefixtures("embedded_assets")

# A high lr makes phase 0 plateau early and min_delta makes the final phase plateau before the
# end (patience 1, a validation after every step); the step limits (6, 12) are a backstop.
PLATEAU = (
    "--phases.transition_mode", "both", "--phases.patience", "1", "--phases.min_delta", "0.05",
    "--validation.freq", "1", "--phases.restore_best", "--optimizer.lr", "0.05",
    "--training.steps", "20",
    "--phases.schedule.0.max_transition_step", "6",
    "--phases.schedule.1.max_transition_step", "12",
)


def _events(result: JobResult, kind: str) -> list[dict]:
    lines = (result.dump / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


@pytest.fixture(scope="module")
def plateau_run(tmp_path_factory: pytest.TempPathFactory, embedded_assets: Path) -> JobResult:
    result = run_job(tmp_path_factory.mktemp("plateau") / "run", *PLATEAU)
    assert result.returncode == 0, result.failure()
    return result


def test_phase0_plateau_transitions_before_its_max_transition_step(plateau_run: JobResult):
    first = _events(plateau_run, "transition")[0]
    assert first["reason"] == "validation plateau" and first["from_phase"] == 0
    assert first["step"] < 6
    losses = {r["step"]: r["loss"] for r in _events(plateau_run, "validation")}
    # The validation that triggered it did not improve on the phase's best so far.
    assert losses[first["step"]] > min(v for s, v in losses.items() if s < first["step"]) - 0.05
    assert f"Phase 0 -> 1 after step {first['step']} (validation plateau)" in plateau_run.output


def test_final_phase_plateau_ends_training_with_a_loadable_full_checkpoint(
    plateau_run: JobResult, tmp_path: Path
):
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    (end,) = _events(plateau_run, "end")
    assert end["step"] < 20 and "plateaued in the final phase 2" in end["reason"]
    assert f"Training stops after step {end['step']}" in plateau_run.output
    checkpoint = plateau_run.dump / "checkpoint" / f"step-{end['step']}"
    dcp_to_torch_save(checkpoint, tmp_path / "final.pt")
    state = torch.load(tmp_path / "final.pt", weights_only=False)
    assert "output.weight" in state and "optimizer" in state and "phases" in state


def test_an_early_end_between_checkpoint_steps_still_writes_the_final_checkpoint(
    plateau_run: JobResult, tmp_path: Path
):
    # No interval checkpoint falls on the end step: the final save comes right after a
    # validation forward, which leaves FSDP's root module unsharded.
    result = run_job(tmp_path / "run", *PLATEAU, "--checkpoint.interval", "50")
    assert result.returncode == 0, result.failure()
    (end,) = _events(result, "end")
    assert end["step"] == _events(plateau_run, "end")[0]["step"]
    saved = sorted(p.name for p in (result.dump / "checkpoint").iterdir())
    assert saved == [f"step-{end['step']}"]
    assert (result.dump / "checkpoint" / saved[0] / ".metadata").is_file()


def test_restore_best_restores_the_phase_best_before_the_transition(plateau_run: JobResult):
    first = _events(plateau_run, "transition")[0]
    losses = {r["step"]: r["loss"] for r in _events(plateau_run, "validation")}
    best_step = min((s for s in losses if s <= first["step"]), key=losses.get)
    restored = f"validation loss {losses[best_step]:.6g} after step {best_step}"
    assert f"restored phase 0's best state ({restored})" in plateau_run.output
    best_dir = plateau_run.dump / "best_checkpoints" / "phase-0" / f"after-step-{best_step}"
    assert (best_dir / ".metadata").is_file()


def test_kill_between_best_checkpoint_and_its_transition_repeats_the_same_run(
    plateau_run: JobResult, tmp_path: Path
):
    transition_step = _events(plateau_run, "transition")[0]["step"]
    dump = tmp_path / "run"
    # Stalled while logging the plateau step: the best checkpoint exists, the transition not.
    killed = run_job(dump, *PLATEAU, kill_after_step=transition_step)
    assert killed.returncode != 0
    assert not _events(killed, "transition")
    resumed = run_job(dump, *PLATEAU)
    assert resumed.returncode == 0, resumed.failure()

    assert _events(resumed, "transition")[0]["step"] == transition_step
    reference = plateau_run.losses()
    after = resumed.losses()
    assert min(after) == transition_step
    assert after == {s: reference[s] for s in after}
    assert _events(resumed, "end")[-1]["step"] == _events(plateau_run, "end")[0]["step"]
