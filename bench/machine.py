"""Facts about the machine and software a benchmark ran on, and how busy the machine is.

**Limitations**
Linux only (``/proc``). :func:`cpu_busy` cannot tell other users' work from this process's own;
call it while no benchmark job runs.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of the machine's CPU time in use over the next ``seconds`` (0 idle, 1 full)."""
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_until_quiet(
    threshold: float, max_wait_s: float, poll_s: float = 1.0
) -> tuple[float, float]:
    """Wait (at most ``max_wait_s``) until the machine is at most ``threshold`` busy.

    Returns (busy fraction last measured, seconds waited). Never fails: a machine that stays
    busy is benchmarked anyway, and the returned busy fraction is recorded with the job.
    """
    start = time.monotonic()
    busy = cpu_busy(poll_s)
    while busy > threshold and time.monotonic() - start < max_wait_s:
        busy = cpu_busy(poll_s)
    return busy, time.monotonic() - start


# CPU flags that decide how fast float32 and bfloat16 matmuls run (oneDNN's kernels): AVX2 and
# AVX-512 for float32, AVX512_BF16 and AMX for native bfloat16 (without them it is emulated).
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_flags(cpuinfo: str) -> list[str]:
    """Which of :data:`VECTOR_FLAGS` the first CPU of ``/proc/cpuinfo``'s text has."""
    line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    present = set(line.split(":", 1)[1].split()) if ":" in line else set()
    return [flag for flag in VECTOR_FLAGS if flag in present]


def machine() -> dict[str, Any]:
    """CPU model, core count, vector flags, RAM and the 1-minute load average now."""
    cpu = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                if line.startswith("model name")), cpu)
    with open("/proc/meminfo") as f:
        ram_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram_kib / 2**20,
            "cpu_flags": cpu_flags(cpuinfo), "load_before": os.getloadavg()[0]}


def versions(repo: Path) -> dict[str, str]:
    """Python, torch, torchtitan, and the repository's git commit (marked when modified)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " + uncommitted changes" if git("status", "--porcelain") else ""
    return {
        "python": platform.python_version(),
        "torch": importlib.metadata.version("torch"),
        "torchtitan": importlib.metadata.version("torchtitan"),
        "titan_phases": f"git {commit}{dirty}",
    }
