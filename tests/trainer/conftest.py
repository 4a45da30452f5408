"""What the trainer tests share: initial weights for runs on any layout, and the reference
runs they are compared with, each launched once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.jobs import CYCLE_JOB, from_initial, JobResult, run_job
from tests.trainer.tiny_checks import BATCH_4, SCALE_FREE


@pytest.fixture(scope="session")
def initial_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's initial weights as a DCP checkpoint, for ``checkpoint.initial_load_path``.

    Runs compared across layouts start from it: random initialisation of sharded DTensors on CPU
    depends on the layout, and each pipeline rank seeds itself; loading does not.
    """
    import torch
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


@pytest.fixture(scope="session")
def uninterrupted(
    initial_weights: Path, tmp_path_factory: pytest.TempPathFactory, embedded_assets: Path
) -> JobResult:
    """The tiny job (``tiny_job.toml``) on 2 ranks (1-D FSDP) from the initial weights, run once
    from start to end, never stopped: the reference of the resume, layout and compile tests,
    with its backward all-gathers recorded."""
    result = run_job(tmp_path_factory.mktemp("reference") / "run", *from_initial(initial_weights),
                     record_all_gathers=True)
    assert result.returncode == 0, result.failure()
    return result


@pytest.fixture(scope="session")
def one_rank(
    initial_weights: Path, tmp_path_factory: pytest.TempPathFactory, embedded_assets: Path
) -> JobResult:
    """The tiny job on one rank from the initial weights, without clipping or AdamW eps and with
    a local batch of 4 (``tiny_checks.SCALE_FREE``, ``BATCH_4``): the reference of tensor
    parallelism alone and of pipeline parallelism, which see the same batches."""
    result = run_job(tmp_path_factory.mktemp("one_rank") / "run", *from_initial(initial_weights),
                     *SCALE_FREE, *BATCH_4, nproc=1)
    assert result.returncode == 0, result.failure()
    return result


@pytest.fixture(scope="session")
def cycle_run(
    initial_weights: Path, tmp_path_factory: pytest.TempPathFactory, embedded_assets: Path
) -> JobResult:
    """The block-cyclic job (``cycle_job.toml``) on 2 ranks (1-D FSDP) from the initial weights,
    never stopped, with its backward all-gathers recorded: the reference of the block-cyclic
    layouts and kills, and the fp32 reference of bf16 storage with fp32 masters."""
    result = run_job(tmp_path_factory.mktemp("cycle") / "run", *from_initial(initial_weights),
                     config=CYCLE_JOB, record_all_gathers=True)
    assert result.returncode == 0, result.failure()
    return result
