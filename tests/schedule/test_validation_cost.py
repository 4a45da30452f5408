"""Validation work grows linearly with the number of phases, without missing an error."""

from __future__ import annotations

from typing import Any

import pytest

from titan_phases.schedule import classes
from titan_phases.schedule.errors import Problem, Problems
from titan_phases.schedule.schema import LRSchedulerInit, Phase, PhaseSchedule
from titan_phases.schedule.validation import check_reinits

from .conftest import find_problem, make_job


def _schedule(n_phases: int, scheduler: LRSchedulerInit) -> PhaseSchedule:
    phases = [Phase(0, ("output.weight",), 10)]
    phases += [Phase(k, (f"p{k}",), 10 * (k + 1), new_lr_scheduler=scheduler)
               for k in range(1, n_phases)]
    return PhaseSchedule(tuple(phases), "schedule.toml")


def _check(schedule: PhaseSchedule, **job: Any) -> Problems:
    config = make_job(**job)
    problems = Problems()
    group_counts = [p.index + 1 for p in schedule.phases]  # a schedule that only thaws
    check_reinits(schedule, group_counts, config.phases, config, problems)
    return problems


def _dummy_params_made(monkeypatch: pytest.MonkeyPatch, n_phases: int,
                       scheduler: LRSchedulerInit) -> int:
    made = []
    dummy_params = classes._dummy_params

    def counting(n: int) -> list[Any]:
        made.append(n)
        return dummy_params(n)

    monkeypatch.setattr(classes, "_dummy_params", counting)
    assert not _check(_schedule(n_phases, scheduler)).errors
    return sum(made)


@pytest.mark.parametrize("scheduler", [
    LRSchedulerInit("torch.optim.lr_scheduler.StepLR", {"step_size": 10}),
    LRSchedulerInit("torch.optim.lr_scheduler.MultiStepLR", {"milestones": [20, 40]}),
    LRSchedulerInit("torch.optim.lr_scheduler.CosineAnnealingLR", {"T_max": 10},
                    use_current_optimizer_pg_lrs=True),
], ids=["StepLR", "MultiStepLR", "CosineAnnealingLR"])
def test_dry_run_param_groups_grow_linearly_with_the_phases(monkeypatch, scheduler):
    # A param group per phase so far in every phase's dry run: 10x the phases, ~100x the work.
    small = _dummy_params_made(monkeypatch, 50, scheduler)
    large = _dummy_params_made(monkeypatch, 500, scheduler)
    assert large < 11 * small


def test_a_per_group_list_of_the_bounded_length_is_still_wrong():
    # Phase 3 has 4 param groups; a dry run with 2 groups would accept 2 lambdas.
    scheduler = LRSchedulerInit("torch.optim.lr_scheduler.LambdaLR",
                                {"lr_lambda": ["math.cos", "math.cos"]})
    problems = _check(_schedule(4, scheduler)).errors
    problem = find_problem(problems, 3, "new_lr_scheduler.init_args")
    assert "Expected 4 lr_lambdas, but got 2" in problem.message
    problem = find_problem(problems, 2, "new_lr_scheduler.init_args")
    assert "Expected 3 lr_lambdas, but got 2" in problem.message
    assert all(p.phase != 1 for p in problems)  # phase 1 has 2 groups: 2 lambdas fit


def test_a_per_group_list_of_the_right_length_passes_in_every_phase():
    phases = [Phase(0, ("output.weight",), 10)]
    for k in range(1, 6):
        min_lr = LRSchedulerInit("torch.optim.lr_scheduler.ReduceLROnPlateau",
                                 {"min_lr": [0.0] * (k + 1)})
        phases.append(Phase(k, (f"p{k}",), 10 * (k + 1), new_lr_scheduler=min_lr))
    assert not _check(PhaseSchedule(tuple(phases), "schedule.toml"), validation=True).errors


def test_a_value_only_the_first_step_uses_is_checked():
    scheduler = LRSchedulerInit("torch.optim.lr_scheduler.CosineAnnealingLR", {"T_max": 0})
    problem = find_problem(_check(_schedule(2, scheduler)).errors, 1,
                           "new_lr_scheduler.init_args")
    assert "ZeroDivisionError" in problem.message


def test_problems_has_sees_errors_added_after_it_was_asked():
    problems = Problems()
    for k in range(3):
        problems.error("s.toml", k, "max_transition_step", "bad")
    assert problems.has(1, "max_transition_") and not problems.has(3, "max_transition_")
    problems.errors.append(Problem("s.toml", 3, "params[0]", "bad"))
    assert problems.has(3, "params") and not problems.has(3, "max_transition_")
