"""Block-cyclic fine-tuning end to end (``cycle_job.toml``: one block at a time, 2 steps each,
a new random order every pass, the head and final norm always): on 2 ranks (FSDP), FSDP2 x
TP2 and PP2 x FSDP2 against it, kills at a switch and mid-phase, and BAdam side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.dist import REPO
from tests.trainer.jobs import (
    CYCLE_JOB,
    from_initial,
    JobResult,
    measured_state_bytes,
    model_tensors,
    planned_state_bytes,
    run_job,
)
from titan_phases.config import parse_job_config
from titan_phases.schedule import load_and_validate, ResolvedSchedule
from titan_phases.train_spec import register_train_specs

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_assets")]

STEPS, STEPS_PER_PHASE = 12, 2
TP2 = ("--parallelism.tensor_parallel_degree", "2")
PP2_FSDP2 = ("--parallelism.pipeline_parallel_degree", "2",
             "--parallelism.data_parallel_shard_degree", "2")


def _schedule(*overrides: str, config: Path = CYCLE_JOB) -> ResolvedSchedule:
    register_train_specs()
    return load_and_validate(parse_job_config(["--job.config_file", str(config), *overrides]))


def _blocks(names) -> set[str]:
    return {".".join(n.split(".")[:2]) for n in names if n.startswith("layers.")}


def _phase_of_step(step: int) -> int:
    return (step - 1) // STEPS_PER_PHASE


def _assert_follows_the_schedule(run: JobResult, schedule: ResolvedSchedule) -> None:
    records = run.records()
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["phase"] for r in records] == [_phase_of_step(s) for s in range(1, STEPS + 1)]
    for record in records:
        trainable = schedule.trainable_params(record["phase"])
        assert record["trainable_params"] == sum(schedule.param_numels[n] for n in trainable)
        assert len(record["lr"]) == len(schedule.groups(record["phase"]))


def _assert_inactive_params_unchanged(
    run: JobResult, schedule: ResolvedSchedule, initial: Path, scratch: Path
) -> None:
    """Between the checkpoints of steps s-1 and s, exactly the params that train in step s's
    phase change; the embeddings never do."""
    before = model_tensors(initial, scratch / "0.pt")
    for step in range(1, STEPS + 1):
        after = model_tensors(run.dump / "checkpoint" / f"step-{step}", scratch / f"{step}.pt")
        trains = set(schedule.trainable_params(_phase_of_step(step)))
        changed = {name for name, tensor in before.items() if not torch.equal(after[name], tensor)}
        assert changed == trains, (step, sorted(_blocks(changed ^ trains)))
        before = after


def _assert_all_gathers_from_the_lowest_active_block_up(
    run: JobResult, schedule: ResolvedSchedule
) -> None:
    blocks = sorted({b for b in _blocks(schedule.param_numels)})
    for phase, gathered in run.backward_all_gathers().items():
        lowest = min(_blocks(schedule.trainable_params(phase)))
        expected = {b for b in blocks if b >= lowest}
        assert _blocks(gathered) == expected, phase
        assert "tok_embeddings.weight" not in gathered


def test_every_step_trains_its_phases_blocks_and_nothing_else(
    cycle_run: JobResult, initial_weights: Path, tmp_path: Path
):
    schedule = _schedule()
    # Pass 1 (phases 0-3) trains every block once; pass 2 starts over in another order.
    first_pass = [_blocks(schedule.trainable_params(k)) for k in range(4)]
    assert set().union(*first_pass) == {f"layers.{i}" for i in range(4)}
    assert [c.pass_index for c in schedule.cycle] == [0, 0, 0, 0, 1, 1]
    _assert_follows_the_schedule(cycle_run, schedule)
    _assert_inactive_params_unchanged(cycle_run, schedule, initial_weights, tmp_path)
    _assert_all_gathers_from_the_lowest_active_block_up(cycle_run, schedule)
    assert "Phase 0 -> 1 after step 2 (max_transition_step): froze 9 tensors" in cycle_run.output
    # Each rank resolves the schedule once: its input check hands it to the trainer and the
    # TrainSpec.
    assert cycle_run.output.count("Resolved the phase schedule") == 2


def test_optimizer_state_holds_the_active_block_only_as_plan_says(cycle_run: JobResult):
    measured = measured_state_bytes(cycle_run.records())
    assert measured == planned_state_bytes(2, "--job.config_file", str(CYCLE_JOB))
    # One block and the head at a time: the state does not grow as blocks come and go.
    assert len({tuple(b) for b in measured.values()}) == 1
    thawing = planned_state_bytes(2, "--job.config_file", str(REPO / "tests/trainer/tiny_job.toml"))
    assert sum(measured[5]) < sum(thawing[2])


def test_fsdp2_x_tp2_matches_fsdp(
    cycle_run: JobResult, initial_weights: Path, tmp_path: Path
):
    run = run_job(tmp_path / "run", *from_initial(initial_weights), *TP2, config=CYCLE_JOB,
                  nproc=4, record_all_gathers=True)
    assert run.returncode == 0, run.failure()
    schedule = _schedule(*TP2)
    _assert_follows_the_schedule(run, schedule)
    got, expected = run.losses(), cycle_run.losses()
    worst = max(abs(got[s] - expected[s]) / abs(expected[s]) for s in expected)
    assert worst <= 1e-5, f"largest relative loss difference {worst:.2e}"
    assert [r["lr"] for r in run.records()] == [r["lr"] for r in cycle_run.records()]
    assert measured_state_bytes(run.records()) == planned_state_bytes(
        4, "--job.config_file", str(CYCLE_JOB), *TP2
    )
    _assert_inactive_params_unchanged(run, schedule, initial_weights, tmp_path)
    _assert_all_gathers_from_the_lowest_active_block_up(run, schedule)


def test_sigkill_at_a_switch_and_mid_phase_then_the_same_command_continues_bitwise(
    cycle_run: JobResult, initial_weights: Path, tmp_path: Path
):
    # Killed while logging step 3, the job restarts from step 2's checkpoint, the end of phase
    # 0: its first step is the first after a switch. Killed at step 8, it restarts from step 7,
    # mid-phase 3, and crosses into the second pass.
    dump = tmp_path / "run"
    reference = {r["step"]: r for r in cycle_run.records()}
    for kill_after_step, first_step in ((3, 1), (8, 3), (None, 8)):
        run = run_job(dump, *from_initial(initial_weights), config=CYCLE_JOB,
                      kill_after_step=kill_after_step)
        assert (run.returncode == 0) == (kill_after_step is None), run.failure()
        records = run.records()
        assert [r["step"] for r in records] == list(range(first_step, (kill_after_step or 12) + 1))
        for record in records:
            expected = reference[record["step"]]
            for key in ("loss", "lr", "phase", "trainable_params", "optimizer_state_bytes"):
                assert record[key] == expected[key], (record["step"], key)
    saved = json.loads((dump / "run" / "starts.jsonl").read_text().splitlines()[-1])
    assert saved["resumed_from"].endswith("step-7")


def test_pipeline_stages_without_an_active_block_hold_no_state_and_run_no_backward(
    initial_weights: Path, tmp_path: Path
):
    # PP2 x FSDP2: ranks 0-1 hold the embedding and blocks 0-1, ranks 2-3 blocks 2-3 and the
    # head (which always trains).
    run = run_job(tmp_path / "run", *from_initial(initial_weights), *PP2_FSDP2, config=CYCLE_JOB,
                  nproc=4, record_all_gathers=True)
    assert run.returncode == 0, run.failure()
    schedule = _schedule(*PP2_FSDP2)
    _assert_follows_the_schedule(run, schedule)
    measured = measured_state_bytes(run.records())
    assert measured == planned_state_bytes(4, "--job.config_file", str(CYCLE_JOB), *PP2_FSDP2)
    # Under PP torchtitan keeps FSDP params unsharded from forward to backward: no all-gather
    # to look at. What a stage's backward starts from tells whether it ran at all.
    started = run.backward_tensors(microbatches=2)
    for phase in range(schedule.num_phases):
        first_stage_trains = bool(_blocks(schedule.trainable_params(phase)) & {"layers.0",
                                                                              "layers.1"})
        assert (measured[phase][0] > 0) == first_stage_trains, phase
        assert measured[phase][2] > 0
        # No backward below the lowest active stage: the first stage starts from nothing.
        assert (started[phase][0] > 0) == first_stage_trains, (phase, started[phase])
        assert (started[phase][1] > 0) == first_stage_trains, (phase, started[phase])
        assert started[phase][2] > 0 and started[phase][3] > 0
    # A block leaving the first stage frees its state there.
    falls = [k for k in range(1, schedule.num_phases)
             if measured[k][0] < measured[k - 1][0]]
    assert falls


BADAM = REPO / "tests" / "fixtures" / "badam"


def badam_fixture(name: str, embedded_assets: Path) -> dict:
    """A BAdam recording from ``tests/fixtures/badam``, checked to have seen the same batches."""
    import hashlib

    fixture = json.loads((BADAM / name).read_text())
    tokenizer = (embedded_assets / "tokenizer" / "tokenizer.json").read_bytes()
    assert hashlib.sha256(tokenizer).hexdigest() == fixture["tokenizer_sha256"], (
        "another tokenizer than the recording's: the batches differ; rerun "
        "scripts/record_badam_losses.py"
    )
    return fixture


def badam_cycle(order: str, fixture: dict, tmp_path: Path) -> tuple[Path, ResolvedSchedule]:
    """The blocks BAdam trained, as a schedule file for titan_phases, and that schedule.

    ``titan-phases generate`` writes the cycle, with every switch then moved one step earlier:
    BAdam switches after step s when (s + 1) % K == 0, so its first block trains K - 1 steps
    (block_optim.py:225-226). Its 12 steps therefore span 7 blocks (1 + 5 * 2 + 1 steps): the
    cycle is generated for one step more than the job runs, so that step 12 trains the 7th.
    """
    import tomllib

    from titan_phases.cli import main
    from titan_phases.config.toml_writer import dumps

    generated = tmp_path / f"{order}.toml"
    assert main([
        "generate", "--out", str(generated), "--job.config_file", str(BADAM / "job.toml"),
        "--phases.cycle.enable", "--phases.cycle.order", order,
        "--phases.cycle.steps_per_phase", str(fixture["block_optimizer"]["switch_block_every"]),
        "--training.steps", str(len(fixture["steps"]) + 1),
    ]) == 0
    phases = tomllib.loads(generated.read_text())
    for phase in phases.values():
        if "max_transition_step" in phase:
            phase["max_transition_step"] -= 1
    shifted = tmp_path / f"{order}_badam.toml"
    shifted.write_text(dumps(phases))
    return shifted, _schedule("--phases.schedule_file", str(shifted), config=BADAM / "job.toml")


@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_the_cycle_reproduces_badam_1_4_step_by_step(
    order: str, initial_weights: Path, embedded_assets: Path, tmp_path: Path
):
    fixture = badam_fixture(f"{order}.json", embedded_assets)
    # BAdam's defaults, as recorded: no embeddings, no head, no always-active modules.
    assert fixture["block_optimizer"]["active_modules"] == []
    schedule_file, schedule = badam_cycle(order, fixture, tmp_path)
    run = run_job(tmp_path / "run", *from_initial(initial_weights),
                  "--phases.schedule_file", str(schedule_file),
                  config=BADAM / "job.toml", nproc=1)
    assert run.returncode == 0, run.failure()
    records = {r["step"]: r for r in run.records()}
    assert sorted(records) == [s["step"] for s in fixture["steps"]]
    worst = 0.0
    for expected in fixture["steps"]:
        got = records[expected["step"]]
        worst = max(worst, abs(got["loss"] - expected["loss"]) / abs(expected["loss"]))
        trained = _blocks(schedule.trainable_params(got["phase"]))
        assert trained == {expected["active_block"].rstrip(".")}, expected["step"]
        # One group trains (the active block's); BAdam's second group is empty.
        assert got["lr"] == [expected["param_groups"][0]["lr"]], expected["step"]
        assert got["optimizer_state_bytes"] == [expected["optimizer_state_bytes"]]
    assert worst <= 1e-6, f"largest relative loss difference {worst:.2e}"
