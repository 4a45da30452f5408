"""Bytes per rank: read from metrics.jsonl records, checked against a plan, and their peak."""

from __future__ import annotations

import pytest

from studies.forgetting.memory import BytesMismatch, check, measured, peak


def _record(step: int, phase: int, params: list[int], state: list[int]) -> dict:
    return {"type": "train", "step": step, "phase": phase, "param_bytes": params,
            "master_bytes": [0, 0], "grad_bytes": [10, 12], "optimizer_state_bytes": state}


RECORDS = {1: _record(1, 0, [100, 100], [20, 24]), 2: _record(2, 0, [100, 100], [20, 24]),
           3: _record(3, 1, [100, 100], [40, 44])}


def _plan(states: list[list[int]], peak_total: list[int]) -> dict:
    return {"phases": [{"label": str(k), "memory": [
                {"params": 100, "masters": 0, "grads": g, "optimizer_state": s}
                for g, s in zip([10, 12], state)]} for k, state in enumerate(states)],
            "peak_total": peak_total}


def test_measured_takes_each_phases_bytes_per_rank() -> None:
    held = measured(RECORDS)
    assert held == {0: [{"params": 100, "masters": 0, "grads": 10, "optimizer_state": 20},
                        {"params": 100, "masters": 0, "grads": 12, "optimizer_state": 24}],
                    1: [{"params": 100, "masters": 0, "grads": 10, "optimizer_state": 40},
                        {"params": 100, "masters": 0, "grads": 12, "optimizer_state": 44}]}
    assert peak(held) == [{"phase": 1, "params": 100, "masters": 0, "grads": 10,
                           "optimizer_state": 40, "total": 150},
                          {"phase": 1, "params": 100, "masters": 0, "grads": 12,
                           "optimizer_state": 44, "total": 156}]
    with pytest.raises(ValueError, match="step 1 has no master_bytes"):
        measured({1: {k: v for k, v in RECORDS[1].items() if k != "master_bytes"}})


def test_check_passes_when_equal_and_names_every_difference() -> None:
    held = measured(RECORDS)
    assert check(held, _plan([[20, 24], [40, 44]], [150, 156]), "job") == 4
    with pytest.raises(BytesMismatch) as error:
        check(held, _plan([[20, 24], [40, 45], [1, 1]], [150, 157]), "job x")
    message = str(error.value)
    assert "job x" in message
    assert "phase 1 rank 1 optimizer_state: measured 44, plan 45" in message
    assert "phase 2 is only in the plan" in message
    with pytest.raises(BytesMismatch, match=r"peak total per rank: measured \[150, 156\]"):
        check(held, _plan([[20, 24], [40, 44]], [150, 999]), "job")
