"""Transition timings from a job's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.jobs import job_metrics, thaw_rebuild_seconds
from titan_phases.components.metrics_file import Metrics

JSONL = [
    {"type": "run_start", "time": 1795317790.0, "pid": 7},
    {"type": "train", "step": 8, "loss": 8.00189, "phase": 0, "time": 1795317794.153},
    {"type": "transition", "step": 8, "from_phase": 0, "to_phase": 1,
     "reason": "max_transition_step", "time": 1795317794.157},
    {"type": "train", "step": 9, "loss": 8.02265, "phase": 1, "time": 1795317795.403},
    {"type": "train", "step": 16, "loss": 7.86764, "phase": 1, "time": 1795317802.125},
    {"type": "transition", "step": 16, "from_phase": 1, "to_phase": 2,
     "reason": "max_transition_step", "time": 1795317802.200},
]


def _metrics(records: list[dict]) -> Metrics:
    return Metrics.from_records(records)


def test_thaw_rebuild_seconds() -> None:
    seconds = thaw_rebuild_seconds(_metrics(JSONL))
    assert seconds.keys() == {1, 2}
    assert seconds[1] == pytest.approx(0.004, abs=1e-6)
    assert seconds[2] == pytest.approx(0.075, abs=1e-6)


def test_stock_job_has_no_transitions() -> None:
    assert thaw_rebuild_seconds(_metrics(JSONL[:2])) == {}
    assert thaw_rebuild_seconds(_metrics([])) == {}


def test_transition_without_its_step_record() -> None:
    with pytest.raises(ValueError, match="after step 16"):
        thaw_rebuild_seconds(_metrics(JSONL[-1:]))


def test_job_metrics(tmp_path: Path) -> None:
    assert job_metrics(tmp_path) == Metrics()  # stock jobs write no metrics.jsonl
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in JSONL))
    assert list(job_metrics(tmp_path).records) == JSONL
