"""Per-phase summaries of measured steps."""

from __future__ import annotations

import math

import pytest

from bench.analysis import (
    by_phase,
    first_step_extra,
    Stat,
    StepRecord,
)


def _run() -> list[StepRecord]:
    times = {1: 2.0, 2: 1.1, 3: 1.0, 4: 1.2, 5: 3.0, 6: 2.1, 7: 2.0, 8: 2.2}
    return [
        StepRecord(step, t, rss_gib=step / 10, phase=0 if step <= 4 else 1, metrics_s=0.001,
                   state_bytes=(step, step), trainable=step)
        for step, t in times.items()
    ]


def test_by_phase_skips_the_first_steps_of_each_phase() -> None:
    phases = by_phase(_run(), skip=2)
    assert phases[0].steady_s == pytest.approx(1.1)
    assert phases[1].steady_s == pytest.approx(2.1)
    assert (phases[1].first_s, phases[1].second_s) == (3.0, 2.1)
    assert phases[1].steady_steps == 2
    assert phases[1].peak_rss_gib == pytest.approx(0.8)
    assert phases[1].state_bytes == (8, 8)
    assert phases[1].metrics_s == pytest.approx(0.001)
    assert first_step_extra(phases[1]) == pytest.approx(0.9)


def test_by_phase_needs_steady_steps() -> None:
    with pytest.raises(ValueError, match="phase 0 has 4 steps"):
        by_phase(_run(), skip=4)


def test_stock_records_have_no_phase_extras() -> None:
    phases = by_phase([StepRecord(s, 1.0, 0.5) for s in range(1, 5)], skip=1)
    assert phases[0].metrics_s is None and phases[0].state_bytes == ()


def test_stat() -> None:
    assert Stat.of([3.0, 1.0, 2.0]) == Stat(2.0, 1.0, 3.0, 3)
    assert math.isnan(Stat.of([]).median)


