"""The controller micro-timing runs and gives a plausible per-call time."""

from __future__ import annotations

from bench.micro import controller_due_seconds


def test_controller_due_seconds() -> None:
    assert 0 < controller_due_seconds(calls=1_000, rounds=2) < 1e-3
