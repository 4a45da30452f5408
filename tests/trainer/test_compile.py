"""A transition under ``[compile] enable = true`` trains what an eager run trains.

torchtitan compiles every TransformerBlock and the loss. The tiny job's phase 0 trains block 3
(and the head); phase 1 thaws block 2 after step 4. Compiled numerics differ slightly from
eager ones, so the compiled run is compared with an eager run of the same job (itself checked
against single-process references elsewhere) by loss and by the direction of each update.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.jobs import model_tensors, run_job

pytestmark = pytest.mark.usefixtures("embedded_assets")

STEPS = ("--training.steps", "6")


def _block(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "layers" else None


def test_block_thawed_under_compile_trains_like_eager(tmp_path: Path):
    eager = run_job(tmp_path / "eager", *STEPS)
    compiled = run_job(tmp_path / "compiled", *STEPS, "--compile.enable", timeout=600)
    assert eager.returncode == 0, eager.failure()
    assert compiled.returncode == 0, compiled.failure()
    assert "Compiling each TransformerBlock" in compiled.output
    assert "Phase 0 -> 1 after step 4" in compiled.output
    assert list(compiled.losses()) == [1, 2, 3, 4, 5, 6]
    for step, loss in eager.losses().items():
        assert compiled.losses()[step] == pytest.approx(loss, rel=1e-3), step

    def weights(run, step):
        return model_tensors(run.dump / "checkpoint" / f"step-{step}", tmp_path / "scratch.pt")

    first, before, after = (weights(compiled, step) for step in (1, 4, 6))
    eager_before, eager_after = weights(eager, 4), weights(eager, 6)
    thawed = [name for name in first if _block(name) == 2]
    assert len(thawed) == 9
    for name in first:
        if _block(name) in (0, 1):
            assert torch.equal(first[name], after[name]), name
    for name in thawed:
        assert torch.equal(first[name], before[name]), name
        update = (after[name] - before[name]).flatten()
        eager_update = (eager_after[name] - eager_before[name]).flatten()
        assert update.abs().max() > 0, name
        cosine = torch.nn.functional.cosine_similarity(update, eager_update, dim=0)
        assert cosine > 0.99, (name, cosine.item())
