"""Phases on other layouts against 1-D FSDP with the same data-parallel degree: FSDP2 x TP2
(4 gloo ranks, 2 data-parallel) against FSDP on 2 ranks, HSDP 2 x 2 against FSDP on 4, TP2
alone (2 ranks, 1 data-parallel) against one rank, and activation checkpointing and gradient
accumulation on 2 ranks against FSDP on 2. Each data-parallel rank reads its own shard of the
corpus, so only equal degrees see the same batches. Checkpoints of phase 1 resume across
layouts: FSDP2 x TP2 -> FSDP 2, FSDP 2 -> FSDP2 x TP2, HSDP 2 x 2 -> FSDP 4. bf16 mixed
precision on FSDP 2 goes through every transition, close to fp32.

All runs start from the same initial weights (a DCP checkpoint written in this process):
random initialisation of sharded DTensors on CPU depends on the layout, loading does not.
FSDP on 2 ranks is the trainer tests' shared reference run (``uninterrupted``), one rank the
shared single-rank reference (``one_rank``, which the pipeline tests use too: without clipping
or AdamW eps and with a local batch of 4, so TP2 alone runs with the same options).

Tolerance: TP splits matmuls and HSDP adds a replicate all-reduce, so reductions run in
another order than on 1-D FSDP. In fp32 over 12 steps that moved losses by at most 1.4e-7
relative (FSDP2 x TP2, TP2 alone, and the resume of FSDP on FSDP2 x TP2), 7e-8 (HSDP, and the
resumes on 1-D FSDP) and 1.2e-7 (full activation checkpointing with gradient accumulation;
selective op checkpointing alone was bitwise equal) when this was written;
1e-5 leaves a wide margin for other machines' kernels and still catches a wrong phase (a
missing or extra param group moves the loss by percents within a step or two).
"""

from __future__ import annotations

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
from tests.trainer.tiny_checks import (
    assert_close_losses,
    assert_frozen_until_their_phase,
    BATCH_4,
    SCALE_FREE,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_assets")]

RTOL = 1e-5
# bf16 mixed precision against fp32 on the same layout: 4.4e-4 relative when this was written.
BF16_RTOL = 5e-3
FSDP2_TP2 = ("--parallelism.tensor_parallel_degree", "2")
# Against the single-rank reference, with its options.
TP2 = ("--parallelism.tensor_parallel_degree", "2", "--parallelism.data_parallel_shard_degree",
       "1", *SCALE_FREE, *BATCH_4)
HSDP_2X2 = ("--parallelism.data_parallel_replicate_degree", "2",
            "--parallelism.data_parallel_shard_degree", "2")
FSDP_4 = ("--parallelism.data_parallel_shard_degree", "4")
# Phase -> what backward all-gathers besides the head: the trainable blocks (resharded after
# forward) and the embedding once it trains, never a frozen block or embedding below them.
GATHERED = {0: {"layers.3"}, 1: {"layers.2", "layers.3"},
            2: {"layers.0", "layers.1", "layers.2", "layers.3", "tok_embeddings.weight"}}
HEAD = {"output.weight", "norm.weight"}


def _run(initial: Path, dump: Path, *layout: str, nproc: int) -> JobResult:
    result = run_job(
        dump, *from_initial(initial), *layout, nproc=nproc, record_all_gathers=True,
    )
    assert result.returncode == 0, result.failure()
    return result


@pytest.fixture(scope="module")
def fsdp4(initial_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> JobResult:
    return _run(initial_weights, tmp_path_factory.mktemp("fsdp4") / "run", *FSDP_4, nproc=4)


@pytest.fixture(scope="module")
def fsdp2_tp2(initial_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> JobResult:
    return _run(initial_weights, tmp_path_factory.mktemp("tp") / "run", *FSDP2_TP2, nproc=4)


@pytest.fixture(scope="module")
def hsdp(initial_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> JobResult:
    return _run(initial_weights, tmp_path_factory.mktemp("hsdp") / "run", *HSDP_2X2, nproc=4)


def _assert_nothing_below_the_trainable_is_gathered(run: JobResult, microbatches: int = 1):
    gathered = run.backward_all_gathers(microbatches)
    phases = {r["phase"] for r in run.records()}
    assert {phase: names - HEAD for phase, names in gathered.items()} == {
        phase: GATHERED[phase] for phase in phases
    }


def test_fsdp_never_all_gathers_a_frozen_block_below_the_trainable_ones(
    uninterrupted: JobResult,
):
    _assert_nothing_below_the_trainable_is_gathered(uninterrupted)


@pytest.mark.parametrize("layout, reference, nproc", [
    (FSDP2_TP2, "uninterrupted", 4), (HSDP_2X2, "fsdp4", 4), (TP2, "one_rank", 2),
], ids=["fsdp2_tp2", "hsdp_2x2", "tp2"])
def test_a_phased_job_on_another_layout_matches_fsdp(
    layout: tuple[str, ...], reference: str, nproc: int, request: pytest.FixtureRequest,
    initial_weights: Path, tmp_path: Path,
):
    fixtures = {FSDP2_TP2: "fsdp2_tp2", HSDP_2X2: "hsdp"}
    if layout in fixtures:
        run = request.getfixturevalue(fixtures[layout])
    else:
        run = _run(initial_weights, tmp_path / "run", *layout, nproc=nproc)
    reference = request.getfixturevalue(reference)
    records = run.records()
    assert [r["phase"] for r in records] == [0] * 4 + [1] * 4 + [2] * 4
    assert [r["lr"] for r in records] == [r["lr"] for r in reference.records()]
    assert [r["trainable_params"] for r in records] == [
        r["trainable_params"] for r in reference.records()
    ]
    assert_close_losses(run, reference, RTOL)
    assert_frozen_until_their_phase(run, initial_weights, tmp_path)
    # Optimizer state for trainable params only, every rank's bytes as the layout predicts.
    assert measured_state_bytes(records) == planned_state_bytes(
        nproc, "--job.config_file", str(TINY_JOB), *layout
    )
    if layout == TP2:
        # No data parallelism, so no FSDP module: nothing is ever all-gathered.
        assert run.backward_all_gathers() == {}
    else:
        _assert_nothing_below_the_trainable_is_gathered(run)


@pytest.mark.parametrize("options, microbatches", [
    # Two microbatches of 1 per rank: the same samples as the reference's one batch of 2.
    (("--activation_checkpoint.mode", "full",
      "--training.local_batch_size", "1", "--training.global_batch_size", "4"), 2),
    (("--activation_checkpoint.mode", "selective",
      "--activation_checkpoint.selective_ac_option", "op"), 1),
], ids=["ac_full_with_gradient_accumulation", "ac_selective_op"])
def test_activation_checkpointing_and_gradient_accumulation_under_phases(
    options: tuple[str, ...], microbatches: int, uninterrupted: JobResult, initial_weights: Path,
    tmp_path: Path,
):
    run = _run(initial_weights, tmp_path / "run", *options, nproc=2)
    records = run.records()
    assert [r["phase"] for r in records] == [0] * 4 + [1] * 4 + [2] * 4
    assert [r["lr"] for r in records] == [r["lr"] for r in uninterrupted.records()]
    assert_close_losses(run, uninterrupted, RTOL)
    assert_frozen_until_their_phase(run, initial_weights, tmp_path)
    assert measured_state_bytes(records) == planned_state_bytes(
        2, "--job.config_file", str(TINY_JOB), *options
    )
    _assert_nothing_below_the_trainable_is_gathered(run, microbatches)


@pytest.mark.parametrize("source, target, nproc, reference", [
    ("fsdp2_tp2", (), 2, "uninterrupted"),
    ("uninterrupted", FSDP2_TP2, 4, "uninterrupted"),
    ("hsdp", FSDP_4, 4, "fsdp4"),
], ids=["fsdp2_tp2_to_fsdp", "fsdp_to_fsdp2_tp2", "hsdp_to_fsdp"])
def test_a_phase1_checkpoint_resumes_on_another_layout(
    source: str, target: tuple[str, ...], nproc: int, reference: str,
    request: pytest.FixtureRequest, tmp_path: Path,
):
    import shutil

    saved, uninterrupted = request.getfixturevalue(source), request.getfixturevalue(reference)
    dump = tmp_path / "run"
    shutil.copytree(saved.dump / "checkpoint" / "step-6", dump / "checkpoint" / "step-6")
    resumed = run_job(dump, *target, nproc=nproc, record_all_gathers=True)
    assert resumed.returncode == 0, resumed.failure()
    records = resumed.records()
    expected = {r["step"]: r for r in uninterrupted.records()}
    # The rest of phase 1, its transition, then phase 2.
    assert [r["step"] for r in records] == list(range(7, 13))
    assert [r["phase"] for r in records] == [1, 1, 2, 2, 2, 2]
    assert all(r["lr"] == expected[r["step"]]["lr"] for r in records)
    assert_close_losses(resumed, uninterrupted, RTOL, first_step=7)
    planned = planned_state_bytes(nproc, "--job.config_file", str(TINY_JOB), *target)
    assert measured_state_bytes(records) == {1: planned[1], 2: planned[2]}
    _assert_nothing_below_the_trainable_is_gathered(resumed)


def test_bf16_mixed_precision_on_fsdp_goes_through_every_transition(
    uninterrupted: JobResult, initial_weights: Path, tmp_path: Path
):
    # FSDP2 picks each param group's reduce dtype at lazy init from what trains then: blocks
    # that thaw later need refresh_fsdp_mixed_precision, or their first backward fails. Two
    # FSDP ranks are all that takes. bf16 params round every matmul input to 8 mantissa bits,
    # so losses are only close to fp32's.
    bf16 = ("--training.mixed_precision_param", "bfloat16")
    run = _run(initial_weights, tmp_path / "run", *bf16, nproc=2)
    records = run.records()
    assert [r["phase"] for r in records] == [0] * 4 + [1] * 4 + [2] * 4
    assert [r["lr"] for r in records] == [r["lr"] for r in uninterrupted.records()]
    assert_close_losses(run, uninterrupted, BF16_RTOL)
    assert_frozen_until_their_phase(run, initial_weights, tmp_path)
    assert measured_state_bytes(records) == planned_state_bytes(
        2, "--job.config_file", str(TINY_JOB), *bf16
    )
    _assert_nothing_below_the_trainable_is_gathered(run)
