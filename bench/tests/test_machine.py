"""Machine facts and the busy-machine gate."""

from __future__ import annotations

from bench.machine import cpu_busy, machine, wait_until_quiet


def test_cpu_busy_is_a_fraction() -> None:
    assert 0.0 <= cpu_busy(0.05) <= 1.0


def test_wait_until_quiet_returns_at_once_when_anything_goes() -> None:
    busy, waited = wait_until_quiet(threshold=1.0, max_wait_s=10.0, poll_s=0.05)
    assert 0.0 <= busy <= 1.0 and waited < 5.0


def test_machine_facts() -> None:
    facts = machine()
    assert facts["cores"] >= 1 and facts["ram_gib"] > 0
