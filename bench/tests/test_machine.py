"""Machine facts and the busy-machine gate."""

from __future__ import annotations

from bench.machine import cpu_busy, cpu_flags, machine, VECTOR_FLAGS, wait_until_quiet


def test_cpu_busy_is_a_fraction() -> None:
    assert 0.0 <= cpu_busy(0.05) <= 1.0


def test_wait_until_quiet_returns_at_once_when_anything_goes() -> None:
    busy, waited = wait_until_quiet(threshold=1.0, max_wait_s=10.0, poll_s=0.05)
    assert 0.0 <= busy <= 1.0 and waited < 5.0


def test_machine_facts() -> None:
    facts = machine()
    assert facts["cores"] >= 1 and facts["ram_gib"] > 0


def test_cpu_flags() -> None:
    cpuinfo = ("processor\t: 0\nmodel name\t: AMD EPYC\n"
               "flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512bw\n"
               "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == ["avx2", "avx512f", "avx512_bf16"]
    assert cpu_flags("flags\t\t: fpu sse2 amx_bf16 amx_tile avx2\n") == [
        "avx2", "amx_tile", "amx_bf16"]
    assert cpu_flags("model name\t: unknown\n") == []
    assert set(machine()["cpu_flags"]) <= set(VECTOR_FLAGS)
