"""ResolvedSchedule: what the trainer and the optimizer container read."""

from __future__ import annotations

import functools
import inspect
import io

import pytest
import torch

from titan_phases.schedule import load_and_validate

from .conftest import find_problem, make_job, problems_of

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
    trainable = resolved.trainable_params(1)
    assert set(trainable) == set(resolved.phase_params[0] + resolved.phase_params[1])
    model_order = list(resolved.param_numels)
    assert list(trainable) == sorted(trainable, key=model_order.index)
    assert "layers.4.attention.wq.weight" in resolved.phase_params[2]
    assert resolved.groups(3) == (0, 1, 2, 3)
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
    init = resolved.phases[3].new_lr_scheduler
    kwargs = resolved.lr_scheduler_kwargs(init)
    assert isinstance(kwargs["lr_lambda"], functools.partial)
    assert kwargs["lr_lambda"](1) == 0.5
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(4)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(groups, lr=1.0), **kwargs)
    torch.save(scheduler.state_dict(), io.BytesIO())  # checkpoints must be able to save it


def test_same_result_twice():
    first, second = (load_and_validate(make_job(SCHEDULE)) for _ in range(2))
    assert first == second


REINITS = {
    "0": {"params": ["output.weight", "norm.weight"], "max_transition_step": 10},
    "1": {"params": [r"layers\.5\..+"], "lr": 2e-3, "max_transition_step": 20,
          "new_optimizer": {"class_path": "SGD", "init_args": {"lr": 4e-3}},
          "new_lr_scheduler": {"class_path": "StepLR", "init_args": {"step_size": 3}}},
    "2": {"params": [r"layers\.4\..+"], "lr": 1e-3, "max_transition_step": 30,
          "new_optimizer": {"class_path": "AdamW", "init_args": {"lr": 3e-3}},
          "new_lr_scheduler": {"class_path": "StepLR", "init_args": {"step_size": 3}}},
    "3": {"params": [r"layers\.3\..+"], "max_transition_step": 40,
          "new_lr_scheduler": {"class_path": "ExponentialLR", "init_args": {"gamma": 0.8},
                               "init_pg_lrs": [1e-4, 2e-4, 3e-4, 4e-4]}},
    "4": {"params": [r"layers\.2\..+"], "lr": 6e-4, "max_transition_step": 50,
          "new_optimizer": {"class_path": "SGD", "init_args": {"momentum": 0.9}},
          "new_lr_scheduler": {"class_path": "ExponentialLR", "init_args": {"gamma": 0.8}}},
    "5": {"params": [r"layers\.1\..+"], "lr": 7e-4,
          "new_lr_scheduler": {"class_path": "ExponentialLR", "init_args": {"gamma": 0.8},
                               "use_current_optimizer_pg_lrs": True}},
}


def test_new_schedulers_restart_groups_at_ftss_initial_lrs():
    resolved = load_and_validate(make_job(REINITS, steps=100))
    # An optimizer reinit restarts phase 0's group at the new optimizer's lr, the others at
    # the lrs they joined with (FTS rebuilds the optimizer and re-adds the phases' groups).
    assert resolved.plan(1).lr_scheduler.init_pg_lrs == (4e-3, 2e-3)
    assert resolved.plan(2).lr_scheduler.init_pg_lrs == (3e-3, 2e-3, 1e-3)
    assert resolved.plan(3).lr_scheduler.init_pg_lrs == (1e-4, 2e-4, 3e-4, 4e-4)
    # init_pg_lrs outlast a later reinit (FTS replays them); an optimizer without an lr
    # argument restarts phase 0's group at the class's default.
    assert resolved.initial_lrs(4) == (1e-4, 2e-4, 3e-4, 4e-4, 6e-4)
    assert resolved.plan(4).lr_scheduler.init_pg_lrs == (1e-4, 2e-4, 3e-4, 4e-4, 6e-4)
    # use_current_optimizer_pg_lrs: the containers take the current lrs.
    assert resolved.plan(5).lr_scheduler.init_pg_lrs is None
    assert resolved.plan(5).lr_scheduler.use_current_optimizer_pg_lrs


def test_initial_lrs_are_scaled_and_follow_the_latest_optimizer():
    schedule = {k: dict(v) for k, v in REINITS.items() if k in ("0", "1", "2")}
    schedule["2"] = {key: v for key, v in schedule["2"].items() if key != "new_lr_scheduler"}
    schedule["3"] = {"params": [r"layers\.3\..+"], "new_lr_scheduler": {
        "class_path": "StepLR", "init_args": {"step_size": 3}}}
    resolved = load_and_validate(make_job(schedule, steps=100, lr_scale=0.5))
    # Phase 3 adds no optimizer: its group and phase 0's take the AdamW's lr (scaled).
    assert resolved.initial_lrs(3) == pytest.approx((1.5e-3, 1e-3, 5e-4, 1.5e-3))
    assert resolved.initial_lrs(0) == pytest.approx((4e-4,))


def test_sgd_without_lr_restarts_phase0_group_at_its_default():
    schedule = {k: dict(v) for k, v in REINITS.items() if k in ("0", "1")}
    schedule["1"]["new_optimizer"] = {"class_path": "SGD", "init_args": {"momentum": 0.9}}
    resolved = load_and_validate(make_job(schedule, steps=100))
    default = inspect.signature(torch.optim.SGD).parameters["lr"].default
    assert resolved.plan(1).lr_scheduler.init_pg_lrs == (default, 2e-3)


def test_apply_lambdas_new_pgs_reaches_the_resolved_schedule():
    assert load_and_validate(make_job(SCHEDULE)).apply_lambdas_new_pgs is True
    off = load_and_validate(make_job(SCHEDULE, apply_lambdas_new_pgs=False))
    assert off.apply_lambdas_new_pgs is False


def test_a_head_tied_to_the_embeddings_is_resolved_through_the_models_ties():
    # torchtitan's qwen3 debug model ties output.weight to tok_embeddings.weight, which is the
    # name named_parameters() lists.
    generated = make_job(blocks_per_phase=4)
    generated.model.name = "qwen3"
    resolved = load_and_validate(generated)
    assert resolved.phase_params[0] == ("tok_embeddings.weight", "norm.weight")
    (fsdp,) = [w for w in resolved.warnings if w.key == "parallelism.data_parallel_shard_degree"]
    assert "ties output.weight to tok_embeddings.weight" in fsdp.message
    assert [w.message for w in resolved.warnings if w.key == "params"] == [
        "output.weight is tied to tok_embeddings.weight (one parameter under both names): "
        "thawed here, in the first phase either name falls in, as tok_embeddings.weight"]
    written = make_job({"0": {"params": ["output.weight", "norm.weight"]}})
    written.model.name = "qwen3"
    problem = find_problem(problems_of(written), 0, "params[0]")
    assert problem.hint.startswith("output.weight is tied to tok_embeddings.weight")
    one_shard = make_job(blocks_per_phase=4)
    one_shard.model.name = "qwen3"
    one_shard.parallelism.data_parallel_shard_degree = 1
    assert not [w for w in load_and_validate(one_shard).warnings
                if w.key.startswith("parallelism")]
