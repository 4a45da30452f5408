"""What the trainer tests share: the reference run of the tiny job, and initial weights for
runs on other layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.jobs import JobResult, run_job


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, embedded_assets: Path) -> JobResult:
    """The tiny job (``tiny_job.toml``) run once from start to end, never stopped."""
    result = run_job(tmp_path_factory.mktemp("reference") / "run")
    assert result.returncode == 0, result.failure()
    return result


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
