"""fp32 master weights of a bf16 model, in one process: what the optimizer steps, what a
param that leaves keeps, and what checkpoints hold."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torchtitan.components.checkpoint import ModelWrapper

from tests.components.phased_workers import batch, build_model, freeze_to, loss_of, params_with
from titan_phases.components.master_weights import ModelStateWithMasters
from titan_phases.components.optimizer import PhasedOptimizersContainer

KWARGS = {"lr": 1e-2, "weight_decay": 0.0}


def _bf16_stack(prefixes=("head.", "blocks.2.")):
    model = build_model().to(torch.bfloat16)
    freeze_to([model], prefixes)
    optimizers = PhasedOptimizersContainer([model], torch.optim.AdamW, KWARGS)
    optimizers.use_fp32_masters()
    return model, optimizers


def _step(model: nn.Module, optimizers: PhasedOptimizersContainer, step: int) -> None:
    optimizers.zero_grad()
    loss_of([model], *batch(step)).float().backward()
    optimizers.step()


def test_the_optimizer_steps_fp32_masters_and_the_params_take_their_rounded_values():
    model, optimizers = _bf16_stack()
    head = model.head.weight
    master = optimizers.masters.master(head)
    assert master.dtype == torch.float32 and torch.equal(master, head.float())
    for step in range(3):
        _step(model, optimizers, step)
    state = optimizers.optimizers[0].state[master]
    assert state["exp_avg"].dtype == torch.float32
    assert head.dtype == torch.bfloat16 and torch.equal(head, master.to(torch.bfloat16))
    # The masters keep what bf16 rounds away: steps smaller than the weights' resolution.
    assert not torch.equal(master, head.float())
    assert all(m.grad is None for m in optimizers.masters)


def test_masters_follow_fp32_training_where_pure_bf16_drifts():
    def train(dtype: torch.dtype, masters: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model().to(dtype)
        freeze_to([model], ("head.",))
        optimizers = PhasedOptimizersContainer([model], torch.optim.SGD, {"lr": 1e-4})
        if masters:
            optimizers.use_fp32_masters()
        start = model.head.weight.detach().float().clone()
        for step in range(20):
            _step(model, optimizers, step)
        trained = optimizers.masters.master(model.head.weight) if masters else model.head.weight
        return trained.detach().float() - start

    fp32 = train(torch.float32, masters=False)
    with_masters = train(torch.bfloat16, masters=True)
    pure_bf16 = train(torch.bfloat16, masters=False)
    # lr 1e-4 updates are below bf16's resolution at these weights: pure bf16 loses them.
    error = (with_masters - fp32).norm() / fp32.norm()
    assert error < 0.05, error
    assert (pure_bf16 - fp32).norm() / fp32.norm() > 0.5


def test_a_param_that_leaves_is_written_back_and_its_master_freed():
    model, optimizers = _bf16_stack()
    _step(model, optimizers, 0)
    block2 = params_with(model, ("blocks.2.",))
    masters = [optimizers.masters.master(p) for p in block2]
    for param in block2:
        param.requires_grad_(False)
    block1 = params_with(model, ("blocks.1.",))
    for param in block1:
        param.requires_grad_(True)
    optimizers.add_phase(1, [block1], lr=1e-3, leaving_per_part=[block2], groups=(0, 1))
    assert len(optimizers.masters) == len(params_with(model, ("head.", "blocks.1.")))
    assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in zip(block2, masters))
    assert all(m not in optimizers.optimizers[0].state for m in masters)
    assert all(p.grad is None for p in block2)
    _step(model, optimizers, 1)
    entering = optimizers.masters.master(block1[0])
    assert optimizers.optimizers[0].state[entering]["exp_avg"].dtype == torch.float32


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_checkpoints_hold_the_masters_in_the_params_place_and_resume_exactly(tmp_path: Path):
    model, optimizers = _bf16_stack()
    _step(model, optimizers, 0)
    model_state = ModelStateWithMasters(ModelWrapper([model]), optimizers.masters)
    saved = model_state.state_dict()
    assert saved["head.weight"].dtype == torch.float32  # trains: its master
    assert saved["blocks.0.lin.weight"].dtype == torch.bfloat16  # frozen: the bf16 weight
    dcp.save({"model": model_state, "optimizer": optimizers}, checkpoint_id=tmp_path)
    # Optimizer state is named as without masters: checkpoints of both kinds share keys.
    entries = dcp.FileSystemReader(tmp_path).read_metadata().state_dict_metadata
    assert "optimizer.state.head.weight.exp_avg" in entries
    _step(model, optimizers, 1)
    expected = [p.detach().clone() for p in model.parameters()]

    resumed, resumed_optimizers = _bf16_stack()
    resumed_state = ModelStateWithMasters(ModelWrapper([resumed]), resumed_optimizers.masters)
    states = {"model": resumed_state, "optimizer": resumed_optimizers}
    dcp.load(states, checkpoint_id=tmp_path)
    resumed_state.load_state_dict(resumed_state.state_dict())
    _step(resumed, resumed_optimizers, 1)
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), expected))


def test_fp32_weights_load_into_the_masters_in_full_precision(tmp_path: Path):
    source = build_model()
    dcp.save(source.state_dict(), checkpoint_id=tmp_path, no_dist=True)
    model, optimizers = _bf16_stack()
    model_state = ModelStateWithMasters(ModelWrapper([model]), optimizers.masters)
    destination = model_state.state_dict()
    dcp.load(destination, checkpoint_id=tmp_path, no_dist=True)
    model_state.load_state_dict(destination)
    assert torch.equal(optimizers.masters.master(model.head.weight), source.head.weight)
    assert torch.equal(model.head.weight, source.head.weight.to(torch.bfloat16))
    assert torch.equal(model.blocks["0"].lin.weight,
                       source.blocks["0"].lin.weight.to(torch.bfloat16))
