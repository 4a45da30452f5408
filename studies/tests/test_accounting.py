"""Cumulative FLOPs and step time from per-step records, through titan_phases' FLOP model."""

from __future__ import annotations

import pytest

from studies.forgetting.accounting import (
    cumulative,
    cumulative_flops,
    cumulative_time,
    step_costs,
)
from titan_phases.components.metrics_file import Metrics

# Embeddings (a lookup: no FLOPs), two blocks, the head.
NUMELS = {"tok_embeddings.weight": 100, "layers.0.w": 10, "layers.1.w": 10, "output.weight": 5}


def test_step_costs_follow_the_lowest_trainable_layer() -> None:
    costs = step_costs(NUMELS, [["output.weight"], ["output.weight", "layers.1.w"], list(NUMELS)],
                       tokens_per_step=4, dim=1, seq_len=1)
    attention = 4  # 2 x 2 x dim x seq_len per block
    forward = 2 * (10 + 10 + 5) + 2 * attention  # per token
    full = 4 * 3 * forward
    assert costs.per_phase[2] == pytest.approx(full)
    # Phase 0: forward over everything, backward over the head only.
    assert costs.per_phase[0] == pytest.approx(4 * (forward + 2 * 2 * 5))
    assert costs.per_phase[1] == pytest.approx(4 * (forward + 2 * (2 * 10 + attention + 2 * 5)))
    assert costs.ratios[2] == 1.0


def test_cumulative_charges_each_step_to_its_phase() -> None:
    metrics = [
        {"type": "run_start"},
        {"type": "train", "step": 1, "phase": 0, "step_time_s": 2.0},
        {"type": "validation", "step": 1, "loss": 3.0},
        {"type": "train", "step": 2, "phase": 0, "step_time_s": 1.0},
        {"type": "train", "step": 3, "phase": 1, "step_time_s": 1.5},
        {"type": "train", "step": 4, "phase": 1, "step_time_s": 1.5},
        {"type": "train", "step": 4, "phase": 1, "step_time_s": 1.25},  # a repeat: last wins
    ]
    records = Metrics.from_records(metrics).train
    costs = step_costs(NUMELS, [["output.weight"], list(NUMELS)], 1, 1, 1)
    low, high = costs.per_phase
    assert cumulative_flops(records, costs, [0, 2, 4]) == pytest.approx(
        [0, 2 * low, 2 * low + 2 * high])
    assert cumulative_time(records, [0, 2, 4]) == [0, 3.0, 5.75]


def test_cumulative_needs_every_step() -> None:
    with pytest.raises(ValueError, match=r"\[2\]"):
        cumulative({1: 1.0, 3: 1.0}, [3])
