"""A transition under ``[compile] enable = true`` trains what an eager run trains.

torchtitan compiles every TransformerBlock and the loss. The tiny job's phase 0 trains block 3
(and the head); phase 1 thaws block 2 after step 4, phase 2 blocks 0 and 1 after step 8.
Compiled numerics differ slightly from eager ones, so the compiled run is compared with the
eager reference run of the same job from the same initial weights (itself checked against
single-process references elsewhere) by loss and by the direction of each update.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.jobs import from_initial, JobResult, model_tensors, run_job

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_assets")]

def _block(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "layers" else None


def test_blocks_thawed_under_compile_train_like_eager(
    uninterrupted: JobResult, initial_weights: Path, tmp_path: Path
):
    eager = uninterrupted
    compiled = run_job(tmp_path / "compiled", *from_initial(initial_weights), "--compile.enable",
                       timeout=600)
    assert compiled.returncode == 0, compiled.failure()
    assert "Compiling each TransformerBlock" in compiled.output
    assert "Phase 0 -> 1 after step 4" in compiled.output
    assert "Phase 1 -> 2 after step 8" in compiled.output
    assert list(compiled.losses()) == list(range(1, 13))
    for step, loss in eager.losses().items():
        assert compiled.losses()[step] == pytest.approx(loss, rel=1e-3), step

    def weights(run, step):
        return model_tensors(run.dump / "checkpoint" / f"step-{step}", tmp_path / "scratch.pt")

    compiled_at = {step: weights(compiled, step) for step in (4, 8, 12)}
    eager_at = {step: weights(eager, step) for step in (4, 8, 12)}
    first = model_tensors(initial_weights, tmp_path / "initial.pt")
    # Block 2 thaws after step 4, blocks 0 and 1 after step 8.
    thawed_at = {2: 4, 1: 8, 0: 8}
    assert sum(_block(name) in thawed_at for name in first) == 27
    for name in first:
        block = _block(name)
        if block not in thawed_at:
            continue
        before = thawed_at[block]
        assert torch.equal(first[name], compiled_at[before][name]), name
        update = (compiled_at[12][name] - compiled_at[before][name]).flatten()
        eager_update = (eager_at[12][name] - eager_at[before][name]).flatten()
        assert update.abs().max() > 0, name
        cosine = torch.nn.functional.cosine_similarity(update, eager_update, dim=0)
        assert cosine > 0.99, (name, cosine.item())
