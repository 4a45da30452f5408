"""Stop a phased job in every way it can stop (Ctrl-C once and twice, SIGKILL at chosen steps, a
full disk, SIGTERM), restart it in the same folder, and compare with the run that never stopped;
resume from a damaged or torn checkpoint folder and on another number of ranks; refuse a
checkpoint the job cannot resume, in the start check and on every rank."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.trainer.jobs import (
    from_initial,
    JobResult,
    measured_state_bytes,
    planned_state_bytes,
    run_job,
    TINY_JOB,
)
from tests.trainer.tiny_checks import EVERY_STEP

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_assets")]


def test_uninterrupted_run_goes_through_every_phase(uninterrupted: JobResult):
    records = uninterrupted.records()
    assert [r["phase"] for r in records] == [0] * 4 + [1] * 4 + [2] * 4
    assert [len(r["lr"]) for r in records] == [1] * 4 + [2] * 4 + [3] * 4
    trainable = [r["trainable_params"] for r in records]
    assert trainable[0] < trainable[4] < trainable[8]
    assert "Phase 0 -> 1 after step 4" in uninterrupted.output
    assert "Phase 1 -> 2 after step 8" in uninterrupted.output


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # it has just ended
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _stopped(pid: int) -> bool:
    """The process is stopped (state T of ``/proc/<pid>/stat``)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def _signals(pid: int, field: str) -> set[signal.Signals]:
    """A signal set of ``/proc/<pid>/status``: ``SigCgt`` (those it handles), ``ShdPnd`` (those
    sent to it and not taken yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return set()
    mask = int(next(line for line in status.splitlines() if line.startswith(field)).split()[1],
               16)
    return {s for s in signal.Signals if mask >> (s - 1) & 1}


@contextlib.contextmanager
def _ctrl_c(dump: Path, presses: int) -> Iterator[list[signal.Signals]]:
    """Press Ctrl-C ``presses`` times at the job ``run_job`` starts in ``dump``, as soon as its
    ranks handle it; yields what torchrun passed on to them for each press.

    A terminal sends SIGINT to its foreground process group: here torchrun alone (with
    ``run_train.sh``, its bash too). torchrun starts each rank in a session of its own, so only
    what torchrun sends reaches them. The ranks handle Ctrl-C from when they handle SIGTERM
    (StepGuard); before that, Python's KeyboardInterrupt would end them. So that every press
    finds the first step in progress, as it would on a real model, the ranks are paused
    (SIGSTOP) until torchrun has passed each press on to both of them.
    """
    passed_on: list[signal.Signals] = []
    failures: list[str] = []

    def press() -> None:
        deadline = time.monotonic() + 240
        ranks: list[int] = []
        while len(ranks) != 2 or any(signal.SIGTERM not in _signals(r, "SigCgt") for r in ranks):
            if time.monotonic() > deadline:
                failures.append("the ranks never handled SIGTERM")
                return
            time.sleep(0.005)
            launchers = [pid for pid in _children(os.getpid()) if str(dump) in _cmdline(pid)]
            ranks = _children(launchers[0]) if launchers else []
        for rank in ranks:
            os.kill(rank, signal.SIGSTOP)
        try:
            # SIGSTOP takes effect when the rank is next scheduled: a SIGINT that arrived before
            # would be taken first (the lower number), never pending.
            while not all(_stopped(r) for r in ranks):
                if time.monotonic() > deadline:
                    failures.append("the ranks never stopped")
                    return
                time.sleep(0.005)
            for _ in range(presses):
                seen = _signals(ranks[0], "ShdPnd")
                os.kill(launchers[0], signal.SIGINT)
                while any(_signals(r, "ShdPnd") <= seen for r in ranks):
                    if time.monotonic() > deadline:
                        failures.append(f"torchrun passed on {passed_on}, then nothing")
                        return
                    time.sleep(0.005)
                passed_on.extend(_signals(ranks[0], "ShdPnd") - seen)
        finally:
            for rank in ranks:
                with contextlib.suppress(ProcessLookupError):  # killed by torchrun meanwhile
                    os.kill(rank, signal.SIGCONT)

    thread = threading.Thread(target=press)
    thread.start()
    try:
        yield passed_on
    finally:
        thread.join()
    assert not failures, failures


def test_ctrl_c_kills_a_full_disk_and_sigterm_in_one_folder_each_restart_continuing_bitwise(
    uninterrupted: JobResult, initial_weights: Path, tmp_path: Path
):
    # One job, stopped seven times in one folder; every start but the Ctrl-C and SIGTERM ones
    # runs the same command.
    dump = tmp_path / "run"
    command = (*from_initial(initial_weights), *EVERY_STEP)
    reference = uninterrupted.losses()
    reference_lrs = {r["step"]: r["lr"] for r in uninterrupted.records()}
    reference_validation = {r["step"]: r["loss"] for r in uninterrupted.records("validation")}

    def assert_continues_the_reference(run: JobResult, first: int, last: int) -> set[int]:
        """``run`` logged steps ``first``..``last``, each as the reference did; returns the
        steps it validated."""
        losses = run.losses()
        assert sorted(losses) == list(range(first, last + 1)), run.failure()
        assert losses == {step: reference[step] for step in losses}
        assert all(r["lr"] == reference_lrs[r["step"]] for r in run.records())
        validation = {r["step"]: r["loss"] for r in run.records("validation")}
        assert validation == {s: reference_validation[s] for s in validation}
        return set(validation)

    # Ctrl-C, pressed once and then twice in a later start (interval checkpoints off: what the
    # next start resumes was saved because of Ctrl-C). The second press, while torchrun waits
    # for the ranks to finish the step, makes torchrun send them SIGTERM: they save the step
    # once, as Ctrl-C asked first.
    def assert_stopped_by_ctrl_c(run: JobResult, first: int) -> int:
        """``run`` trained steps ``first``.. until Ctrl-C stopped it after saving the step it
        was in, without a traceback on any rank; returns that step."""
        (end,) = run.records("end")
        assert end["reason"] == "interrupted (SIGINT)", run.failure()
        saved = end["step"]
        said = f"titan_phases: Ctrl-C (SIGINT) received: saved a full checkpoint after step {saved}"
        assert run.output.count(said) == 2, run.failure()  # both ranks agree
        assert (dump / "checkpoint" / f"step-{saved}" / ".metadata").is_file()
        assert "KeyboardInterrupt" not in run.output
        # Every traceback is torchrun's own, for the signal it passed on.
        assert run.output.count("Traceback (most recent") == run.output.count(
            "SignalException: Process"), run.failure()
        assert_continues_the_reference(run, first, saved)
        return saved

    ctrl_c = (*from_initial(initial_weights), "--checkpoint.interval", "100")
    with _ctrl_c(dump, presses=1) as passed_on:
        once = run_job(dump, *ctrl_c)
    assert passed_on == [signal.SIGINT] and once.returncode != 0
    resumed_from = [None, assert_stopped_by_ctrl_c(once, 1)]  # what each start resumed
    with _ctrl_c(dump, presses=2) as passed_on:
        twice = run_job(dump, *ctrl_c)
    assert passed_on == [signal.SIGINT, signal.SIGTERM] and twice.returncode != 0
    resumed_from.append(assert_stopped_by_ctrl_c(twice, resumed_from[-1] + 1))

    # Phase 0 ends after step 4 (max_transition_step). Killed while logging step K, the job
    # restarts from the checkpoint of step K - 1: at the transition step, one step after it
    # and mid-phase.
    for kill_after_step in (5, 6, 7):
        killed = run_job(dump, *command, kill_after_step=kill_after_step)
        assert killed.returncode != 0, "the job should have been killed"
        assert_continues_the_reference(killed, resumed_from[-1] + 1, kill_after_step)
        resumed_from.append(kill_after_step - 1)

    # Rank 1 runs out of space half-way through writing step 7.
    no_space = {"TITAN_PHASES_TEST_NO_SPACE_SAVING": "*/checkpoint/step-7"}
    full = run_job(dump, *command, faults=no_space)
    assert full.returncode != 0
    folder = dump / "checkpoint" / "step-7"
    said = f"titan_phases: saving the checkpoint {folder} failed: rank 1: [Errno 28] No space"
    assert full.output.count(said) == 2, full.failure()  # both ranks, the same words
    assert "CheckpointException" not in full.output
    assert not (folder / ".metadata").exists()
    assert (dump / "checkpoint" / "step-6" / ".metadata").is_file()
    validated = assert_continues_the_reference(full, 7, 7)
    # Step 6 was checkpointed before its validation ran: the restart repeated it.
    assert 6 in validated
    resumed_from.append(6)  # what the next start resumes: step 7 is torn

    # A scheduler preempts the job: SIGTERM to the launcher once step 8 is logged. No interval
    # checkpoint is due, so whatever the next start resumes was saved because of SIGTERM.
    stopped = run_job(dump, *from_initial(initial_weights), "--checkpoint.interval", "100",
                      terminate_after_step=8)
    assert stopped.returncode != 0
    assert f"Skipping checkpoint {folder}, incomplete" in stopped.output
    assert stopped.output.count("titan_phases: SIGTERM received") == 2  # both ranks agree
    (end,) = stopped.records("end")
    assert end["reason"] == "preempted (SIGTERM)" and 8 <= end["step"] < 12, end
    saved = end["step"]
    assert f"saved a full checkpoint after step {saved}" in stopped.output
    assert (dump / "checkpoint" / f"step-{saved}" / ".metadata").is_file()
    assert_continues_the_reference(stopped, 7, saved)
    resumed_from.append(saved)

    resumed = run_job(dump, *command)
    assert resumed.returncode == 0, resumed.failure()
    assert_continues_the_reference(resumed, saved + 1, 12)

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


def test_a_non_finite_loss_stops_before_that_step_is_saved(tmp_path: Path):
    dump = tmp_path / "run"
    diverged = run_job(dump, "--optimizer.lr", "1e30", *EVERY_STEP)
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


def _copy_checkpoints(source: JobResult, dump: Path, last_step: int) -> None:
    """Copy ``source``'s checkpoints up to step ``last_step`` into ``dump``."""
    for saved in (source.dump / "checkpoint").iterdir():
        if int(saved.name.split("-")[1]) <= last_step:
            shutil.copytree(saved, dump / "checkpoint" / saved.name)


def test_a_damaged_newest_checkpoint_is_skipped_for_the_newest_intact_one(
    uninterrupted: JobResult, tmp_path: Path
):
    dump = tmp_path / "run"
    _copy_checkpoints(uninterrupted, dump, 8)  # steps 2, 4, 6 and 8
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
    assert resumed.losses() == {step: reference[step] for step in range(7, 13)}


def test_a_folder_without_a_complete_checkpoint_starts_from_the_initial_weights(
    uninterrupted: JobResult, tmp_path: Path
):
    # What a kill during the first save leaves behind.
    dump = tmp_path / "run"
    torn = dump / "checkpoint" / "step-1"
    torn.mkdir(parents=True)
    (torn / "__0_0.distcp").write_bytes(b"cut short")
    initial = uninterrupted.dump / "checkpoint" / "step-12"  # the final save
    started = run_job(dump, *from_initial(initial))
    assert started.returncode == 0, started.failure()
    assert f"Loading the checkpoint from {initial}" in started.output
    assert f"Skipping checkpoint {torn}" in started.output
    losses = started.losses()
    assert min(losses) == 1 and losses[1] < uninterrupted.losses()[1]  # trained weights


def _tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _refused_by_the_start_check(dump: Path, *args: str, config: Path = TINY_JOB,
                                capsys: pytest.CaptureFixture) -> str:
    """What ``python -m titan_phases.prepare`` (run_train.sh's check before torchrun; every rank
    checks the same) says of the job, which must be refused with exit code 2."""
    import os

    from titan_phases.prepare import main

    capsys.readouterr()
    code = main(["--job.config_file", str(config), "--job.dump_folder", str(dump),
                 "--model.hf_assets_path", f"{os.environ['TITAN_PHASES_CACHE']}/tokenizer", *args])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.out == ""
    return captured.err


def _flavor_refusal(dump: Path) -> tuple[str, str]:
    """The words of the refusal of the tiny_wide flavor in ``dump``, and a detail they name."""
    said = f"{dump / 'checkpoint' / 'step-6'} holds another"
    return said, "tok_embeddings.weight is [2048, 64] there and [2048, 96] in this job's model"


def test_a_checkpoint_of_another_flavor_is_refused_by_every_rank_in_one_line(
    uninterrupted: JobResult, tmp_path: Path
):
    dump = tmp_path / "run"
    _copy_checkpoints(uninterrupted, dump, 6)
    before = _tree_digest(dump / "checkpoint")
    refused = run_job(dump, "--model.flavor", "tiny_wide")
    said, detail = _flavor_refusal(dump)
    assert refused.output.count(f"cannot resume, nothing was changed: {said}") == 2, (
        refused.failure()
    )
    # Both ranks exit with code 2 (torchrun itself reports a failed job with 1).
    assert refused.returncode != 0
    assert refused.output.count("exitcode  : 2") == 2, refused.failure()
    assert detail in refused.output
    assert "size mismatch" not in refused.output and "Training starts" not in refused.output
    assert _tree_digest(dump / "checkpoint") == before


def test_the_start_check_refuses_a_checkpoint_of_another_flavor(
    uninterrupted: JobResult, tmp_path: Path, capsys: pytest.CaptureFixture
):
    dump = tmp_path / "run"
    _copy_checkpoints(uninterrupted, dump, 6)
    before = _tree_digest(dump / "checkpoint")
    said, detail = _flavor_refusal(dump)
    refused = _refused_by_the_start_check(dump, "--model.flavor", "tiny_wide", capsys=capsys)
    assert f"titan_phases: cannot resume, nothing was run: {said}" in refused
    assert detail in refused and "size mismatch" not in refused
    assert _tree_digest(dump / "checkpoint") == before


def test_the_start_check_refuses_an_incompatible_schedule_and_leaves_the_checkpoint(
    uninterrupted: JobResult, tmp_path: Path, capsys: pytest.CaptureFixture
):
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
    refused = _refused_by_the_start_check(dump, "--checkpoint.load_step", "6", config=changed,
                                          capsys=capsys)
    assert "cannot resume" in refused
    assert "phase(s) 1 differ" in refused
    assert _tree_digest(dump / "checkpoint") == before


_CHANGED_LR = ("--checkpoint.load_step", "6", "--phases.schedule.1.lr", "3e-4")
_LR_REFUSAL = "phase 1 lr: 0.002 in the checkpoint, 0.0003 now"


def test_validate_and_the_start_check_refuse_a_changed_lr_of_the_saved_phase(
    uninterrupted: JobResult, tmp_path: Path, capsys: pytest.CaptureFixture
):
    import os

    from titan_phases.cli import main as titan_phases

    dump = tmp_path / "run"
    shutil.copytree(uninterrupted.dump / "checkpoint", dump / "checkpoint")
    before = _tree_digest(dump / "checkpoint")
    job = ("--job.config_file", str(TINY_JOB), "--job.dump_folder", str(dump),
           "--model.hf_assets_path", f"{os.environ['TITAN_PHASES_CACHE']}/tokenizer")
    capsys.readouterr()
    # The checkpoint (phase 1, after step 6) fixes phase 1's lr; the resumed job reads the
    # transition step and clipping from its config, so those may change.
    assert titan_phases(["validate", *job, "--checkpoint.load_step", "6",
                         "--phases.schedule.1.max_transition_step", "10",
                         "--training.max_norm", "0.5"]) == 0
    out = capsys.readouterr().out
    assert f"resumes {dump / 'checkpoint' / 'step-6'}: phase 1 after step 6\n" in out
    assert titan_phases(["validate", *job, *_CHANGED_LR]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume {dump / 'checkpoint' / 'step-6'}: the checkpoint is in phase 1" in err
    assert _LR_REFUSAL in err and "Traceback" not in err
    refused = _refused_by_the_start_check(dump, *_CHANGED_LR, capsys=capsys)
    assert "titan_phases: cannot resume, nothing was run" in refused and _LR_REFUSAL in refused
    assert _tree_digest(dump / "checkpoint") == before


def test_every_rank_refuses_a_changed_lr_of_the_saved_phase(
    uninterrupted: JobResult, tmp_path: Path
):
    dump = tmp_path / "run"
    _copy_checkpoints(uninterrupted, dump, 6)
    before = _tree_digest(dump / "checkpoint")
    refused = run_job(dump, *_CHANGED_LR)
    assert refused.returncode != 0
    assert refused.output.count("cannot resume, nothing was changed: ") == 2, refused.failure()
    assert refused.output.count(_LR_REFUSAL) == 2
    assert refused.output.count("exitcode  : 2") == 2, refused.failure()
    assert "Training starts" not in refused.output
    assert _tree_digest(dump / "checkpoint") == before


def test_phase1_checkpoint_from_two_ranks_resumes_on_three(
    uninterrupted: JobResult, tmp_path: Path
):
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
