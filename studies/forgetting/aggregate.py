"""Summaries over seeds: mean and spread of each quantity at each validation point."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

QUANTITIES = ("b_loss", "a_loss", "flops", "time_s")


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (0 for one value), min and max of ``n`` values."""

    mean: float
    std: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values to summarise")
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, min(values), max(values), len(values))


def summarize_points(runs: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Per validation step, the :class:`Spread` (as dicts) of every quantity over ``runs``.

    Args:
        runs: one list of points per seed, each point ``{"step": s, "b_loss": ..., "a_loss":
            ..., "flops": ..., "time_s": ...}``; every run must have the same steps.

    Raises:
        ValueError: the runs' validation steps differ, or there are no runs.
    """
    if not runs:
        raise ValueError("no runs to summarise")
    steps = [p["step"] for p in runs[0]]
    for run in runs[1:]:
        if [p["step"] for p in run] != steps:
            raise ValueError(f"runs validated at different steps: {steps} and "
                             f"{[p['step'] for p in run]}")
    return [
        {"step": step, **{q: asdict(Spread.of([run[i][q] for run in runs])) for q in QUANTITIES}}
        for i, step in enumerate(steps)
    ]


def final_numbers(points: Sequence[Mapping[str, Any]],
                  runs: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """The last point's spreads plus the A-loss increase over the pretrained model (step 0),
    taken per seed before summarising."""
    increase = [run[-1]["a_loss"] - run[0]["a_loss"] for run in runs]
    return {**{q: points[-1][q] for q in QUANTITIES},
            "a_increase": asdict(Spread.of(increase))}
