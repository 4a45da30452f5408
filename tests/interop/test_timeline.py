"""A run's metrics.jsonl read back: resumed runs, runs in progress, phases and their reasons."""

from __future__ import annotations

import json
import math
from pathlib import Path

from titan_phases.interop.timeline import PhaseBand, read_timeline


def _train(step: int, loss: float | None, lrs: list[float], phase: int, trainable: int) -> dict:
    return {"type": "train", "step": step, "loss": loss, "lr": lrs, "phase": phase,
            "trainable_params": trainable}


def write_resumed_run(path: Path) -> None:
    """Steps 1-4 (phase 0 -> 1 after step 3), a kill, then a restart from step 2's checkpoint
    repeating steps 3-4 and the transition, going on to step 5 and writing half a line."""
    first = [
        {"type": "run_start", "time": 0.0, "pid": 1},
        _train(1, 4.0, [1e-3], 0, 10),
        _train(2, 3.5, [9e-4], 0, 10),
        {"type": "validation", "step": 2, "loss": 3.6},
        _train(3, 3.2, [8e-4], 0, 10),
        {"type": "transition", "step": 3, "from_phase": 0, "to_phase": 1,
         "reason": "max_transition_step"},
        _train(4, 3.0, [7e-4, 5e-4], 1, 30),
    ]
    second = [
        {"type": "run_start", "time": 9.0, "pid": 2},
        {"type": "validation", "step": 2, "loss": 3.6},
        _train(3, 3.2, [8e-4], 0, 10),
        {"type": "transition", "step": 3, "from_phase": 0, "to_phase": 1,
         "reason": "max_transition_step"},
        _train(4, 3.0, [7e-4, 5e-4], 1, 30),
        _train(5, None, [6e-4, 4e-4], 1, 30),
        {"type": "end", "step": 5, "reason": "diverged"},
    ]
    lines = [json.dumps(r) for r in first + second]
    path.write_text("\n".join(lines) + '\n{"type": "train", "step": 6, "lo')


def write_logged_every_5_steps(path: Path) -> None:
    """Steps 5..60 logged every 5 steps; phase 0 -> 1 after step 20, 1 -> 2 after step 40."""
    records: list[dict] = [{"type": "run_start"}]
    for step in range(5, 61, 5):
        phase = (step - 1) // 20
        records.append(_train(step, 1.0, [1e-3] * (phase + 1), phase, 10 * (phase + 1)))
        if step in (20, 40):
            records.append({"type": "transition", "step": step, "from_phase": phase,
                            "to_phase": phase + 1, "reason": "max_transition_step"})
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_a_resumed_run_in_progress_reads_as_one_timeline(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    write_resumed_run(path)
    timeline = read_timeline(path)
    assert timeline.steps == [1, 2, 3, 4, 5]
    assert timeline.loss[:4] == [4.0, 3.5, 3.2, 3.0] and math.isnan(timeline.loss[4])
    assert timeline.validation_steps == [2] and timeline.validation_loss == [3.6]
    assert timeline.lrs == {
        0: ([1, 2, 3, 4, 5], [1e-3, 9e-4, 8e-4, 7e-4, 6e-4]),
        1: ([4, 5], [5e-4, 4e-4]),
    }
    assert timeline.trainable_params == [10, 10, 10, 30, 30]
    assert timeline.phases == [
        PhaseBand(0, 1, 3, None), PhaseBand(1, 4, 5, "max_transition_step"),
    ]
    assert timeline.starts == 2 and timeline.end == "diverged"


def test_the_last_record_of_a_repeated_step_wins(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"type": "run_start"}, _train(1, 5.0, [1e-3], 0, 10),
        {"type": "run_start"}, _train(1, 4.0, [2e-3], 0, 10),
    ]) + "\n")
    timeline = read_timeline(path)
    assert timeline.loss == [4.0] and timeline.lrs == {0: ([1], [2e-3])}


def test_phase_bands_reach_the_transitions_between_logged_steps(tmp_path: Path):
    # Logged every 5 steps; phase 0 -> 1 after step 12.
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"type": "run_start"}, _train(5, 3.0, [1e-3], 0, 10), _train(10, 2.0, [1e-3], 0, 10),
        {"type": "transition", "step": 12, "from_phase": 0, "to_phase": 1, "reason": "plateau"},
        _train(15, 1.5, [1e-3, 1e-4], 1, 20), _train(20, 1.0, [1e-3, 1e-4], 1, 20),
    ]) + "\n")
    assert read_timeline(path).phases == [
        PhaseBand(0, 5, 12, None), PhaseBand(1, 13, 20, "plateau"),
    ]


def test_the_trainable_params_line_changes_where_each_phase_begins(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    write_logged_every_5_steps(path)
    timeline = read_timeline(path)
    assert [band.span for band in timeline.phases] == [(4.5, 20.5), (20.5, 40.5), (40.5, 60.5)]
    assert timeline.trainable_params_line() == (
        [4.5, 20.5, 20.5, 40.5, 40.5, 60.5], [10, 10, 20, 20, 30, 30])
