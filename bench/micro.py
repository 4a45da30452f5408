"""In-process timings: the controller's per-step decision, and this CPU's matmul speed by dtype.

On a non-transition step PhasedTrainer asks ``PhaseController.due(step)`` once; this times that
call in phase 0 of a three-phase schedule at a step before its limit (the common case).

:func:`matmul_gflops` times one thread's matrix products in a given dtype, the shape of the
benchmark model's projections: it tells whether bf16 matmuls run natively on the host or are
emulated (then slower than float32), which decides how bf16 step times read.

**Limitations**
Times the decision only; titan_phases' per-step metrics work is measured inside the jobs. The
matmul rate is of one shape, hot in cache, with other work on the machine competing for it.
"""

from __future__ import annotations

import time
import timeit

import torch

from titan_phases.components.phase_controller import PhaseController


def controller_due_seconds(calls: int = 100_000, rounds: int = 5) -> float:
    """Best-of-``rounds`` seconds per ``PhaseController.due`` call on a non-transition step."""
    controller = PhaseController([1_000, 2_000, None], [["a"], ["b"], ["c"]])
    if controller.due(10) is not None:
        raise AssertionError("step 10 of a 1000-step phase must not transition")
    best = min(timeit.repeat(lambda: controller.due(10), number=calls, repeat=rounds))
    return best / calls


def matmul_gflops(
    dtype: torch.dtype, rows: int = 1024, inner: int = 256, cols: int = 768,
    seconds: float = 0.5, rounds: int = 3,
) -> float:
    """Best-of-``rounds`` GFLOP/s of ``(rows x inner) @ (inner x cols)`` products in ``dtype``
    on one thread (the thread count of a benchmark rank)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(rows, inner).to(dtype)
        b = torch.randn(inner, cols).to(dtype)
        a @ b
        best = 0.0
        for _ in range(rounds):
            products, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                a @ b
                products += 1
            best = max(best, 2 * rows * inner * cols * products / elapsed / 1e9)
        return best
    finally:
        torch.set_num_threads(threads)
