"""The controller micro-timing runs and gives a plausible per-call time; the matmul timing gives
a rate in float32 and bfloat16 and leaves the thread count as it was."""

from __future__ import annotations

import torch

from bench.micro import controller_due_seconds, matmul_gflops


def test_controller_due_seconds() -> None:
    assert 0 < controller_due_seconds(calls=1_000, rounds=2) < 1e-3


def test_matmul_gflops_restores_the_thread_count() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for dtype in (torch.float32, torch.bfloat16):
            assert matmul_gflops(dtype, rows=64, inner=32, cols=48, seconds=0.01, rounds=1) > 0
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
