"""Checks of a run of the tiny job (``tiny_job.toml``) against its schedule and a reference run,
shared by the layout and pipeline tests."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.trainer.jobs import JobResult, model_tensors

THAWED_IN = {"output.weight": 0, "norm.weight": 0, "layers.3": 0, "layers.2": 1}
# The job checkpoints every other step: at the ends of phase 0 (step 4) and phase 1 (step 8),
# which assert_frozen_until_their_phase reads, and at step 6 to resume. A test that kills or
# stops a job at a chosen step needs the step before it saved.
EVERY_STEP = ("--checkpoint.interval", "1")
# The single-rank reference (conftest.one_rank) and the runs compared with it: no gradient
# clipping and no AdamW eps, because pipeline parallelism backpropagates loss sums (see
# test_pipeline.py), and a local batch of 4, which PP=2 splits into 4 microbatches and TP2
# alone (one data-parallel rank) reads as one rank does.
SCALE_FREE = ("--training.max_norm", "1e9", "--optimizer.eps", "1e-30")
BATCH_4 = ("--training.local_batch_size", "4", "--validation.local_batch_size", "4")


def thawed_in(name: str) -> int:
    """The tiny job's schedule: phase 0 head + block 3, phase 1 block 2, phase 2 the rest."""
    block = ".".join(name.split(".")[:2])
    return THAWED_IN.get(name, THAWED_IN.get(block, 2))


def assert_close_losses(
    run: JobResult, reference: JobResult, rtol: float, first_step: int = 1
) -> float:
    """``run`` logged steps ``first_step``..12, each loss within ``rtol`` of the reference's
    loss at that step; returns the largest relative difference."""
    got, expected = run.losses(), reference.losses()
    assert sorted(got) == list(range(first_step, 13))
    assert set(got) <= set(expected), sorted(expected)
    worst = max(abs(got[s] - expected[s]) / abs(expected[s]) for s in got)
    assert worst <= rtol, f"largest relative loss difference {worst:.2e}"
    return worst


def assert_frozen_until_their_phase(run: JobResult, initial: Path, scratch: Path) -> None:
    """Every param is bitwise unchanged at the end of each phase before its own, and changed
    at the end of its phase and after (checkpoints of steps 4, 8 and 12)."""
    before = model_tensors(initial, scratch / "initial.pt")
    for phase, step in enumerate((4, 8, 12)):
        after = model_tensors(run.dump / "checkpoint" / f"step-{step}", scratch / f"{step}.pt")
        for name, tensor in before.items():
            assert (not torch.equal(after[name], tensor)) == (thawed_in(name) <= phase), (
                name, step,
            )
