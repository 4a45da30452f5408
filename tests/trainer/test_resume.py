"""Kill a phased job at chosen steps, restart it with the same command, compare with a run
that never stopped; resume on another number of ranks; refuse an incompatible schedule."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.trainer.jobs import (
    JobResult,
    measured_state_bytes,
    planned_state_bytes,
    run_job,
    TINY_JOB,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_assets")]


def test_uninterrupted_run_goes_through_every_phase(uninterrupted: JobResult):
    records = uninterrupted.records()
    assert [r["phase"] for r in records] == [0] * 4 + [1] * 4 + [2] * 4
    assert [len(r["lr"]) for r in records] == [1] * 4 + [2] * 4 + [3] * 4
    trainable = [r["trainable_params"] for r in records]
    assert trainable[0] < trainable[4] < trainable[8]
    assert "Phase 0 -> 1 after step 4" in uninterrupted.output
    assert "Phase 1 -> 2 after step 8" in uninterrupted.output


def test_sigterm_saves_the_step_in_progress_and_the_restart_continues_bitwise(
    uninterrupted: JobResult, tmp_path: Path
):
    dump = tmp_path / "run"
    # No interval checkpoint after step 0: whatever resumes was saved because of SIGTERM.
    sparse = ("--checkpoint.interval", "100")
    stopped = run_job(dump, *sparse, terminate_after_step=5)
    assert stopped.returncode != 0
    assert stopped.output.count("titan_phases: SIGTERM received") == 2  # both ranks agree
    (end,) = stopped.records("end")
    assert end["reason"] == "preempted (SIGTERM)" and end["step"] >= 5
    saved = end["step"]
    assert f"saved a full checkpoint after step {saved}" in stopped.output
    assert (dump / "checkpoint" / f"step-{saved}" / ".metadata").is_file()

    resumed = run_job(dump, *sparse)
    assert resumed.returncode == 0, resumed.failure()
    reference = uninterrupted.losses()
    after_restart = resumed.losses()
    assert sorted(after_restart) == list(range(saved + 1, 13))
    assert after_restart == {step: reference[step] for step in after_restart}


def test_a_non_finite_loss_stops_before_that_step_is_saved(tmp_path: Path):
    dump = tmp_path / "run"
    diverged = run_job(dump, "--optimizer.lr", "1e30")
    assert diverged.returncode != 0
    (end,) = diverged.records("end")
    assert end["reason"].startswith("diverged: non-finite training loss in step")
    step = end["step"]
    assert diverged.output.count(f"Stopped before saving step {step}") == 2  # both ranks
    saved = sorted(int(p.name.split("-")[1]) for p in (dump / "checkpoint").iterdir())
    assert saved and max(saved) == step - 1
    losses = diverged.losses()
    assert losses[step] is None  # metrics.jsonl writes a non-finite value as null
    assert all(isinstance(losses[s], float) for s in losses if s < step)


def test_kill_and_restart_reproduces_losses_bitwise(uninterrupted: JobResult, tmp_path: Path):
    # Phase 0 ends after step 4 (max_transition_step). Killed while logging step K, the job
    # restarts from the checkpoint of step K - 1: here at the transition step, one step after
    # it and mid-phase, one restart after the other with the same command.
    dump = tmp_path / "run"
    reference = uninterrupted.losses()
    reference_lrs = {r["step"]: r["lr"] for r in uninterrupted.records()}
    reference_validation = {r["step"]: r["loss"] for r in uninterrupted.records("validation")}
    resumed_from = [None]
    for kill_after_step in (5, 6, 7, None):
        run = run_job(dump, kill_after_step=kill_after_step)
        if kill_after_step is not None:
            assert run.returncode != 0, "the job should have been killed"
        else:
            assert run.returncode == 0, run.failure()
        losses = run.losses()
        start = resumed_from[-1]
        assert min(losses) == (1 if start is None else start + 1)
        assert max(losses) == (kill_after_step or 12)
        assert losses == {step: reference[step] for step in losses}
        assert all(r["lr"] == reference_lrs[r["step"]] for r in run.records())
        validation = {r["step"]: r["loss"] for r in run.records("validation")}
        assert validation == {s: reference_validation[s] for s in validation}
        if kill_after_step is not None:
            resumed_from.append(kill_after_step - 1)
    assert 6 in validation  # the last start validated after a restart
    # The run folder explains every start: what each ran, and what it resumed.
    lines = (dump / "run" / "starts.jsonl").read_text().splitlines()
    starts = [json.loads(line) for line in lines]
    assert [s["resumed_from"] for s in starts] == [None] + [
        str(dump / "checkpoint" / f"step-{step}") for step in resumed_from[1:]
    ]
    for start in ("start-1", "start-4"):
        assert {p.name for p in (dump / "run" / start).iterdir()} == {
            "schedule.toml", "phases.txt", "versions.json"
        }


def _copy_checkpoints(source: JobResult, dump: Path, last_step: int) -> Path:
    """Copy ``source``'s checkpoints of steps 1..last_step into ``dump``; return its source."""
    import shutil

    saved = source.dump / "checkpoint"
    for step in range(1, last_step + 1):
        shutil.copytree(saved / f"step-{step}", dump / "checkpoint" / f"step-{step}")
    return saved


def test_a_damaged_newest_checkpoint_is_skipped_for_the_newest_intact_one(
    uninterrupted: JobResult, tmp_path: Path
):
    dump = tmp_path / "run"
    _copy_checkpoints(uninterrupted, dump, 8)
    # 64 flipped bytes: DCP itself would load them without complaint.
    damaged = sorted((dump / "checkpoint" / "step-8").glob("__0_*.distcp"))[0]
    data = bytearray(damaged.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    damaged.write_bytes(bytes(data))
    resumed = run_job(dump)
    assert resumed.returncode == 0, resumed.failure()
    assert f"Skipping checkpoint {dump / 'checkpoint' / 'step-8'}" in resumed.output
    assert damaged.name in resumed.output
    reference = uninterrupted.losses()
    assert resumed.losses() == {step: reference[step] for step in range(8, 13)}


def test_a_folder_without_a_complete_checkpoint_starts_from_the_initial_weights(
    uninterrupted: JobResult, tmp_path: Path
):
    # What a kill during the first save leaves behind.
    dump = tmp_path / "run"
    torn = dump / "checkpoint" / "step-1"
    torn.mkdir(parents=True)
    (torn / "__0_0.distcp").write_bytes(b"cut short")
    initial = uninterrupted.dump / "checkpoint" / "step-12"  # the final, model-only save
    started = run_job(dump, "--checkpoint.initial_load_path", str(initial))
    assert started.returncode == 0, started.failure()
    assert f"Loading the checkpoint from {initial}" in started.output
    assert f"Skipping checkpoint {torn}" in started.output
    losses = started.losses()
    assert min(losses) == 1 and losses[1] < uninterrupted.losses()[1]  # trained weights


def test_a_full_disk_stops_with_one_clear_error_and_the_restart_continues_bitwise(
    uninterrupted: JobResult, tmp_path: Path
):
    dump = tmp_path / "run"
    # Rank 1 runs out of space half-way through writing step 6.
    full = run_job(dump, faults={"TITAN_PHASES_TEST_NO_SPACE_SAVING": "*/checkpoint/step-6"})
    assert full.returncode != 0
    folder = dump / "checkpoint" / "step-6"
    said = f"titan_phases: saving the checkpoint {folder} failed: rank 1: [Errno 28] No space"
    assert full.output.count(said) == 2, full.failure()  # both ranks, the same words
    assert "CheckpointException" not in full.output
    assert not (folder / ".metadata").exists()
    assert (dump / "checkpoint" / "step-5" / ".metadata").is_file()

    resumed = run_job(dump)
    assert resumed.returncode == 0, resumed.failure()
    assert f"Skipping checkpoint {folder}, incomplete" in resumed.output
    reference = uninterrupted.losses()
    assert resumed.losses() == {step: reference[step] for step in range(6, 13)}


def test_a_checkpoint_of_another_flavor_is_refused_in_one_line(
    uninterrupted: JobResult, tmp_path: Path
):
    dump = tmp_path / "run"
    _copy_checkpoints(uninterrupted, dump, 5)
    before = _tree_digest(dump / "checkpoint")
    refused = run_job(dump, "--model.flavor", "tiny_wide")
    assert refused.returncode != 0
    said = f"cannot resume, nothing was changed: {dump / 'checkpoint' / 'step-5'} holds another"
    assert refused.output.count(said) == 2, refused.failure()
    assert "tok_embeddings.weight is [2048, 64] there and [2048, 96] in this job's model" in (
        refused.output
    )
    assert "size mismatch" not in refused.output and "Training starts" not in refused.output
    assert _tree_digest(dump / "checkpoint") == before


def test_phase1_checkpoint_from_two_ranks_resumes_on_three(
    uninterrupted: JobResult, tmp_path: Path
):
    import shutil

    dump = tmp_path / "run"
    shutil.copytree(uninterrupted.dump / "checkpoint", dump / "checkpoint")
    resumed = run_job(dump, "--checkpoint.load_step", "6", nproc=3)
    assert resumed.returncode == 0, resumed.failure()
    assert "saved with 2 data-parallel ranks, this run has 3" in resumed.output
    records = resumed.records()
    reference = {r["step"]: r for r in uninterrupted.records()}
    assert records[0]["step"] == 7 and records[0]["phase"] == 1
    assert records[0]["lr"] == reference[7]["lr"]
    assert [r["phase"] for r in records] == [1, 1, 2, 2, 2, 2]
    assert records[-1]["step"] == 12
    # FSDP2 splits the tiny model's dims (64, 2048) unevenly over 3 ranks; plan still
    # predicts every rank's bytes exactly.
    measured = measured_state_bytes(records)
    assert len(set(measured[1])) > 1
    assert measured == {
        k: v for k, v in planned_state_bytes(3, "--job.config_file", str(TINY_JOB)).items()
        if k in measured
    }


def test_plan_predicts_the_optimizer_state_bytes_of_every_phase(uninterrupted: JobResult):
    assert measured_state_bytes(uninterrupted.records()) == planned_state_bytes(
        2, "--job.config_file", str(TINY_JOB)
    )


def _tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def test_incompatible_schedule_on_resume_is_refused_and_checkpoint_untouched(
    uninterrupted: JobResult, tmp_path: Path
):
    import shutil

    dump = tmp_path / "run"
    shutil.copytree(uninterrupted.dump / "checkpoint", dump / "checkpoint")
    before = _tree_digest(dump / "checkpoint")
    # A valid schedule, but phase 1 (the checkpoint's phase) now thaws another block.
    changed = tmp_path / "changed_job.toml"
    changed.write_text(
        TINY_JOB.read_text()
        .replace("params = ['layers\\.2\\..+']", "params = ['layers\\.1\\..+']")
        .replace("'layers\\.[01]\\..+'", "'layers\\.[02]\\..+'")
    )
    assert changed.read_text() != TINY_JOB.read_text()
    refused = run_job(dump, "--checkpoint.load_step", "6", config=changed)
    assert refused.returncode != 0
    assert refused.output.count("cannot resume") == 2  # both ranks
    assert "phase(s) 1 differ" in refused.output
    assert _tree_digest(dump / "checkpoint") == before
