"""enter_phase: one PhasePlan in, the model and both containers in the phase out."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchtitan.config import LRScheduler as LRSchedulerConfig

from titan_phases.components.lr_scheduler import build_phased_lr_schedulers
from titan_phases.components.optimizer import PhasedOptimizersContainer
from titan_phases.components.phase_controller import Transition
from titan_phases.components.transition import enter_phase, transition_summary
from titan_phases.schedule import LRSchedulerChange, PhasePlan


def _model() -> nn.Module:
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    model.output = nn.Linear(2, 2, bias=False)
    return model


def _phase0(model: nn.Module):
    for name, param in model.named_parameters():
        param.requires_grad_(name == "output.weight")
    optimizers = PhasedOptimizersContainer([model], torch.optim.AdamW, {"lr": 0.1})
    lr_schedulers = build_phased_lr_schedulers(optimizers, LRSchedulerConfig(), 10)
    return optimizers, lr_schedulers


def _plan(index: int, params: tuple[str, ...], trainable: tuple[str, ...], **changes) -> PhasePlan:
    fields = dict(optimizer=None, lr_scheduler=None, max_norm=1.0, lr=0.01)
    fields.update(changes)
    return PhasePlan(index=index, params=params, trainable=trainable, **fields)


def test_a_phase_thaws_its_params_and_adds_one_group_at_its_lr():
    model = _model()
    optimizers, lr_schedulers = _phase0(model)
    plan = _plan(1, ("layers.1.weight", "layers.1.bias"),
                 ("output.weight", "layers.1.weight", "layers.1.bias"))
    count = enter_phase([model], optimizers, lr_schedulers, plan)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(plan.trainable) and count.tensors == 3 and count.elements == 10
    groups = optimizers.optimizers[0].param_groups
    assert [g["phase"] for g in groups] == [0, 1]
    assert groups[1]["params"] == [model.layers[1].weight, model.layers[1].bias]
    assert groups[1]["initial_lr"] == 0.01
    assert optimizers.phase == lr_schedulers.phase == 1
    summary = transition_summary(
        Transition(0, 1, 4, "max_transition_step"), plan, count,
        {n: p.numel() for n, p in model.named_parameters()}, optimizers, lr_schedulers,
    )
    assert summary.startswith("Phase 0 -> 1 after step 4 (max_transition_step): thawed 2 tensors")
    assert "(10 of 16 trainable); optimizer AdamW" in summary


def test_a_phase_with_a_new_optimizer_and_scheduler_rebuilds_both():
    model = _model()
    optimizers, lr_schedulers = _phase0(model)
    plan = _plan(
        1, ("layers.1.weight",), ("output.weight", "layers.1.weight"),
        optimizer=("SGD", {"lr": 0.5, "momentum": 0.9}),
        lr_scheduler=LRSchedulerChange("StepLR", {"step_size": 2}, (0.2, 0.05), False),
    )
    enter_phase([model], optimizers, lr_schedulers, plan)
    assert type(optimizers.optimizers[0]) is torch.optim.SGD
    assert type(lr_schedulers.schedulers[0]).__name__ == "StepLR"
    assert [g["lr"] for g in optimizers.optimizers[0].param_groups] == [0.2, 0.05]
