"""Summaries over seeds."""

from __future__ import annotations

import pytest

from studies.forgetting.aggregate import final_numbers, Spread, summarize_points


def _run(b: list[float], a: list[float]) -> list[dict[str, float]]:
    return [{"step": 5 * i, "b_loss": bi, "a_loss": ai, "flops": 10.0 * i, "time_s": 1.0 * i}
            for i, (bi, ai) in enumerate(zip(b, a))]


def test_spread() -> None:
    s = Spread.of([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.min, s.max, s.n) == (2.0, 1.0, 1.0, 3.0, 3)
    assert Spread.of([4.0]).std == 0.0
    with pytest.raises(ValueError):
        Spread.of([])


def test_summarize_points_and_final_numbers() -> None:
    runs = [_run([5.0, 4.0], [3.0, 3.5]), _run([5.0, 3.0], [3.0, 4.5])]
    points = summarize_points(runs)
    assert [p["step"] for p in points] == [0, 5]
    assert points[1]["b_loss"]["mean"] == 3.5 and points[1]["b_loss"]["min"] == 3.0
    assert points[1]["flops"]["std"] == 0.0
    final = final_numbers(points, runs)
    assert final["a_loss"]["max"] == 4.5
    assert final["a_increase"]["mean"] == pytest.approx(1.0)
    assert final["a_increase"]["min"] == pytest.approx(0.5)


def test_runs_must_share_their_steps() -> None:
    with pytest.raises(ValueError, match="different steps"):
        summarize_points([_run([1.0, 2.0], [1.0, 2.0]), _run([1.0], [1.0])])
    with pytest.raises(ValueError):
        summarize_points([])
