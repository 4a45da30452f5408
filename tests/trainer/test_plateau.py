"""Validation-driven transitions, early end of training and restore_best, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.jobs import checkpoint_state, JobResult, run_job
from tests.trainer.tiny_checks import EVERY_STEP
from titan_phases.components.metrics_file import read_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_assets")]

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
    return result.metrics().of_type(kind)


@pytest.fixture(scope="module")
def plateau_run(tmp_path_factory: pytest.TempPathFactory, embedded_assets: Path) -> JobResult:
    """The plateau job run once, never stopped, with no interval checkpoint before its end."""
    result = run_job(tmp_path_factory.mktemp("plateau") / "run", *PLATEAU,
                     "--checkpoint.interval", "50")
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
    (end,) = _events(plateau_run, "end")
    assert end["step"] < 20 and "plateaued in the final phase 2" in end["reason"]
    assert f"Training stops after step {end['step']}" in plateau_run.output
    # No interval checkpoint falls on the end step: the final save comes right after a
    # validation forward, which leaves FSDP's root module unsharded.
    saved = sorted(p.name for p in (plateau_run.dump / "checkpoint").iterdir())
    assert saved == [f"step-{end['step']}"]
    checkpoint = plateau_run.dump / "checkpoint" / saved[0]
    assert (checkpoint / ".metadata").is_file()
    state = checkpoint_state(checkpoint, tmp_path / "final.pt")
    assert "output.weight" in state and "optimizer" in state and "phases" in state


def test_restore_best_restores_the_phase_best_before_the_transition(plateau_run: JobResult):
    first = _events(plateau_run, "transition")[0]
    losses = {r["step"]: r["loss"] for r in _events(plateau_run, "validation")}
    best_step = min((s for s in losses if s <= first["step"]), key=losses.get)
    restored = f"validation loss {losses[best_step]:.6g} after step {best_step}"
    assert f"restored phase 0's best state ({restored})" in plateau_run.output
    best_dir = plateau_run.dump / "best_checkpoints" / "phase-0" / f"after-step-{best_step}"
    assert (best_dir / ".metadata").is_file()


def _observed(dump: Path) -> dict[tuple, set]:
    """Everything a run decided, from every process start of it: each key's set of values.

    A restarted run repeats the steps after its last checkpoint, so a step logged by the
    killed process and again by the restart has two records: equal values keep one entry.
    """
    seen: dict[tuple, set] = {}
    for record in read_metrics(dump).records:
        kind = record["type"]
        if kind == "train":
            key, value = (kind, record["step"]), (record["loss"], tuple(record["lr"]))
        elif kind == "validation":
            key, value = (kind, record["step"]), record["loss"]
        elif kind == "transition":
            key = (kind, record["from_phase"])
            value = (record["step"], record["to_phase"], record["reason"])
        elif kind == "end":
            key, value = (kind,), (record["step"], record["reason"])
        else:
            continue
        seen.setdefault(key, set()).add(value)
    return seen


def _kill_moments(reference: JobResult) -> list[tuple[str, dict[str, str]]]:
    """The moments to SIGKILL the plateau job at, in the order the run reaches them."""
    transition = _events(reference, "transition")[0]["step"]
    return [
        ("during the first save", {"TITAN_PHASES_TEST_STALL_SAVING": "*/checkpoint/step-1"}),
        ("between the plateau validation and its restore-best transition",
         {"TITAN_PHASES_TEST_STALL_RESTORING_BEST": "1"}),
        ("during a later save",
         {"TITAN_PHASES_TEST_STALL_SAVING": f"*/checkpoint/step-{transition + 1}"}),
        ("while a best checkpoint is written",
         {"TITAN_PHASES_TEST_STALL_SAVING": "*/best_checkpoints/phase-1/*"}),
    ]


def test_sigkill_at_each_moment_then_the_same_command_repeats_the_run_bitwise(
    plateau_run: JobResult, tmp_path: Path
):
    # One job killed at each moment in turn, each time restarted with the same command, which
    # checkpoints every step (the reference run only at its end: the cadence changes nothing
    # the run decides).
    dump = tmp_path / "run"
    transition = _events(plateau_run, "transition")[0]["step"]
    for moment, faults in _kill_moments(plateau_run):
        killed = run_job(dump, *PLATEAU, *EVERY_STEP, faults=faults)
        assert killed.returncode != 0 and not _events(killed, "end"), (moment, killed.failure())
        if moment == "during the first save":
            assert [p.name for p in (dump / "checkpoint").iterdir()] == ["step-1"]
            assert not (dump / "checkpoint" / "step-1" / ".metadata").exists()
        elif moment == "between the plateau validation and its restore-best transition":
            assert "no complete checkpoint is left: starting from the initial weights" in (
                killed.output
            )
        elif moment == "while a best checkpoint is written":
            torn = dump / "checkpoint" / f"step-{transition + 1}"
            assert f"Skipping checkpoint {torn}, incomplete" in killed.output
    resumed = run_job(dump, *PLATEAU, *EVERY_STEP)
    assert resumed.returncode == 0, resumed.failure()
    observed, reference = _observed(dump), _observed(plateau_run.dump)
    assert observed == reference
    assert ("end",) in reference and ("transition", 1) in reference
    assert (dump / "run" / "start-5").is_dir()
