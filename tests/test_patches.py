"""Each patch of a torch or torchtitan global does what titan_phases relies on, and what it
replaces is still used the way the patch assumes (a torchtitan or torch upgrade that changes
either fails here). The process-wide patches run in a subprocess of their own."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import torch
import torchtitan.components.optimizer as tt_optimizer
import torchtitan.distributed.parallel_dims as tt_parallel_dims

from titan_phases import patches


def _builder(*args, **kwargs):
    raise AssertionError("not called here")


def test_build_optimizers_is_swapped_only_inside_the_block():
    original = tt_optimizer.build_optimizers
    with patches.torchtitan_build_optimizers(_builder):
        assert tt_optimizer.build_optimizers is _builder
    assert tt_optimizer.build_optimizers is original
    # The MoE builder builds its container by calling the module global.
    moe_builder = tt_optimizer.build_optimizers_with_moe_load_balancing
    assert "build_optimizers" in moe_builder.__code__.co_names


def test_the_mesh_device_type_is_cpu_only_inside_the_block():
    original = tt_parallel_dims.device_type
    with patches.mesh_device_type("cpu"):
        assert tt_parallel_dims.device_type == "cpu"
    assert tt_parallel_dims.device_type == original
    # ParallelDims builds its mesh on the module global.
    names = set()
    for attr in vars(tt_parallel_dims.ParallelDims).values():
        names.update(getattr(getattr(attr, "__code__", None), "co_names", ()))
    assert "device_type" in names


def test_the_profiler_class_is_swapped_only_inside_the_block():
    original = torch.profiler.profile

    class Profile(torch.profiler.profile):
        pass

    with patches.profiler_class(Profile):
        assert torch.profiler.profile is Profile
    assert torch.profiler.profile is original


_INSTALL_TWICE = textwrap.dedent(
    """
    import inspect

    import torch
    import torchtitan.models.moe.utils as tt_moe_utils
    import torchtitan.protocols.train_spec as tt_train_spec
    import torchtitan.tools.profiling as tt_profiling
    import torchtitan.tools.utils as tt_utils

    from titan_phases import patches

    originals = (torch.histc, tt_moe_utils.generate_permute_indices,
                 tt_profiling.maybe_enable_profiling, tt_train_spec.get_train_spec)
    assert "use_cpu" in inspect.signature(tt_moe_utils.generate_permute_indices).parameters

    def wrap(function):
        def wrapped(*args, **kwargs):
            return function(*args, **kwargs)
        wrapped.inner = function
        return wrapped

    for _ in range(2):
        patches.install_histc(wrap)
        patches.install_permute_indices(wrap)
        patches.install_maybe_enable_profiling(wrap)
        patches.install_get_train_spec(wrap)
        patches.install_get_peak_flops(lambda: 1.5)
    replaced = (torch.histc, tt_moe_utils.generate_permute_indices,
                tt_profiling.maybe_enable_profiling, tt_train_spec.get_train_spec)
    assert [r.inner for r in replaced] == list(originals)  # wrapped once, not twice
    assert tt_utils.get_peak_flops("any device") == 1.5

    import torchtitan.train as tt_train
    # The trainer module, imported after the CPU runtime is on, takes the replacement by name.
    assert tt_train.maybe_enable_profiling is tt_profiling.maybe_enable_profiling
    print("checked")
    """
)


def test_process_wide_patches_wrap_once_and_reach_what_torchtitan_calls():
    result = subprocess.run(
        [sys.executable, "-c", _INSTALL_TWICE], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "checked" in result.stdout, result.stderr[-3000:]


def test_the_total_grad_norm_is_fp32_inside_the_block_whatever_the_grads_dtype():
    import torchtitan.distributed.utils as tt_dist_utils

    grads = [torch.ones(3, dtype=torch.bfloat16)]
    assert torch.nn.utils.get_total_norm(grads).dtype == torch.bfloat16
    with patches.fp32_total_norm():
        assert torch.nn.utils.get_total_norm(grads).dtype == torch.float32
        assert torch.nn.utils.get_total_norm([]).dtype == torch.float32
    assert torch.nn.utils.get_total_norm(grads).dtype == torch.bfloat16
    # torchtitan's clip looks the function up on torch.nn.utils at every call.
    clip = inspect.unwrap(tt_dist_utils.clip_grad_norm_)  # under torch.no_grad
    assert "get_total_norm" in clip.__code__.co_names
