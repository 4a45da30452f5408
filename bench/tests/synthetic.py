"""Synthetic runs of the cyclic row, shared by its summary and report tests."""

from __future__ import annotations

from typing import Any

from bench.analysis import HELD_KINDS, ModelFacts, PhaseExpectation, StepRecord
from bench.cyclic import summarize
from bench.jobs import JobOutput

# Two phases (block 1, then block 0), 2 ranks; bytes per rank of params, masters, grads, state.
FP32_HELD = dict(zip(HELD_KINDS, [(400, 400), (0, 0), (100, 100), (204, 204)]))
BF16_HELD = dict(zip(HELD_KINDS, [(200, 200), (100, 100), (50, 50), (204, 204)]))


def cyclic_facts(held: dict[str, tuple[int, ...]]) -> ModelFacts:
    """Plan's view: phase 0 trains block 1 (needs what plan says), phase 1 block 0 under the
    frozen block 1 (plan charges a full step, the phase needs 0.8 of one)."""
    phases = tuple(
        PhaseExpectation((f"layers.{block}.w",), trainable=60, trainable_tensors=3,
                         ideal_ratio=plan, state_bytes=held["optimizer_state_bytes"],
                         plan_ratio=plan, needed_ratio=needed, held=held, blocks=(block,))
        for block, plan, needed in ((1, 0.5, 0.5), (0, 1.0, 0.8))
    )
    return ModelFacts(total_params=100, n_layers=2, dim=8, phases=phases)


def cyclic_job(scale: float, held: dict[str, tuple[int, ...]], rss: float = 1.0,
               switch_s: float = 0.01) -> JobOutput:
    """A cyclic job's run: phase 0 steady at 0.5 s, phase 1 at 1.0 s with a first step of
    1.5 s, both times ``scale``; each rank's peak RSS from ``rss``."""
    times = [3.0, 0.6, 0.5, 0.5, 1.5, 1.1, 1.0, 1.0]
    records = [
        StepRecord(s, t * scale, rss, phase=int(s > 4),
                   state_bytes=held.get("optimizer_state_bytes", ()),
                   trainable=60, held=held, rank_rss_gib=(rss + s / 100, rss + 0.5))
        for s, t in enumerate(times, start=1)
    ]
    return JobOutput(records, {1: switch_s}, 20.0)


def stock_job(step_s: float) -> JobOutput:
    records = [StepRecord(s, step_s, 2.0, rank_rss_gib=(2.0, 2.1)) for s in range(1, 7)]
    return JobOutput(records, {}, 10.0)


def cyclic_row() -> dict[str, Any]:
    """Two repeats of the fp32 and bf16_storage jobs; the second repeat runs everything 2x
    slower, its bf16 job 2.2x."""
    variants = {"fp32": [cyclic_job(1.0, FP32_HELD), cyclic_job(2.0, FP32_HELD, switch_s=0.03)],
                "bf16_storage": [cyclic_job(1.0, BF16_HELD, rss=0.9),
                                 cyclic_job(2.2, BF16_HELD)]}
    facts = {"fp32": cyclic_facts(FP32_HELD), "bf16_storage": cyclic_facts(BF16_HELD)}
    return summarize([stock_job(1.25), stock_job(2.5)], variants, facts, skip=2)
