"""CPU (gloo) runtime for torchtitan 0.2.2's stock Trainer.

torchtitan 0.2.2 assumes an accelerator: with none, ``device_type`` falls back to "cuda" and
``Trainer.__init__`` fails in ``set_device``. This module is the one place where titan_phases
patches torchtitan (through :mod:`titan_phases.patches`) so the *unchanged* Trainer runs on CPU
processes talking over gloo. It does nothing when an accelerator is present, so GPU code paths
stay stock torchtitan.

What :func:`activate_if_no_accelerator` switches, and why:

* ``device_type``/``device_module``: torchtitan modules copy them at import time, so every
  already-imported copy is rewritten. ``device_module`` becomes :class:`CPUDeviceModule`, which
  answers torchtitan's CUDA-style calls with real host facts (CPU model name, RAM size, peak
  RSS of this process) instead of pretending to be a GPU.
* Peak FLOPs for MFU: torchtitan shells out to ``lspci`` and falls back to an A100 figure. On
  CPU the peak is measured once per process with an fp32 matmul probe.
* FSDP2 gradient reduction: torchtitan's reduce-scatter uses PREMUL_SUM/AVG, which gloo
  rejects. Every FSDP module built by a TrainSpec's ``parallelize_fn`` is switched to plain sum
  reduction. torchtitan sets FSDP's gradient divide factor to 1 and divides the loss by the
  global token count itself, so the summed grads equal the single-process gradient.
* MoE token counts: torchtitan's MoE router counts tokens per expert with ``torch.histc`` on
  integer expert indices, which CPU kernels do not implement ("histogram_cpu" not implemented
  for 'Long'). ``torch.histc`` is wrapped to count integer CPU tensors in float32 (exact for
  counts below 2**24) and cast back; every other call goes to torch's own.
* MoE token permutation: torchtitan's ``generate_permute_indices`` uses a triton kernel
  (which finds no driver on a CPU-only machine) unless told ``use_cpu=True``, which nothing in
  torchtitan passes. It is wrapped to use its own CPU implementation for CPU tensors.
* Profiler: torchtitan passes ``[CPU, None]`` as activities when no GPU exists, which the
  profiler rejects; the ``None`` is dropped.

**Limitations**
Memory snapshots (``profiling.enable_memory_snapshot``) are CUDA-only and raise a clear error.
"Memory" figures are host RSS, shared by everything in the process, not device memory. These
patches can go once torchtitan supports a CPU device type itself.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn

from titan_phases import patches

logger = logging.getLogger(__name__)

_CUDA_ONLY_HINT = "is CUDA-only; disable it when running on CPU"


def accelerator_available() -> bool:
    return torch.accelerator.is_available()


def use_gloo_reductions(model: nn.Module) -> nn.Module:
    """Make every FSDP2 module in ``model`` reduce gradients with plain SUM (gloo supports it)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_force_sum_reduction_for_comms(True)
    return model


def _read_proc_kib(path: str, key: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


class CPUDeviceModule:
    """Stands in for ``torch.cuda`` where torchtitan calls device-module functions.

    Memory statistics are this process's resident set size: current RSS as "active" and peak
    RSS (``VmHWM``) as "reserved". ``reset_peak_memory_stats`` resets ``VmHWM`` through
    ``/proc/self/clear_refs`` where the kernel allows it.
    """

    def __getattr__(self, name: str) -> Any:
        # Anything torchtitan reaches for that a CPU has no equivalent of fails loudly.
        if name == "memory":
            raise RuntimeError(f"profiling.enable_memory_snapshot {_CUDA_ONLY_HINT}")
        return getattr(torch.cpu, name)

    @staticmethod
    def set_device(device: torch.device | str | int) -> None:
        del device

    @staticmethod
    def current_device() -> int:
        return 0

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def synchronize(device: Any = None) -> None:
        del device

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        del device
        return _cpu_model_name()

    @staticmethod
    def get_device_properties(device: Any = None) -> SimpleNamespace:
        del device
        return SimpleNamespace(total_memory=_read_proc_kib("/proc/meminfo", "MemTotal") * 1024)

    @staticmethod
    def memory_stats(device: Any = None) -> dict[str, int]:
        del device
        return {
            "active_bytes.all.peak": _read_proc_kib("/proc/self/status", "VmRSS") * 1024,
            "reserved_bytes.all.peak": _read_proc_kib("/proc/self/status", "VmHWM") * 1024,
            "num_alloc_retries": 0,
            "num_ooms": 0,
        }

    @staticmethod
    def reset_peak_memory_stats(device: Any = None) -> None:
        del device
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    @staticmethod
    def empty_cache() -> None:
        pass


@functools.cache
def measured_cpu_peak_flops(size: int = 512, seconds: float = 0.2) -> float:
    """fp32 matmul FLOP/s this process reaches with its current thread count (measured once)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)
    reps = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * size**3 * reps / elapsed


class _ProfileWithoutMissingActivities(torch.profiler.profile):
    def __init__(self, *args: Any, activities: Any = None, **kwargs: Any) -> None:
        if activities is not None:
            activities = [a for a in activities if a is not None]
        super().__init__(*args, activities=activities, **kwargs)


def _cpu_profiling(original: Callable) -> Callable:
    @contextlib.contextmanager
    def maybe_enable_profiling(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with patches.profiler_class(_ProfileWithoutMissingActivities):
            context = original(*args, **kwargs)
            value = context.__enter__()
        try:
            yield value
        except BaseException:
            if not context.__exit__(*sys.exc_info()):
                raise
        else:
            context.__exit__(None, None, None)

    return maybe_enable_profiling


def integer_histc(histc: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``histc`` that also takes integer CPU tensors (see the module docstring)."""

    @functools.wraps(histc)
    def wrapped(input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if input.device.type == "cpu" and not input.is_floating_point() and "out" not in kwargs:
            return histc(input.float(), *args, **kwargs).to(input.dtype)
        return histc(input, *args, **kwargs)

    return wrapped


def _permute_indices_on_cpu(generate: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(generate)
    def wrapped(tokens_per_expert_group: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if tokens_per_expert_group.device.type == "cpu":
            kwargs["use_cpu"] = True
        return generate(tokens_per_expert_group, *args, **kwargs)

    return wrapped


def _with_gloo_reductions(parallelize_fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    @functools.wraps(parallelize_fn)
    def parallelize(model: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        return use_gloo_reductions(parallelize_fn(model, *args, **kwargs))

    return parallelize


def _specs_with_gloo_reductions(get_train_spec: Callable) -> Callable:
    # The registry hands out the same spec object every time: wrap its parallelize_fn once.
    wrapped_fns: set[Callable] = set()

    @functools.wraps(get_train_spec)
    def wrapped(name: str) -> Any:
        spec = get_train_spec(name)
        if spec.parallelize_fn not in wrapped_fns:
            spec.parallelize_fn = _with_gloo_reductions(spec.parallelize_fn)
            wrapped_fns.add(spec.parallelize_fn)
        return spec

    return wrapped


def activate_if_no_accelerator() -> bool:
    """Switch torchtitan to the CPU/gloo runtime unless an accelerator is present.

    Idempotent. Returns True when the CPU runtime is (now) active. The patches it installs are
    :mod:`titan_phases.patches`.
    """
    if accelerator_available():
        return False
    import torchtitan.tools.utils as tt_utils

    if tt_utils.device_type != "cpu":
        patches.set_torchtitan_device("cpu", CPUDeviceModule())
        logger.info("No accelerator found: running torchtitan on CPU with gloo")
    patches.install_get_peak_flops(measured_cpu_peak_flops)
    patches.install_histc(integer_histc)
    patches.install_permute_indices(_permute_indices_on_cpu)
    patches.install_maybe_enable_profiling(_cpu_profiling)
    patches.install_get_train_spec(_specs_with_gloo_reductions)
    os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
    return True
