"""Every change titan_phases makes to a torch or torchtitan global, in one place.

Each function below replaces one module global (or one attribute of a torch module) and says
what it replaces, who needs it, and the releases it was checked against: torchtitan 0.2.2 and
torch 2.13.0 (:data:`CHECKED_AGAINST`). On an upgrade, check each one against the new source;
a test per patch shows when it stops working (``tests/test_patches.py``).

Two kinds:

* **scoped** (context managers): the global is replaced while a block runs and put back
  afterwards, for code that must run torchtitan's own function with one piece swapped;
* **process-wide** (``install_*``): the CPU runtime (:mod:`titan_phases.runtime.cpu`) installs
  them once, in processes without an accelerator only, so GPU code paths stay stock torchtitan.

Nothing else in titan_phases assigns to a torch or torchtitan module attribute.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

__all__ = [
    "CHECKED_AGAINST",
    "fp32_total_norm",
    "install_get_peak_flops",
    "install_get_train_spec",
    "install_histc",
    "install_maybe_enable_profiling",
    "install_permute_indices",
    "mesh_device_type",
    "profiler_class",
    "set_torchtitan_device",
    "torchtitan_build_optimizers",
]

CHECKED_AGAINST = {"torchtitan": "0.2.2", "torch": "2.13.0"}
"""The releases whose source every patch here was read against."""


@contextlib.contextmanager
def torchtitan_build_optimizers(builder: Callable[..., Any]) -> Iterator[None]:
    """``torchtitan.components.optimizer.build_optimizers`` is ``builder`` inside the block.

    torchtitan's builders that add to a container (``build_optimizers_with_moe_load_balancing``)
    build it by calling that module global; a phased spec runs them with the phased builder in
    its place (:func:`titan_phases.components.optimizer.phased_optimizer_builder`).
    """
    from torchtitan.components import optimizer as tt_optimizer

    with mock.patch.object(tt_optimizer, "build_optimizers", builder):
        yield


@contextlib.contextmanager
def mesh_device_type(device_type: str) -> Iterator[None]:
    """``torchtitan.distributed.parallel_dims.device_type`` is ``device_type`` inside the block.

    torchtitan builds its device mesh on that module's device type ("cuda" even on machines
    without one); ``titan-phases plan`` lays a job out over a fake process group on "cpu"
    (:mod:`titan_phases.plan.layout`).
    """
    from torchtitan.distributed import parallel_dims as tt_parallel_dims

    with mock.patch.object(tt_parallel_dims, "device_type", device_type):
        yield


@contextlib.contextmanager
def fp32_total_norm() -> Iterator[None]:
    """``torch.nn.utils.get_total_norm`` returns its norm in fp32 inside the block.

    torchtitan's ``clip_grad_norm_`` all-reduces the gradient norm over the pipeline stages in
    the dtype ``get_total_norm`` returns: the grads' (bf16 with bf16 storage), or fp32 on a stage
    without any grad (all its params frozen). The collective then mismatches (gloo aborts:
    "Received data size doesn't match expected size"). The trainer runs its steps under this
    with pipeline parallelism; fp32 grads are unchanged by it.
    """
    import torch

    original = torch.nn.utils.get_total_norm

    def total_norm(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs).to(torch.float32)

    with mock.patch.object(torch.nn.utils, "get_total_norm", total_norm):
        yield


@contextlib.contextmanager
def profiler_class(cls: type) -> Iterator[None]:
    """``torch.profiler.profile`` is ``cls`` inside the block (the CPU runtime's profiling)."""
    import torch

    with mock.patch.object(torch.profiler, "profile", cls):
        yield


def set_torchtitan_device(device_type: str, device_module: Any) -> None:
    """Rewrite the ``device_type`` and ``device_module`` of every imported torchtitan module.

    torchtitan modules copy both from ``torchtitan.tools.utils`` at import time, so each copy is
    replaced (those still equal to the originals).
    """
    import torchtitan.tools.utils as tt_utils

    original_type, original_module = tt_utils.device_type, tt_utils.device_module
    for name, module in list(sys.modules.items()):
        if not name.startswith("torchtitan") or module is None:
            continue
        if getattr(module, "device_type", None) == original_type:
            module.device_type = device_type
        if getattr(module, "device_module", None) is original_module:
            module.device_module = device_module


def install_get_peak_flops(peak_flops: Callable[[], float]) -> None:
    """``torchtitan.tools.utils.get_peak_flops`` answers ``peak_flops()`` for any device name
    (torchtitan shells out to ``lspci`` and falls back to an A100 figure)."""
    import torchtitan.tools.utils as tt_utils

    tt_utils.get_peak_flops = lambda device_name: peak_flops()


def install_histc(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """``torch.histc`` becomes ``wrap(torch.histc)``, once per process."""
    import torch

    if not _installed(torch.histc):
        torch.histc = _mark(wrap(torch.histc))


def install_permute_indices(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """``torchtitan.models.moe.utils.generate_permute_indices`` becomes ``wrap(original)``,
    once per process."""
    import torchtitan.models.moe.utils as tt_moe_utils

    if not _installed(tt_moe_utils.generate_permute_indices):
        tt_moe_utils.generate_permute_indices = _mark(
            wrap(tt_moe_utils.generate_permute_indices)
        )


def install_maybe_enable_profiling(
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> None:
    """``torchtitan.tools.profiling.maybe_enable_profiling`` becomes ``wrap(original)``, once
    per process, also where ``torchtitan.train`` imported it already."""
    import torchtitan.tools.profiling as tt_profiling

    if _installed(tt_profiling.maybe_enable_profiling):
        return
    tt_profiling.maybe_enable_profiling = _mark(wrap(tt_profiling.maybe_enable_profiling))
    train_module = sys.modules.get("torchtitan.train")
    if train_module is not None:
        train_module.maybe_enable_profiling = tt_profiling.maybe_enable_profiling


def install_get_train_spec(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """``torchtitan.protocols.train_spec.get_train_spec`` becomes ``wrap(original)``, once per
    process. Code that imported the function by name before keeps the original."""
    import torchtitan.protocols.train_spec as tt_train_spec

    if not _installed(tt_train_spec.get_train_spec):
        tt_train_spec.get_train_spec = _mark(wrap(tt_train_spec.get_train_spec))


_INSTALLED: list[Callable[..., Any]] = []
"""The replacements installed in this process, so that installing twice wraps once."""


def _mark(replacement: Callable[..., Any]) -> Callable[..., Any]:
    _INSTALLED.append(replacement)
    return replacement


def _installed(function: Callable[..., Any]) -> bool:
    return any(function is replacement for replacement in _INSTALLED)
