"""Turn repeated benchmark runs into the suite's figures (``results.json``); check the targets.

Every ratio is taken within one repeat, between jobs run back to back (stock, phased and
one-phase jobs of a repeat are adjacent in time), and then summarised as median and range over
the repeats: the machine is shared, and this cancels slow drifts in its load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.analysis import by_phase, first_step_extra, ModelFacts, PhaseRun, Stat
from bench.jobs import JobOutput

MAX_MEASURED_OVER_IDEAL = 1.10
MAX_OVERHEAD = 0.01
MAX_TRANSITION_STEPS = 1.0


@dataclass(frozen=True)
class ModelRuns:
    """All jobs of one model size; list index = repeat. ``all_params`` may be empty."""

    depth: int
    flavor: str
    stock_model: str
    phased_model: str
    facts: ModelFacts
    stock: Sequence[JobOutput]
    phased: Sequence[JobOutput]
    all_params: Sequence[JobOutput] = ()


def _stat(values: Sequence[float]) -> dict[str, float]:
    return dataclasses.asdict(Stat.of(values))


def _phase(
    k: int,
    facts: ModelFacts,
    stock: Sequence[PhaseRun],
    phased: Sequence[dict[int, PhaseRun]],
    thaw: Sequence[dict[int, float]],
) -> dict[str, Any]:
    expected = facts.phases[k]
    runs = [p[k] for p in phased]
    ratios = [r.steady_s / s.steady_s for r, s in zip(runs, stock)]
    # The last phase trains everything (as stock does) in the schedules benchmarked: a second
    # baseline, measured in the same job seconds apart, so less exposed to the machine's drifts.
    last = len(facts.phases) - 1
    in_job = [p[k].steady_s / p[last].steady_s for p in phased]
    if facts.phases[last].trainable != facts.total_params:
        in_job = []
    measured_bytes = sorted({r.state_bytes for r in runs})
    summary: dict[str, Any] = {
        "phase": k,
        "params": list(expected.params),
        "trainable": expected.trainable,
        "trainable_tensors": expected.trainable_tensors,
        "trainable_measured": sorted({r.trainable for r in runs}),
        "steady_s": _stat([r.steady_s for r in runs]),
        "steady_steps": min(r.steady_steps for r in runs),
        "ratio": _stat(ratios),
        "ideal": expected.ideal_ratio,
        "measured_over_ideal": _stat([x / expected.ideal_ratio for x in ratios]),
        "ratio_in_job": _stat(in_job),
        "in_job_over_ideal": _stat([x / expected.ideal_ratio for x in in_job]),
        "peak_rss_gib": _stat([r.peak_rss_gib for r in runs]),
        "metrics_ms": _stat([1000 * r.metrics_s for r in runs if r.metrics_s is not None]),
        "state_bytes": {
            "expected": list(expected.state_bytes),
            "measured": [list(b) for b in measured_bytes],
            "exact": measured_bytes == [expected.state_bytes],
        },
        "transition": None,
    }
    if k > 0:
        extras = [first_step_extra(r) for r in runs]
        summary["transition"] = {
            "thaw_rebuild_ms": _stat([1000 * t[k] for t in thaw]),
            "first_step_extra_s": _stat(extras),
            "cost_in_steps": _stat([e / r.steady_s for e, r in zip(extras, runs)]),
            "second_step_extra_s": _stat([r.second_s - r.steady_s for r in runs]),
        }
    return summary


def summarize(runs: ModelRuns, skip: int) -> dict[str, Any]:
    """The figures of one model size (see BENCHMARKS.md for what each means)."""
    if len(runs.stock) != len(runs.phased):
        raise ValueError("every repeat needs a stock and a phased job")
    stock = [by_phase(o.records, skip)[0] for o in runs.stock]
    phased = [by_phase(o.records, skip) for o in runs.phased]
    thaw = [o.thaw_rebuild_s for o in runs.phased]
    result: dict[str, Any] = {
        "depth": runs.depth,
        "flavor": runs.flavor,
        "stock_model": runs.stock_model,
        "phased_model": runs.phased_model,
        "total_params": runs.facts.total_params,
        "repeats": len(stock),
        "jobs_wall_s": sum(o.wall_s for o in (*runs.stock, *runs.phased, *runs.all_params)),
        "stock": {
            "steady_s": _stat([s.steady_s for s in stock]),
            "steady_steps": min(s.steady_steps for s in stock),
            "peak_rss_gib": _stat([s.peak_rss_gib for s in stock]),
        },
        "phases": [
            _phase(k, runs.facts, stock, phased, thaw) for k in range(len(runs.facts.phases))
        ],
        "overhead": None,
        "pipeline": (None if runs.facts.pipeline is None
                     else dataclasses.asdict(runs.facts.pipeline)),
    }
    if runs.all_params:
        one = [by_phase(o.records, skip)[0] for o in runs.all_params]
        result["overhead"] = {
            "steady_s": _stat([o.steady_s for o in one]),
            "steady_steps": min(o.steady_steps for o in one),
            "end_to_end": _stat([o.steady_s / s.steady_s - 1 for o, s in zip(one, stock)]),
            "metrics_ms": _stat([1000 * o.metrics_s for o in one if o.metrics_s is not None]),
            "metrics_share": _stat(
                [o.metrics_s / o.steady_s for o in one if o.metrics_s is not None]
            ),
        }
    return result


MET = "met"
MET_ON_MEDIAN = "met on the median"
MISSED_ON_MEDIAN = "missed on the median"
MISSED = "missed"


def verdict(value: dict[str, float], limit: float) -> str:
    """``met`` / ``missed`` when every repeat is within / over ``limit``; when the repeats
    disagree (noise, or a real borderline), the median decides and the verdict says so."""
    if value["high"] <= limit:
        return MET
    if value["low"] > limit:
        return MISSED
    return MET_ON_MEDIAN if value["median"] <= limit else MISSED_ON_MEDIAN


def _check(target: str, value: dict[str, float], limit: float) -> dict[str, Any]:
    return {"target": target, "value": value, "limit": limit, "verdict": verdict(value, limit)}


def targets(model: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's targets, judged on ``model``'s figures over its repeats.

    Per-phase measured / ideal step-time ratio, controller overhead and transition cost (limits
    ``MAX_*`` above), and optimizer state bytes exactly as expected.
    """
    checks = [
        _check(f"phase {p['phase']}: measured / ideal step-time ratio <= "
               f"{MAX_MEASURED_OVER_IDEAL:.2f}", p["measured_over_ideal"], MAX_MEASURED_OVER_IDEAL)
        for p in model["phases"]
    ]
    if model["overhead"] is not None:
        checks.append(_check(f"controller overhead on non-transition steps <= {MAX_OVERHEAD:.0%}",
                             model["overhead"]["end_to_end"], MAX_OVERHEAD))
    checks += [
        _check(f"transition into phase {p['phase']} (thaw + rebuild + first-step extra) <= "
               f"{MAX_TRANSITION_STEPS:g} step of the phase", p["transition"]["cost_in_steps"],
               MAX_TRANSITION_STEPS)
        for p in model["phases"] if p["transition"] is not None
    ]
    return checks + [_state_bytes_check(model, "")]


def _state_bytes_check(model: dict[str, Any], where: str) -> dict[str, Any]:
    exact = all(p["state_bytes"]["exact"] for p in model["phases"])
    return {"target": f"{where}optimizer state bytes per rank exactly as expected, every phase",
            "value": None, "limit": None, "verdict": MET if exact else MISSED}


def layout_targets(layout: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets judged on a layout row (``title``: its name): optimizer state bytes only.

    Its step-time ratios are reported, not judged: the row has fewer repeats and steps than
    the main model, and its limits were set for 1-D FSDP.
    """
    return [_state_bytes_check(layout, f"{layout['title']}: ")]
