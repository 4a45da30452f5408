"""Phases on other layouts against 1-D FSDP with the same data-parallel degree: FSDP2 x TP2
(4 gloo ranks, 2 data-parallel) against FSDP on 2 ranks, HSDP 2 x 2 against FSDP on 4, and
activation checkpointing and gradient accumulation on 2 ranks against FSDP on 2. Each
data-parallel rank reads its own shard of the corpus, so only equal degrees see the same
batches.

All runs start from the same initial weights (a DCP checkpoint written in this process):
random initialisation of sharded DTensors on CPU depends on the layout, loading does not.

Tolerance: TP splits matmuls and HSDP adds a replicate all-reduce, so reductions run in
another order than on 1-D FSDP. In fp32 over 12 steps that moved losses by at most 1.4e-7
relative (FSDP2 x TP2), 7e-8 (HSDP, and the resume on 1-D FSDP) and 1.2e-7 (full activation
checkpointing with gradient accumulation; selective op checkpointing alone was bitwise equal)
when this was written;
1e-5 leaves a wide margin for other machines' kernels and still catches a wrong phase (a
missing or extra param group moves the loss by percents within a step or two).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.jobs import (
    JobResult,
    measured_state_bytes,
    model_tensors,
    planned_state_bytes,
    run_job,
    TINY_JOB,
)

pytestmark = pytest.mark.usefixtures("embedded_assets")

RTOL = 1e-5
# Checkpoints at the end of phase 0 (step 4) and phase 1 (step 8), and at step 6 to resume.
CHECKPOINTS = ("--checkpoint.interval", "2")
FSDP2_TP2 = ("--parallelism.tensor_parallel_degree", "2")
HSDP_2X2 = ("--parallelism.data_parallel_replicate_degree", "2",
            "--parallelism.data_parallel_shard_degree", "2")
THAWED_IN = {"output.weight": 0, "norm.weight": 0, "layers.3": 0, "layers.2": 1}


def _thawed_in(name: str) -> int:
    """The tiny job's schedule: phase 0 head + block 3, phase 1 block 2, phase 2 the rest."""
    block = ".".join(name.split(".")[:2])
    return THAWED_IN.get(name, THAWED_IN.get(block, 2))


@pytest.fixture(scope="module")
def initial_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch.distributed.checkpoint as dcp
    from torchtitan.protocols.train_spec import get_train_spec

    import tests.trainer.tiny_spec  # noqa: F401  (registers llama3_phases_test)

    spec = get_train_spec("llama3_phases_test")
    torch.manual_seed(0)
    model = spec.model_cls(spec.model_args["tiny"])
    with torch.no_grad():
        model.init_weights()
    path = tmp_path_factory.mktemp("tiny_initial") / "step-0"
    dcp.save(model.state_dict(), checkpoint_id=str(path))
    return path


def _run(initial: Path, dump: Path, *layout: str, nproc: int) -> JobResult:
    result = run_job(
        dump, "--checkpoint.initial_load_path", str(initial),
        *CHECKPOINTS, *layout, nproc=nproc,
    )
    assert result.returncode == 0, result.failure()
    return result


@pytest.fixture(scope="module")
def fsdp(initial_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> JobResult:
    return _run(initial_weights, tmp_path_factory.mktemp("fsdp") / "run", nproc=2)


@pytest.fixture(scope="module")
def fsdp4(initial_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> JobResult:
    return _run(initial_weights, tmp_path_factory.mktemp("fsdp4") / "run",
                "--parallelism.data_parallel_shard_degree", "4", nproc=4)


@pytest.fixture(scope="module")
def fsdp2_tp2(initial_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> JobResult:
    return _run(initial_weights, tmp_path_factory.mktemp("tp") / "run", *FSDP2_TP2, nproc=4)


def _assert_close_losses(run: JobResult, reference: JobResult) -> None:
    got, expected = run.losses(), reference.losses()
    assert sorted(got) == sorted(expected) == list(range(1, 13))
    worst = max(abs(got[s] - expected[s]) / abs(expected[s]) for s in expected)
    assert worst <= RTOL, f"largest relative loss difference {worst:.2e}"


def _assert_frozen_until_their_phase(run: JobResult, initial: Path, scratch: Path) -> None:
    before = model_tensors(initial, scratch / "initial.pt")
    # Steps 4 and 8 end phases 0 and 1; step 12 is the last step of phase 2.
    for phase, step in enumerate((4, 8, 12)):
        after = model_tensors(run.dump / "checkpoint" / f"step-{step}", scratch / f"{step}.pt")
        for name, tensor in before.items():
            assert (not torch.equal(after[name], tensor)) == (_thawed_in(name) <= phase), (
                name, step,
            )


@pytest.mark.parametrize("layout", ["fsdp2_tp2", "hsdp_2x2"])
def test_a_phased_job_on_a_2d_mesh_matches_1d_fsdp(
    layout: str, request: pytest.FixtureRequest, initial_weights: Path, tmp_path: Path,
):
    if layout == "fsdp2_tp2":
        run, degrees = request.getfixturevalue("fsdp2_tp2"), FSDP2_TP2
        reference = request.getfixturevalue("fsdp")
    else:
        run, degrees = _run(initial_weights, tmp_path / "run", *HSDP_2X2, nproc=4), HSDP_2X2
        reference = request.getfixturevalue("fsdp4")
    records = run.records()
    assert [r["phase"] for r in records] == [0] * 4 + [1] * 4 + [2] * 4
    assert [r["lr"] for r in records] == [r["lr"] for r in reference.records()]
    assert [r["trainable_params"] for r in records] == [
        r["trainable_params"] for r in reference.records()
    ]
    _assert_close_losses(run, reference)
    _assert_frozen_until_their_phase(run, initial_weights, tmp_path)
    # Optimizer state for trainable params only, every rank's bytes as the layout predicts.
    assert measured_state_bytes(records) == planned_state_bytes(
        4, "--job.config_file", str(TINY_JOB), *degrees
    )


@pytest.mark.parametrize("options", [
    # Two microbatches of 1 per rank: the same samples as the reference's one batch of 2.
    ("--activation_checkpoint.mode", "full",
     "--training.local_batch_size", "1", "--training.global_batch_size", "4"),
    ("--activation_checkpoint.mode", "selective", "--activation_checkpoint.selective_ac_option",
     "op"),
], ids=["ac_full_with_gradient_accumulation", "ac_selective_op"])
def test_activation_checkpointing_and_gradient_accumulation_under_phases(
    options: tuple[str, ...], fsdp: JobResult, initial_weights: Path, tmp_path: Path
):
    run = _run(initial_weights, tmp_path / "run", *options, nproc=2)
    records = run.records()
    assert [r["phase"] for r in records] == [0] * 4 + [1] * 4 + [2] * 4
    assert [r["lr"] for r in records] == [r["lr"] for r in fsdp.records()]
    _assert_close_losses(run, fsdp)
    _assert_frozen_until_their_phase(run, initial_weights, tmp_path)
    assert measured_state_bytes(records) == planned_state_bytes(
        2, "--job.config_file", str(TINY_JOB), *options
    )


def test_a_phase1_checkpoint_of_fsdp2_tp2_resumes_on_1d_fsdp(
    fsdp: JobResult, fsdp2_tp2: JobResult, tmp_path: Path
):
    import shutil

    dump = tmp_path / "run"
    shutil.copytree(fsdp2_tp2.dump / "checkpoint" / "step-6", dump / "checkpoint" / "step-6")
    resumed = run_job(dump, *CHECKPOINTS, nproc=2)
    assert resumed.returncode == 0, resumed.failure()
    records = resumed.records()
    reference = {r["step"]: r for r in fsdp.records()}
    assert [r["step"] for r in records] == list(range(7, 13))
    assert [r["phase"] for r in records] == [1, 1, 2, 2, 2, 2]
    assert all(r["lr"] == reference[r["step"]]["lr"] for r in records)
    worst = max(abs(r["loss"] - reference[r["step"]]["loss"]) / reference[r["step"]]["loss"]
                for r in records)
    assert worst <= RTOL, f"largest relative loss difference {worst:.2e}"
