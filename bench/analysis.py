"""Pure analysis of benchmark runs: per-phase step times and transition costs.

A run is a list of :class:`StepRecord` (one per training step, rank 0's view). Step times are
torchtitan's own ``time_metrics/end_to_end(s)`` with ``log_freq = 1``: the wall time between
the end of one step's logging and the next step's, the same code measuring stock and phased
runs. The interval of step ``S + 1`` includes a transition after step ``S``.

**Limitations**
Medians over a handful of steps on a shared machine: the spreads the report prints are the
honest error bars, there is no outlier rejection beyond skipping the first steps of a phase.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.pipeline_ideal import Pipeline

# What a rank holds, as metrics.jsonl reports it per rank and ``titan-phases plan`` predicts it
# (``RankMemory``: params, masters, grads, optimizer_state), in that order.
HELD_KINDS = ("param_bytes", "master_bytes", "grad_bytes", "optimizer_state_bytes")


@dataclass(frozen=True)
class StepRecord:
    """One training step of a run.

    Attributes:
        step: the step number.
        time_s: torchtitan's end-to-end step time.
        rss_gib: peak RSS of the logging rank (rank 0; the last stage's under PP) during the
            step (torchtitan resets the peak every log).
        phase: the phase the step trained in (0 for stock runs).
        metrics_s: phased runs only: time titan_phases' metrics processor spends per step
            before torchtitan's (end-to-end time minus titan_phases' own ``step_time_s``).
        state_bytes: phased runs only: optimizer state bytes held by each rank.
        trainable: phased runs only: trainable parameter count.
        held: phased runs only: ``{kind: bytes held by each rank}`` for each of
            :data:`HELD_KINDS` that metrics.jsonl reports.
        rank_rss_gib: jobs that log every rank only: each rank's peak RSS during the step,
            from its console line (2 decimals).
    """

    step: int
    time_s: float
    rss_gib: float
    phase: int = 0
    metrics_s: float | None = None
    state_bytes: tuple[int, ...] = ()
    trainable: int | None = None
    held: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    rank_rss_gib: tuple[float, ...] = ()


@dataclass(frozen=True)
class Stat:
    """Median and range of values from repeated runs (or of steps in one run)."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        values = list(values)
        if not values:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(values), min(values), max(values), len(values))


@dataclass(frozen=True)
class PhaseRun:
    """One phase of one run.

    Attributes:
        steady_s: median step time over the phase's steps after the first ``skip``.
        steady_steps: how many steps that median is over.
        first_s, second_s: the phase's first two step times (the first holds a transition).
        peak_rss_gib: the highest per-step peak RSS in the phase.
        state_bytes: optimizer state bytes per rank on the phase's last step.
        trainable: trainable parameter count on the phase's last step.
        metrics_s: median per-step time of titan_phases' metrics processor (phased runs).
        held: the phase's last step's :attr:`StepRecord.held`.
        rank_peak_rss_gib: per rank, the highest per-step peak RSS in the phase (jobs that log
            every rank; empty otherwise).
    """

    steady_s: float
    steady_steps: int
    first_s: float
    second_s: float
    peak_rss_gib: float
    state_bytes: tuple[int, ...]
    trainable: int | None
    metrics_s: float | None
    held: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    rank_peak_rss_gib: tuple[float, ...] = ()


@dataclass(frozen=True)
class PhaseExpectation:
    """One phase: the params it thaws, what is trainable in it (elements and tensors), its
    ideal step ratio and the AdamW state bytes per rank.

    Attributes:
        ideal_ratio: the ideal the suite judges the phase by: ``plan``'s FLOP ratio, or under
            pipeline parallelism the 1F1B makespan ratio of :mod:`bench.pipeline_ideal`.
        plan_ratio: ``titan-phases plan``'s FLOP ratio, which charges the whole backward span
            from the lowest trainable layer up, weight gradients of frozen params in it
            included (None: not worked out).
        needed_ratio: the FLOPs the step needs, over a full step's: input gradients through
            that span, weight gradients for the trainable params only
            (:func:`bench.pipeline_ideal.ideal_ratio` on one stage; None: not worked out).
            Equal to ``plan_ratio`` when every param in the span trains.
        held: ``plan``'s bytes per rank for each of :data:`HELD_KINDS`.
        blocks: indices of the blocks with a trainable param in the phase.
    """

    params: tuple[str, ...]
    trainable: int
    trainable_tensors: int
    ideal_ratio: float
    state_bytes: tuple[int, ...]
    plan_ratio: float | None = None
    needed_ratio: float | None = None
    held: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    blocks: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelFacts:
    """What a phased job of one model should cost, derived from its config alone.

    ``pipeline``: under pipeline parallelism, how the job pipelines the model; its phases'
    ideal ratios are then :mod:`bench.pipeline_ideal`'s makespan ratios.
    """

    total_params: int
    n_layers: int
    dim: int
    phases: tuple[PhaseExpectation, ...]
    pipeline: Pipeline | None = None


def by_phase(records: Sequence[StepRecord], skip: int) -> dict[int, PhaseRun]:
    """Summarise each phase of a run, skipping its first ``skip`` steps for the steady time."""
    phases: dict[int, list[StepRecord]] = {}
    for record in sorted(records, key=lambda r: r.step):
        phases.setdefault(record.phase, []).append(record)
    summary = {}
    for phase, steps in phases.items():
        if len(steps) <= max(skip, 1):
            raise ValueError(f"phase {phase} has {len(steps)} steps; need more than {skip}")
        steady = steps[skip:]
        metrics = [s.metrics_s for s in steady if s.metrics_s is not None]
        ranks = min(len(s.rank_rss_gib) for s in steps)
        summary[phase] = PhaseRun(
            steady_s=statistics.median(s.time_s for s in steady),
            steady_steps=len(steady),
            first_s=steps[0].time_s,
            second_s=steps[1].time_s,
            peak_rss_gib=max(s.rss_gib for s in steps),
            state_bytes=steps[-1].state_bytes,
            trainable=steps[-1].trainable,
            metrics_s=statistics.median(metrics) if metrics else None,
            held=steps[-1].held,
            rank_peak_rss_gib=tuple(max(s.rank_rss_gib[r] for s in steps) for r in range(ranks)),
        )
    return summary


def first_step_extra(phase: PhaseRun) -> float:
    """Extra wall time of a phase's first step over its steady step: thaw, rebuild, lazy work."""
    return phase.first_s - phase.steady_s
