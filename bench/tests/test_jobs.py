"""Transition timings from a job's metrics.jsonl; per-rank peak RSS from its console log."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench.jobs import command, Job, job_metrics, rank_peak_rss, thaw_rebuild_seconds
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


# torchtitan's step lines as torchrun --tee prefixes them (color printing off), among others.
RANK_LOG = """\
[default0]:[titan] 2026-12-07 19:19:53,108 - titan_phases.trainer - INFO - Phase schedule: 6
[default1]:[titan] 2026-12-07 19:19:53,562 - root - INFO - step:  1  loss:  8.16050  \
grad_norm:  1.4974  memory:  0.66GiB(2.79%)  tps: 2,266  tflops: 0.04  mfu: 45.82%
[default0]:[titan] 2026-12-07 19:19:53,562 - root - INFO - step:  1  loss:  8.16050  \
grad_norm:  1.4974  memory:  0.71GiB(2.99%)  tps: 2,266  tflops: 0.04  mfu: 45.82%
[default0]:[titan] 2026-12-07 19:19:53,901 - root - INFO - step: 12  loss:  8.14068  \
grad_norm:  1.5112  memory:  0.68GiB(2.88%)  tps: 3,023  tflops: 0.06  mfu: 61.12%
[default1]:[titan] 2026-12-07 19:19:53,901 - root - INFO - step: 12  loss:  8.14068  \
grad_norm:  1.5112  memory:  1.02GiB(4.31%)  tps: 3,023  tflops: 0.06  mfu: 61.12%
"""


def test_rank_peak_rss() -> None:
    assert rank_peak_rss(RANK_LOG, 2) == {1: (0.71, 0.66), 12: (0.68, 1.02)}


def test_rank_peak_rss_needs_every_rank() -> None:
    with pytest.raises(ValueError, match=r"step 12 was logged by ranks \[0\], not by all 2"):
        rank_peak_rss(RANK_LOG.rsplit("[default1]", 1)[0], 2)


def test_command_logs_every_rank_when_asked(tmp_path: Path) -> None:
    job = Job("x", "llama3", "debugmodel", 4)
    one = command(job, tmp_path / "dump", tmp_path, 4)
    assert one[one.index("--local-ranks-filter") + 1] == "0" and "--tee" not in one
    every = command(dataclasses.replace(job, log_every_rank=True), tmp_path / "dump", tmp_path, 4)
    assert every[every.index("--local-ranks-filter") + 1] == "0,1,2,3"
    assert every[every.index("--tee") + 1] == "3"
