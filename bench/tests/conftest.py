"""Synthetic benchmark runs shared by the summary and report tests."""

from __future__ import annotations

from typing import Any

import pytest

from bench.analysis import ModelFacts, PhaseExpectation, StepRecord
from bench.jobs import JobOutput, thaw_rebuild_seconds
from bench.summary import ModelRuns, summarize
from titan_phases.components.metrics_file import Metrics

FACTS = ModelFacts(
    total_params=100, n_layers=2, dim=8,
    phases=(
        PhaseExpectation(("head",), trainable=40, trainable_tensors=1, ideal_ratio=0.5,
                         state_bytes=(164, 164)),
        PhaseExpectation(("body",), trainable=100, trainable_tensors=2, ideal_ratio=1.0,
                         state_bytes=(408, 408)),
    ),
)
# metrics.jsonl of a phased job: phase 1 entered 20 ms after step 4's train record.
JSONL = [
    {"type": "run_start", "time": 0.0, "pid": 1},
    {"type": "train", "step": 4, "loss": 1.0, "phase": 0, "time": 4.0},
    {"type": "transition", "step": 4, "from_phase": 0, "to_phase": 1, "reason": "x",
     "time": 4.02},
]


def _stock(step_s: float) -> JobOutput:
    return JobOutput([StepRecord(s, step_s, 1.0) for s in range(1, 7)], {}, 10.0)


def _phased(scale: float) -> JobOutput:
    times = [9.0, 0.6, 0.5, 0.5, 2.2, 1.1, 1.0, 1.0]
    records = [
        StepRecord(s, t * scale, 1.0 + s / 10, phase=int(s > 4), metrics_s=0.002,
                   state_bytes=(164, 164) if s <= 4 else (408, 408),
                   trainable=40 if s <= 4 else 100)
        for s, t in enumerate(times, start=1)
    ]
    return JobOutput(records, thaw_rebuild_seconds(Metrics.from_records(JSONL)), 10.0)


@pytest.fixture
def model_summary() -> dict[str, Any]:
    """Two repeats of a 2-phase model; the second repeat runs 2x (phased 2.1x) slower."""
    runs = ModelRuns(2, "tiny", "llama3", "llama3_phases", FACTS,
                     stock=[_stock(1.0), _stock(2.0)], phased=[_phased(1.0), _phased(2.1)],
                     all_params=[_stock(1.005), _stock(2.0)])
    return summarize(runs, skip=2)
