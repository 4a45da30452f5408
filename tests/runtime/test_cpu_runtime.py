"""The CPU/gloo runtime layer. It only switches on without an accelerator, so these tests are
skipped on GPU machines; the activation runs in its own process, so the patches it makes to
torchtitan never reach the other tests of this session."""

import subprocess
import sys
import textwrap

import pytest
import torch

from tests.dist import run_ranks
from titan_phases.runtime import cpu

pytestmark = pytest.mark.skipif(
    cpu.accelerator_available(), reason="the CPU runtime stays off where an accelerator exists"
)

_ACTIVATE_AND_CHECK = textwrap.dedent(
    """
    import sys

    # Both copy device_type at import time.
    import torchtitan.components.metrics  # noqa: F401
    import torchtitan.distributed.utils  # noqa: F401

    from titan_phases.runtime import cpu

    assert cpu.activate_if_no_accelerator()
    assert cpu.activate_if_no_accelerator()  # idempotent
    for name, module in sys.modules.items():
        if name.startswith("torchtitan") and hasattr(module, "device_type"):
            assert module.device_type == "cpu", name
    import torchtitan.tools.utils as tt_utils

    assert isinstance(tt_utils.device_module, cpu.CPUDeviceModule)
    assert tt_utils.get_peak_flops("anything") == cpu.measured_cpu_peak_flops()
    print("checked")
    """
)


def test_activation_switches_every_torchtitan_copy_of_the_device():
    result = subprocess.run(
        [sys.executable, "-c", _ACTIVATE_AND_CHECK], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "checked" in result.stdout, result.stderr[-3000:]


def test_cpu_device_module_reports_host_facts():
    module = cpu.CPUDeviceModule()
    stats = module.memory_stats()
    assert stats["reserved_bytes.all.peak"] >= stats["active_bytes.all.peak"] > 0
    assert module.get_device_properties().total_memory > 2**30
    assert module.get_device_name().startswith("CPU")
    module.reset_peak_memory_stats()
    try:
        getattr(module, "memory")  # noqa: B009 - the attribute access itself must raise
    except RuntimeError as exc:
        assert "CUDA-only" in str(exc)
    else:
        raise AssertionError("memory snapshots must be refused on CPU")


def test_measured_peak_flops_is_plausible():
    flops = cpu.measured_cpu_peak_flops()
    assert 1e8 < flops < 1e13


def _profile_two_steps(rank: int, world_size: int, trace_dir: str) -> None:
    from torchtitan.config import ConfigManager

    cpu.activate_if_no_accelerator()
    import torchtitan.tools.profiling as tt_profiling

    config = ConfigManager().parse_args(
        ["--model.hf_assets_path", ".", "--profiling.enable_profiling",
         "--profiling.profile_freq", "2", "--profiling.profiler_warmup", "0",
         "--profiling.profiler_active", "1"]
    )
    with tt_profiling.maybe_enable_profiling(
        config.profiling, global_step=0, base_folder=trace_dir
    ) as profiler:
        assert profiler is not None
        for _ in range(2):
            torch.mm(torch.ones(8, 8), torch.ones(8, 8))
            profiler.step()


@pytest.mark.e2e
def test_profiler_accepts_torchtitan_cpu_activities(tmp_path):
    run_ranks(_profile_two_steps, 1, str(tmp_path))
    assert list(tmp_path.rglob("*trace*")), "a CPU trace should have been written"


def test_histc_counts_integer_cpu_tensors_as_moe_routing_needs():
    cpu.activate_if_no_accelerator()
    experts = torch.tensor([[0, 3], [3, 7], [1, 3]])
    counts = torch.histc(experts.view(-1), bins=8, min=0, max=8)
    assert counts.dtype == torch.int64
    assert counts.tolist() == torch.bincount(experts.view(-1), minlength=8).tolist()
    values = torch.tensor([0.5, 1.5, 1.7])
    assert torch.histc(values, bins=2, min=0, max=2).tolist() == [1.0, 2.0]


def test_moe_token_permutation_uses_torchtitans_cpu_implementation():
    cpu.activate_if_no_accelerator()
    from torchtitan.models.moe import kernels
    from torchtitan.models.moe import utils as moe_utils

    counts = torch.tensor([3, 0, 5, 2], dtype=torch.int32)
    got = moe_utils.generate_permute_indices(counts, 4, 1, 48, 8)
    expected = kernels.generate_permute_indices(counts, 4, 1, 48, 8, use_cpu=True)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
