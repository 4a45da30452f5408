"""What a run cost up to each validation point: cumulative FLOPs and training step time.

FLOPs come from titan_phases' FLOP model (:mod:`titan_phases.plan.flops`): a step of a
phase costs ``tokens_per_step x 3 x F x ideal_phase_ratio(trainable set of the phase)``, where
``F`` is the forward FLOPs per token over all layers (attention scores included) and the ratio
counts the forward pass over every layer plus the backward pass over the span from the lowest
trainable layer up. Each step is charged to the phase it trained in (metrics.jsonl ``phase``).

Time is the sum of metrics.jsonl ``step_time_s`` (one record per step, ``log_freq = 1``).
torchtitan restarts that clock after each validation, so checkpoint saves and validations are
not in it; a transition is (it runs at the start of the next phase's first step).

**Limitations**
FLOPs are the model's, not the machine's: see the FLOP model's own limitations (no elementwise
work, optimizer or communication). The first step after a validation is slower than the rest
(the study validates every few steps, far more often than a real job would), and that extra
time is counted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from titan_phases.plan.flops import (
    attention_flops,
    forward_flops_by_depth,
    ideal_phase_ratio,
)

BACKWARD_AND_FORWARD = 3  # forward + backward (2 x forward), as in the FLOP model


@dataclass(frozen=True)
class StepCosts:
    """FLOPs of one training step in each phase of a run."""

    per_phase: tuple[float, ...]
    ratios: tuple[float, ...]
    """Each phase's FLOPs over those of a step training everything."""


def step_costs(
    param_numels: Mapping[str, int],
    trainable_per_phase: Sequence[Collection[str]],
    tokens_per_step: int,
    dim: int,
    seq_len: int,
) -> StepCosts:
    """FLOPs per step of each phase (``trainable_per_phase[k]``: every name trained in phase k)."""
    attention = attention_flops(dim, seq_len)
    forward = sum(forward_flops_by_depth(param_numels, attention_flops=attention))
    full_step = tokens_per_step * BACKWARD_AND_FORWARD * forward
    ratios = tuple(ideal_phase_ratio(param_numels, trainable, attention_flops=attention)
                   for trainable in trainable_per_phase)
    return StepCosts(tuple(full_step * r for r in ratios), ratios)


def cumulative(per_step: Mapping[int, float], points: Sequence[int]) -> list[float]:
    """The running sum of ``per_step`` (steps 1..) at each point (0 at step 0).

    Raises:
        ValueError: a step up to the last point has no value.
    """
    missing = [s for s in range(1, max(points, default=0) + 1) if s not in per_step]
    if missing:
        raise ValueError(f"no record for steps {missing[:5]}")
    return [sum(per_step[s] for s in range(1, point + 1)) for point in points]


def cumulative_flops(
    records: Mapping[int, Mapping[str, Any]], costs: StepCosts, points: Sequence[int]
) -> list[float]:
    """Cumulative FLOPs at each point, each step charged to its phase."""
    return cumulative({s: costs.per_phase[r["phase"]] for s, r in records.items()}, points)


def cumulative_time(records: Mapping[int, Mapping[str, Any]], points: Sequence[int]) -> list[float]:
    """Cumulative training step time (seconds) at each point."""
    return cumulative({s: r["step_time_s"] for s, r in records.items()}, points)
