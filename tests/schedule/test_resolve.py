"""ResolvedSchedule: what the trainer and the optimizer container read."""

from __future__ import annotations

import functools
import io

import pytest
import torch

from titan_phases.schedule import load_and_validate

from .conftest import make_job

SCHEDULE = {
    "0": {"params": ["output.weight", "norm.weight"], "max_transition_step": 100},
    "1": {"params": [r"layers\.5\..+"], "lr": 1e-4, "max_transition_step": 200},
    "2": {"params": [r"layers\.4\..+"], "max_transition_step": 300, "max_norm": 0.5,
          "new_optimizer": {"class_path": "SGD", "init_args": {"lr": 2e-3, "momentum": 0.9}}},
    "3": {"params": [r"layers\.3\..+"],
          "new_lr_scheduler": {"class_path": "LambdaLR", "init_args": {"lr_lambda": {
              "function": "tests.schedule.test_validation_rules.warmup",
              "kwargs": {"warmup_steps": 4}}},
              "init_pg_lrs": [1e-5, 2e-5, 3e-5, 4e-5]}},
}


@pytest.fixture(scope="module")
def resolved():
    return load_and_validate(make_job(SCHEDULE, lr_scale=0.5))


def test_params_per_phase_and_frozen(resolved):
    assert resolved.num_phases == 4
    assert resolved.phase_params[0] == ("norm.weight", "output.weight")
    assert resolved.trainable_params(1) == resolved.phase_params[0] + resolved.phase_params[1]
    assert resolved.phase_of("layers.4._checkpoint_wrapped_module.attention.wq.weight") == 2
    assert resolved.phase_of("tok_embeddings.weight") is None
    assert "tok_embeddings.weight" in resolved.frozen_params
    assert len(resolved.frozen_params) == 57 - 2 - 27
    assert [w.key for w in resolved.warnings] == ["params"]


def test_group_lrs_are_scaled(resolved):
    assert resolved.base_lr == 8e-4
    assert resolved.group_lr(0) == pytest.approx(4e-4)
    assert resolved.group_lr(1) == pytest.approx(5e-5)
    assert resolved.group_lr(2) == pytest.approx(1e-3)  # the new optimizer's lr
    assert resolved.group_lr(3) == pytest.approx(2e-5)  # init_pg_lrs[-1]
    assert resolved.init_pg_lrs(3) == pytest.approx((5e-6, 1e-5, 1.5e-5, 2e-5))
    assert resolved.init_pg_lrs(2) is None


def test_optimizer_and_max_norm_in_effect(resolved):
    assert resolved.optimizer_at(1) is None
    assert resolved.optimizer_at(3).class_path == "torch.optim.SGD"
    assert resolved.optimizer_kwargs(resolved.optimizer_at(3)) == pytest.approx(
        {"lr": 1e-3, "momentum": 0.9})
    assert resolved.max_norm_at(1) == 1.0
    assert resolved.max_norm_at(3) == 0.5


def test_lr_scheduler_kwargs_build_a_picklable_lambda(resolved):
    init = resolved.schedule.phases[3].new_lr_scheduler
    kwargs = resolved.lr_scheduler_kwargs(init)
    assert isinstance(kwargs["lr_lambda"], functools.partial)
    assert kwargs["lr_lambda"](1) == 0.5
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(4)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(groups, lr=1.0), **kwargs)
    torch.save(scheduler.state_dict(), io.BytesIO())  # checkpoints must be able to save it


def test_same_result_twice():
    first, second = (load_and_validate(make_job(SCHEDULE)) for _ in range(2))
    assert first == second
