"""Phase 0's lr schedule equals torchtitan's ``build_lr_schedulers``, step by step."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
from torchtitan.components.lr_scheduler import build_lr_schedulers
from torchtitan.components.optimizer import OptimizersContainer
from torchtitan.config import LRScheduler as LRSchedulerConfig

from titan_phases.components.lr_scheduler import build_phased_lr_schedulers
from titan_phases.components.optimizer import PhasedOptimizersContainer

TRAINING_STEPS = 10
LR = 8e-4
SHAPES = {
    "warmup_then_decay": {"warmup_steps": 3},
    "no_warmup_wsd_min_lr": {"warmup_steps": 0, "decay_ratio": 0.4, "min_lr_factor": 0.1},
    "warmup_longer_than_run": {"warmup_steps": 12},
    "decay_ratio_clipped": {"warmup_steps": 2, "decay_ratio": 0.9, "min_lr_factor": 0.05},
    "total_steps_decoupled": {"warmup_steps": 2, "total_steps": 20, "min_lr_factor": 0.2},
}
CASES = [
    pytest.param(decay_type, shape, id=f"{decay_type}-{name}")
    for decay_type, (name, shape) in itertools.product(("linear", "sqrt", "cosine"), SHAPES.items())
]


KWARGS = {"lr": LR, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "foreach": True}


def _theirs(config: LRSchedulerConfig):
    optimizers = OptimizersContainer([nn.Linear(2, 2), nn.Linear(2, 2)], torch.optim.AdamW, KWARGS)
    return optimizers, build_lr_schedulers(optimizers, config, TRAINING_STEPS)


def _ours(config: LRSchedulerConfig, parts: list[nn.Module]):
    optimizers = PhasedOptimizersContainer(parts, torch.optim.AdamW, KWARGS)
    return optimizers, build_phased_lr_schedulers(optimizers, config, TRAINING_STEPS)


def _group_lrs(optimizers) -> list[list[float]]:
    return [[g["lr"] for g in optimizer.param_groups] for optimizer in optimizers]


@pytest.mark.parametrize(("decay_type", "shape"), CASES)
def test_phase0_lrs_equal_torchtitans_every_step(decay_type, shape):
    config = LRSchedulerConfig(decay_type=decay_type, **shape)
    theirs_optimizers, theirs = _theirs(config)
    ours_optimizers, ours = _ours(config, [nn.Linear(2, 2), nn.Linear(2, 2)])
    seen = set()
    for _ in range(TRAINING_STEPS):
        assert [s.get_last_lr() for s in ours] == [s.get_last_lr() for s in theirs]
        assert _group_lrs(ours_optimizers) == _group_lrs(theirs_optimizers)
        seen.add(ours.schedulers[0].get_last_lr()[0])
        theirs_optimizers.step(), ours_optimizers.step()
        theirs.step(), ours.step()
    assert len(seen) > 2  # the schedule moved: warmup and/or decay were exercised


def test_phase0_group_keeps_torchtitans_lrs_through_a_transition():
    config = LRSchedulerConfig(warmup_steps=3, decay_type="cosine", min_lr_factor=0.1)
    theirs_optimizers, theirs = _theirs(config)
    parts = [nn.Linear(2, 2), nn.Linear(2, 2)]
    parts[1].requires_grad_(False)  # thawed at step 4 as phase 1
    ours_optimizers, ours = _ours(config, parts)
    for step in range(TRAINING_STEPS):
        if step == 4:
            parts[1].requires_grad_(True)
            ours_optimizers.add_phase(1, [[], list(parts[1].parameters())], lr=1e-3)
            ours.add_phase(1)
        their_lr = theirs.schedulers[0].get_last_lr()[0]
        assert ours.schedulers[0].get_last_lr()[0] == their_lr
        if step >= 4:
            assert ours.schedulers[1].get_last_lr() == pytest.approx(
                [their_lr, 1e-3 * their_lr / LR], rel=1e-12
            )
        theirs_optimizers.step(), ours_optimizers.step()
        theirs.step(), ours.step()
