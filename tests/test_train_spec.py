"""The phased TrainSpecs: every family registered, and what a spec's builders add survives."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torchtitan.components.optimizer import build_optimizers_with_moe_load_balancing
from torchtitan.protocols.train_spec import get_train_spec

from titan_phases.components.optimizer import PhasedOptimizersContainer
from titan_phases.components.thaw import set_trainable
from titan_phases.config import parse_job_config
from titan_phases.runtime.cpu import activate_if_no_accelerator
from titan_phases.train_spec import is_phased, PHASED_MODEL_FAMILIES, register_train_specs

# _update_expert_bias all-reduces token counts over the "loss" mesh; one process has none.
ONE_PROCESS = SimpleNamespace(get_optional_mesh=lambda name: None)


@pytest.fixture(autouse=True, scope="module")
def _setup() -> None:
    activate_if_no_accelerator()  # torch.histc on expert indices, as on CPU ranks
    register_train_specs()


@pytest.mark.parametrize("family", PHASED_MODEL_FAMILIES)
def test_every_family_has_a_phased_spec(family):
    assert set(PHASED_MODEL_FAMILIES) >= {"llama3", "llama4", "qwen3", "deepseek_v3", "gpt_oss"}
    spec = get_train_spec(f"{family}_phases")
    assert is_phased(spec) and not is_phased(get_train_spec(family))


def _deepseek(seed: int = 0) -> tuple[torch.nn.Module, object]:
    job_config = parse_job_config([
        "--model.name", "deepseek_v3_phases", "--model.flavor", "debugmodel",
        "--training.seq_len", "32", "--optimizer.lr", "1e-3",
    ])
    args = copy.deepcopy(get_train_spec("deepseek_v3").model_args["debugmodel"])
    args.update_from_config(job_config)
    args.n_layers = 3  # one dense block, two MoE blocks
    torch.manual_seed(seed)
    model = get_train_spec("deepseek_v3").model_cls(args)
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    return model, job_config


def _train(model, optimizers, steps: int) -> list[torch.Tensor]:
    """Expert biases of every MoE block after each step."""
    torch.manual_seed(1)
    biases = []
    for _ in range(steps):
        tokens = torch.randint(0, 2048, (2, 32))
        model(tokens).float().logsumexp(-1).mean().backward()
        optimizers.step()
        optimizers.zero_grad()
        biases.append(torch.cat([b.detach().clone() for n, b in model.named_buffers()
                                 if n.endswith("expert_bias")]))
    return biases


def test_moe_expert_bias_follows_stock_under_phases_and_across_a_rebuild():
    stock_model, job_config = _deepseek()
    phased_model = copy.deepcopy(stock_model)
    stock = build_optimizers_with_moe_load_balancing(
        [stock_model], job_config.optimizer, ONE_PROCESS
    )
    phased = get_train_spec("deepseek_v3_phases").build_optimizers_fn(
        [phased_model], job_config.optimizer, ONE_PROCESS
    )
    assert isinstance(phased, PhasedOptimizersContainer)
    # Same params trainable (all of them, phase 0 = everything): the same bias trajectory.
    expected = _train(stock_model, stock, 3)
    got = _train(phased_model, phased, 3)
    assert all(torch.equal(e, g) for e, g in zip(expected, got))
    assert not torch.equal(expected[0], expected[-1])  # the hook does update the bias


def test_moe_bias_keeps_updating_with_frozen_experts_and_after_an_optimizer_switch():
    model, job_config = _deepseek()
    head = ["output.weight", "norm.weight"]
    set_trainable([model], head)
    optimizers = get_train_spec("deepseek_v3_phases").build_optimizers_fn(
        [model], job_config.optimizer, ONE_PROCESS
    )
    phase0 = _train(model, optimizers, 2)
    assert not torch.equal(phase0[0], phase0[1])  # experts frozen, routing still balanced
    block2 = [n for n, _ in model.named_parameters() if n.startswith("layers.2.")]
    set_trainable([model], head + block2)
    params = [p for n, p in model.named_parameters() if n in block2]
    optimizers.add_phase(1, [params], lr=1e-3, optimizer=("SGD", {"lr": 1e-3, "momentum": 0.9}))
    phase1 = _train(model, optimizers, 2)
    assert not torch.equal(phase0[-1], phase1[0]) and not torch.equal(phase1[0], phase1[1])


def test_moe_parts_are_scheduled_by_the_documented_patterns(tmp_path, capsys):
    from titan_phases.cli import main

    job = tmp_path / "job.toml"
    job.write_text(r"""
[job]
custom_config_module = "titan_phases.config.job_config"
[model]
name = "deepseek_v3_phases"
flavor = "debugmodel"
[training]
steps = 30
[phases.schedule.0]
params = ["output.weight", "norm.weight", 'layers\.\d+\.moe\.router\..+']
max_transition_step = 10
[phases.schedule.1]
params = ['layers\.\d+\.moe\.shared_experts\..+']
max_transition_step = 20
[phases.schedule.2]
params = ['layers\.\d+\.moe\.experts\..+']
""")
    assert main(["show", "--params", "--job.config_file", str(job)]) == 0
    out = capsys.readouterr().out
    moe_blocks = range(1, 6)  # debugmodel: block 0 is dense, blocks 1-5 are MoE
    for i in moe_blocks:
        assert f"layers.{i}.moe.router.gate.weight" in out
        assert f"layers.{i}.moe.shared_experts.w2.weight" in out
        assert f"layers.{i}.moe.experts.w3" in out
    assert "layers.0.moe" not in out
