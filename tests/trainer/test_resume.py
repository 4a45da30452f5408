"""Kill a phased job at chosen steps, restart it with the same command, compare with a run
that never stopped; resume on another number of ranks; refuse an incompatible schedule."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.trainer.jobs import JobResult, run_job, TINY_JOB

pytestmark = pytest.mark.usefixtures("embedded_assets")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, embedded_assets: Path) -> JobResult:
    result = run_job(tmp_path_factory.mktemp("reference") / "run")
    assert result.returncode == 0, result.failure()
    return result


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


# Phase 0 ends after step 4 (max_transition_step). Killed while logging step K, the job
# restarts from the checkpoint of step K - 1.
@pytest.mark.parametrize(
    "resume_from",
    [4, 5, 6],
    ids=["at-transition-step", "one-step-after-transition", "mid-phase"],
)
def test_kill_and_restart_reproduces_losses_bitwise(
    uninterrupted: JobResult, tmp_path: Path, resume_from: int
):
    dump = tmp_path / "run"
    killed = run_job(dump, kill_after_step=resume_from + 1)
    assert killed.returncode != 0, "the job should have been killed"
    resumed = run_job(dump)
    assert resumed.returncode == 0, resumed.failure()

    reference = uninterrupted.losses()
    after_restart = resumed.losses()
    assert sorted(after_restart) == list(range(resume_from + 1, 13))
    assert after_restart == {step: reference[step] for step in after_restart}
    reference_lrs = {r["step"]: r["lr"] for r in uninterrupted.records()}
    assert all(r["lr"] == reference_lrs[r["step"]] for r in resumed.records())
    reference_validation = {r["step"]: r["loss"] for r in uninterrupted.records("validation")}
    resumed_validation = {r["step"]: r["loss"] for r in resumed.records("validation")}
    assert resumed_validation
    assert resumed_validation == {s: reference_validation[s] for s in resumed_validation}
    # The run folder explains both starts: what each ran, and what the second resumed.
    lines = (dump / "run" / "starts.jsonl").read_text().splitlines()
    starts = [json.loads(line) for line in lines]
    resumed_from = str(dump / "checkpoint" / f"step-{resume_from}")
    assert [s["resumed_from"] for s in starts] == [None, resumed_from]
    for start in ("start-1", "start-2"):
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


def test_checkpoint_torn_by_a_kill_mid_save_is_skipped_for_the_last_complete_one(
    uninterrupted: JobResult, tmp_path: Path
):
    # What a kill while step 8 is being saved leaves: step 7 complete, step 8's files cut
    # short and its .metadata (DCP writes it last) missing.
    dump = tmp_path / "run"
    saved = _copy_checkpoints(uninterrupted, dump, 7)
    torn = dump / "checkpoint" / "step-8"
    torn.mkdir()
    for file in (saved / "step-8").iterdir():
        if file.name != ".metadata":
            data = file.read_bytes()
            (torn / file.name).write_bytes(data[: len(data) // 2])
    resumed = run_job(dump)
    assert resumed.returncode == 0, resumed.failure()
    reference = uninterrupted.losses()
    assert resumed.losses() == {step: reference[step] for step in range(8, 13)}
    assert [r["phase"] for r in resumed.records()] == [1, 2, 2, 2, 2]


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


@pytest.mark.parametrize("flag", [True, False], ids=["dataloader-excluded", "rank-change-detected"])
def test_phase1_checkpoint_from_two_ranks_resumes_on_one(
    uninterrupted: JobResult, tmp_path: Path, flag: bool
):
    import shutil

    dump = tmp_path / "run"
    shutil.copytree(uninterrupted.dump / "checkpoint", dump / "checkpoint")
    exclude = ("--checkpoint.exclude_from_loading", "dataloader") if flag else ()
    resumed = run_job(dump, "--checkpoint.load_step", "6", *exclude, nproc=1)
    assert resumed.returncode == 0, resumed.failure()
    detected = "saved with 2 data-parallel ranks, this run has 1" in resumed.output
    assert detected != flag
    records = resumed.records()
    reference = {r["step"]: r for r in uninterrupted.records()}
    assert records[0]["step"] == 7 and records[0]["phase"] == 1
    assert records[0]["lr"] == reference[7]["lr"]
    assert [r["phase"] for r in records] == [1, 1, 2, 2, 2, 2]
    assert records[-1]["step"] == 12


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
