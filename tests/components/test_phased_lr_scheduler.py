"""PhasedLRSchedulersContainer: transitions, reinits and resume for every supported scheduler."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
import torch.nn as nn
from torch.optim import lr_scheduler as lrs
from torchtitan.config import LRScheduler as LRSchedulerConfig

from tests.components.phased_workers import build_model, freeze_to, params_with, PHASES
from titan_phases.components.checkpointing.format import PhaseMismatchError
from titan_phases.components.lr_scheduler import (
    build_phased_lr_schedulers,
    PhasedLRSchedulersContainer,
    WarmupStableDecayLR,
)
from titan_phases.components.optimizer import PhasedOptimizersContainer

PHASE0_LR, PHASE1_LR = 0.1, 0.03
HERE = __name__


def decay(step: int) -> float:
    return 0.95**step


def shrink(step: int) -> float:
    return 0.9 if step % 2 else 0.97


# (class path, init args as a schedule gives them, the same args as objects for torch)
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("LambdaLR", {"lr_lambda": f"{HERE}.decay"}, {"lr_lambda": decay}),
    ("MultiplicativeLR", {"lr_lambda": f"{HERE}.shrink"}, {"lr_lambda": shrink}),
    ("StepLR", {"step_size": 2, "gamma": 0.5}, {}),
    ("MultiStepLR", {"milestones": [1, 4], "gamma": 0.3}, {}),
    ("ExponentialLR", {"gamma": 0.9}, {}),
    ("CosineAnnealingLR", {"T_max": 6, "eta_min": 1e-3}, {}),
    ("CosineAnnealingWarmRestarts", {"T_0": 2, "T_mult": 2, "eta_min": 1e-3}, {}),
    ("ConstantLR", {"factor": 0.5, "total_iters": 3}, {}),
    ("LinearLR", {"start_factor": 0.2, "total_iters": 4}, {}),
    (
        "titan_phases.components.lr_scheduler.WarmupStableDecayLR",
        {
            "warmup_steps": 2,
            "stable_steps": 2,
            "decay_steps": 5,
            "decay_type": "cosine",
            "min_lr_factor": 0.1,
        },
        {},
    ),
    ("ReduceLROnPlateau", {"factor": 0.5, "patience": 0}, {}),
]
IDS = [case[0].rsplit(".", 1)[-1] for case in CASES]
METRICS = [1.0, 0.5, 0.6, 0.7, 0.7, 0.2, 0.3, 0.4, 0.4, 0.4]


def _torch_class(class_path: str) -> type:
    return (
        WarmupStableDecayLR
        if class_path.endswith("WarmupStableDecayLR")
        else getattr(lrs, class_path)
    )


def _optimizers() -> tuple[list[nn.Module], PhasedOptimizersContainer]:
    parts = [build_model()]
    freeze_to(parts, PHASES[0])
    return parts, PhasedOptimizersContainer(parts, torch.optim.SGD, {"lr": PHASE0_LR})


def _enter_phase1(parts, optimizers, lr_schedulers, lr_scheduler=None, **kwargs) -> None:
    new = params_with(parts[0], PHASES[1])
    for param in new:
        param.requires_grad_(True)
    optimizers.add_phase(1, [new], lr=PHASE1_LR)
    lr_schedulers.add_phase(1, lr_scheduler, **kwargs)


def _advance(optimizers, lr_schedulers: PhasedLRSchedulersContainer, step: int) -> None:
    optimizers.step()  # no grads: only marks the step, as the training loop's order requires
    if not lr_schedulers.step_on_metric(METRICS[step % len(METRICS)]):
        lr_schedulers.step()


def _lrs(optimizers: PhasedOptimizersContainer) -> list[float]:
    return [g["lr"] for g in optimizers.optimizers[0].param_groups]


def _reference(class_path, init_args, objects, group_lrs):
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in group_lrs]
    optimizer = torch.optim.SGD(groups)
    return optimizer, _torch_class(class_path)(optimizer, **(init_args | objects))


@pytest.mark.parametrize("apply_lambdas", [False, True], ids=["lambdas_off", "lambdas_on"])
@pytest.mark.parametrize(("class_path", "init_args", "objects"), CASES, ids=IDS)
def test_new_group_joins_the_running_schedule_as_in_fts(
    class_path, init_args, objects, apply_lambdas
):
    parts, optimizers = _optimizers()
    lr_schedulers = PhasedLRSchedulersContainer(
        optimizers, class_path, init_args, apply_lambdas_new_pgs=apply_lambdas
    )
    # Reference: FTS's add_optimizer_groups by hand on a plain torch optimizer and scheduler.
    reference_optimizer, reference = _reference(class_path, init_args, objects, [PHASE0_LR])
    plateau = isinstance(reference, lrs.ReduceLROnPlateau)
    lambdas = isinstance(reference, lrs.LambdaLR | lrs.MultiplicativeLR)

    def advance_reference(step: int) -> None:
        reference_optimizer.step()
        reference.step(METRICS[step % len(METRICS)]) if plateau else reference.step()

    for step in range(3):
        _advance(optimizers, lr_schedulers, step)
        advance_reference(step)
    _enter_phase1(parts, optimizers, lr_schedulers)
    start = PHASE1_LR
    if apply_lambdas and lambdas:
        start = PHASE1_LR * reference.lr_lambdas[-1](reference.last_epoch)
    reference_optimizer.add_param_group(
        {"params": [nn.Parameter(torch.zeros(1))], "lr": start, "initial_lr": PHASE1_LR}
    )
    if plateau:
        reference.min_lrs.append(reference.min_lrs[0])
    else:
        reference.base_lrs.append(PHASE1_LR)
    if lambdas:
        reference.lr_lambdas.append(reference.lr_lambdas[-1])

    scheduler = lr_schedulers.schedulers[0]
    new_group = optimizers.optimizers[0].param_groups[1]
    assert new_group["initial_lr"] == PHASE1_LR
    assert new_group["lr"] == start
    if not plateau:
        assert scheduler.base_lrs == [PHASE0_LR, PHASE1_LR]
    assert scheduler.get_last_lr() == _lrs(optimizers)
    for step in range(3, 9):
        _advance(optimizers, lr_schedulers, step)
        advance_reference(step)
        assert _lrs(optimizers) == [g["lr"] for g in reference_optimizer.param_groups]


@pytest.mark.parametrize("class_path", ["LambdaLR", CASES[-2][0]], ids=["LambdaLR", "WSD"])
def test_with_apply_lambdas_a_group_joining_a_lambda_schedule_follows_it_from_step_one(
    class_path,
):
    _, init_args, objects = next(case for case in CASES if case[0] == class_path)
    parts, optimizers = _optimizers()
    lr_schedulers = PhasedLRSchedulersContainer(optimizers, class_path, init_args)
    # The same scheduler over an optimizer that had the phase-1 group from the start.
    reference_optimizer, reference = _reference(
        class_path, init_args, objects, [PHASE0_LR, PHASE1_LR]
    )
    for step in range(9):
        if step == 3:
            _enter_phase1(parts, optimizers, lr_schedulers)
        if step >= 3:
            assert _lrs(optimizers) == pytest.approx(
                [g["lr"] for g in reference_optimizer.param_groups], rel=1e-12
            )
        _advance(optimizers, lr_schedulers, step)
        reference_optimizer.step()
        reference.step()


@pytest.mark.parametrize(("class_path", "init_args", "objects"), CASES, ids=IDS)
def test_reinit_then_resume_follows_the_same_lr_trajectory(class_path, init_args, objects):
    def phase1_stack() -> tuple[PhasedOptimizersContainer, PhasedLRSchedulersContainer]:
        parts, optimizers = _optimizers()
        lr_schedulers = build_phased_lr_schedulers(
            optimizers, LRSchedulerConfig(warmup_steps=2), 10
        )
        _enter_phase1(
            parts, optimizers, lr_schedulers, (class_path, init_args), init_pg_lrs=[0.2, 0.05]
        )
        return optimizers, lr_schedulers

    optimizers, lr_schedulers = phase1_stack()
    scheduler = lr_schedulers.schedulers[0]
    assert type(scheduler) is _torch_class(class_path)
    assert [g["initial_lr"] for g in optimizers.optimizers[0].param_groups] == [0.2, 0.05]
    if not isinstance(scheduler, lrs.ReduceLROnPlateau):
        assert scheduler.base_lrs == [0.2, 0.05]
    for step in range(4):
        _advance(optimizers, lr_schedulers, step)
    saved_optimizer, saved_schedulers = optimizers.state_dict(), lr_schedulers.state_dict()

    resumed_optimizers, resumed_schedulers = phase1_stack()
    resumed_optimizers.load_state_dict(saved_optimizer)
    resumed_schedulers.load_state_dict(saved_schedulers)
    assert resumed_schedulers.schedulers[0].last_epoch == scheduler.last_epoch
    for step in range(4, 10):
        _advance(optimizers, lr_schedulers, step)
        _advance(resumed_optimizers, resumed_schedulers, step)
        assert _lrs(resumed_optimizers) == _lrs(optimizers)
        assert resumed_schedulers.schedulers[0].get_last_lr() == scheduler.get_last_lr()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, lambda current: [PHASE0_LR, PHASE1_LR]),  # the groups' initial lrs
        ({"use_current_optimizer_pg_lrs": True}, lambda current: current),
        ({"init_pg_lrs": [0.2, 0.05]}, lambda current: [0.2, 0.05]),
        (
            {"init_pg_lrs": [0.2, 0.05], "use_current_optimizer_pg_lrs": True},
            lambda current: [0.2, 0.05],
        ),
    ],
    ids=["initial_lr", "use_current_optimizer_pg_lrs", "init_pg_lrs", "init_pg_lrs_wins"],
)
def test_reinit_start_lrs_follow_fts_precedence(kwargs, expected):
    parts, optimizers = _optimizers()
    lr_schedulers = build_phased_lr_schedulers(optimizers, LRSchedulerConfig(warmup_steps=4), 10)
    _advance(optimizers, lr_schedulers, 0)
    new = params_with(parts[0], PHASES[1])
    for param in new:
        param.requires_grad_(True)
    optimizers.add_phase(1, [new], lr=PHASE1_LR)
    current = _lrs(optimizers)
    lr_schedulers.add_phase(1, ("ExponentialLR", {"gamma": 0.5}), **kwargs)
    starts = expected(current)
    assert [g["initial_lr"] for g in optimizers.optimizers[0].param_groups] == starts
    assert lr_schedulers.schedulers[0].base_lrs == starts
    assert _lrs(optimizers) == starts  # ExponentialLR at its step 0
    _advance(optimizers, lr_schedulers, 1)
    assert _lrs(optimizers) == [lr * 0.5 for lr in starts]


def test_schedule_continues_on_an_optimizer_rebuilt_as_another_class():
    parts, optimizers = _optimizers()
    lr_schedulers = PhasedLRSchedulersContainer(optimizers, "ExponentialLR", {"gamma": 0.5})
    for step in range(2):
        _advance(optimizers, lr_schedulers, step)
    new = params_with(parts[0], PHASES[1])
    for param in new:
        param.requires_grad_(True)
    optimizers.add_phase(1, [new], lr=PHASE1_LR, optimizer=("AdamW", {"lr": 1.0}))
    lr_schedulers.add_phase(1)
    assert lr_schedulers.schedulers[0].optimizer is optimizers.optimizers[0]
    # The carried-over lr decays on; the new group starts at its lr (FTS: no lambdas here).
    assert _lrs(optimizers) == [PHASE0_LR * 0.25, PHASE1_LR]
    _advance(optimizers, lr_schedulers, 2)
    assert _lrs(optimizers) == [PHASE0_LR * 0.125, PHASE1_LR * 0.5]


def test_step_and_step_on_metric_each_drive_only_their_kind():
    _, optimizers = _optimizers()
    plateau = PhasedLRSchedulersContainer(
        optimizers, "ReduceLROnPlateau", {"factor": 0.5, "patience": 0}
    )
    plateau.step()
    assert _lrs(optimizers) == [PHASE0_LR]
    assert plateau.step_on_metric(1.0) and plateau.step_on_metric(2.0)
    assert _lrs(optimizers) == [PHASE0_LR * 0.5]

    _, optimizers = _optimizers()
    per_step = PhasedLRSchedulersContainer(optimizers, "ExponentialLR", {"gamma": 0.5})
    assert not per_step.step_on_metric(1.0)
    assert _lrs(optimizers) == [PHASE0_LR]


def test_loading_state_of_another_phase_or_scheduler_fails_naming_both():
    parts, optimizers = _optimizers()
    lr_schedulers = PhasedLRSchedulersContainer(optimizers, "StepLR", {"step_size": 2})
    phase0_state = lr_schedulers.state_dict()
    _enter_phase1(parts, optimizers, lr_schedulers)
    phase1_state = lr_schedulers.state_dict()
    with pytest.raises(
        PhaseMismatchError, match=r"saved in phase 0 .* live schedulers are in phase 1"
    ):
        lr_schedulers.load_state_dict(phase0_state)

    _, other_optimizers = _optimizers()
    phase0_schedulers = PhasedLRSchedulersContainer(other_optimizers, "StepLR", {"step_size": 2})
    with pytest.raises(
        PhaseMismatchError, match=r"saved in phase 1 .* live schedulers are in phase 0"
    ):
        phase0_schedulers.load_state_dict(phase1_state)
    exponential = PhasedLRSchedulersContainer(other_optimizers, "ExponentialLR", {"gamma": 0.5})
    with pytest.raises(PhaseMismatchError, match=r"StepLR\).*ExponentialLR\)"):
        exponential.load_state_dict(phase0_state)


def test_changed_init_args_warn_and_the_saved_position_is_restored(caplog):
    _, optimizers = _optimizers()
    lr_schedulers = PhasedLRSchedulersContainer(optimizers, "StepLR", {"step_size": 2})
    for step in range(3):
        _advance(optimizers, lr_schedulers, step)
    _, other_optimizers = _optimizers()
    other = PhasedLRSchedulersContainer(other_optimizers, "StepLR", {"step_size": 3})
    with caplog.at_level(logging.WARNING, logger="titan_phases.components.lr_scheduler"):
        other.load_state_dict(lr_schedulers.state_dict())
    assert "init args differ" in caplog.text
    assert other.schedulers[0].last_epoch == 3


def test_invalid_transitions_and_schedulers_are_rejected():
    parts, optimizers = _optimizers()
    lr_schedulers = build_phased_lr_schedulers(optimizers, LRSchedulerConfig(), 10)
    with pytest.raises(ValueError, match="call optimizers.add_phase"):
        lr_schedulers.add_phase(1)
    with pytest.raises(ValueError, match="SequentialLR is not supported: it wraps other"):
        PhasedLRSchedulersContainer(optimizers, "SequentialLR", {})
    with pytest.raises(TypeError, match="is not an lr scheduler"):
        PhasedLRSchedulersContainer(optimizers, "torch.optim.SGD", {})
    with pytest.raises(TypeError, match="dotted paths"):
        PhasedLRSchedulersContainer(optimizers, "LambdaLR", {"lr_lambda": decay})
    new = params_with(parts[0], PHASES[1])
    for param in new:
        param.requires_grad_(True)
    optimizers.add_phase(1, [new], lr=PHASE1_LR)
    with pytest.raises(ValueError, match="apply only with a new lr scheduler"):
        lr_schedulers.add_phase(1, init_pg_lrs=[0.1, 0.1])
    with pytest.raises(ValueError, match="init_pg_lrs has 1 entries, expected 2"):
        lr_schedulers.add_phase(1, ("StepLR", {"step_size": 1}), init_pg_lrs=[0.1])
    lr_schedulers.add_phase(1)
    assert lr_schedulers.phase == 1


def test_untested_scheduler_runs_with_a_warning(caplog):
    parts, optimizers = _optimizers()
    with caplog.at_level(logging.WARNING, logger="titan_phases.components.lr_scheduler"):
        lr_schedulers = PhasedLRSchedulersContainer(optimizers, "PolynomialLR", {"total_iters": 4})
    assert "untested" in caplog.text
    for step in range(2):
        _advance(optimizers, lr_schedulers, step)
    _enter_phase1(parts, optimizers, lr_schedulers)
    # The new group starts at its lr; PolynomialLR's chained rule moves it from there.
    assert _lrs(optimizers) == pytest.approx([PHASE0_LR * 0.5, PHASE1_LR], rel=1e-12)
    _advance(optimizers, lr_schedulers, 2)
    assert _lrs(optimizers) == pytest.approx([PHASE0_LR * 0.25, PHASE1_LR * 0.5], rel=1e-12)


def test_phase0_started_at_another_lr_follows_a_stack_built_with_it():
    config = LRSchedulerConfig(warmup_steps=2, decay_type="cosine")
    _, scaled = _optimizers()
    scaled_schedulers = build_phased_lr_schedulers(scaled, config, 10)
    scaled_schedulers.start_phase0_at(PHASE0_LR * 0.25)
    parts = [build_model()]
    freeze_to(parts, PHASES[0])
    built = PhasedOptimizersContainer(parts, torch.optim.SGD, {"lr": PHASE0_LR * 0.25})
    built_schedulers = build_phased_lr_schedulers(built, config, 10)
    assert _lrs(scaled) == _lrs(built) != [PHASE0_LR * 0.25]  # warmup applied
    for step in range(6):
        _advance(scaled, scaled_schedulers, step)
        _advance(built, built_schedulers, step)
        assert _lrs(scaled) == _lrs(built), step
    assert scaled_schedulers.state_dict() == built_schedulers.state_dict()
    with pytest.raises(ValueError, match="before the first step"):
        scaled_schedulers.start_phase0_at(PHASE0_LR)
