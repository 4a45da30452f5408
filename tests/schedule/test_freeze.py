"""Phases that freeze as well as thaw: what trains in each phase, the optimizer's groups, and
every rule a ``freeze`` list must follow (llama3 debug model: blocks ``layers.0-5``)."""

from __future__ import annotations

import pytest

from titan_phases.schedule import load_and_validate

from .conftest import find_problem, make_job, problems_of

HEAD = ["output.weight", "norm.weight"]


def _block(i: int) -> str:
    return rf"layers\.{i}\..+"


SCHEDULE = {
    "0": {"params": [*HEAD, _block(5)], "max_transition_step": 10},
    "1": {"params": [_block(4)], "freeze": [_block(5)], "lr": 1e-4, "max_transition_step": 20},
    "2": {"params": [_block(5)], "freeze": [_block(4)], "max_transition_step": 30},
    "3": {"freeze": ["norm.weight"], "max_transition_step": 40},
    "4": {"params": [_block(3)],
          "new_lr_scheduler": {"class_path": "StepLR", "init_args": {"step_size": 5},
                               "init_pg_lrs": [1e-3, 2e-3, 3e-3]}},
}


@pytest.fixture(scope="module")
def resolved():
    return load_and_validate(make_job(SCHEDULE))


def _blocks(names) -> set[str]:
    return {".".join(n.split(".")[:2]) if n.startswith("layers.") else n for n in names}


def test_each_phase_trains_what_it_thawed_minus_what_it_froze(resolved):
    trains = [_blocks(resolved.trainable_params(k)) for k in range(resolved.num_phases)]
    assert trains == [
        {*HEAD, "layers.5"},
        {*HEAD, "layers.4"},
        {*HEAD, "layers.5"},
        {"output.weight", "layers.5"},
        {"output.weight", "layers.5", "layers.3"},
    ]
    assert _blocks(resolved.frozen_at(1)) == {"layers.5"} and resolved.frozen_at(0) == ()
    # Thawed again in phase 2, so not "never thawed".
    assert "layers.5.attention.wq.weight" not in resolved.frozen_params


def test_a_group_leaves_once_all_its_params_are_frozen(resolved):
    # Phase 0's group keeps the head; phase 1's group leaves in phase 2; a phase that only
    # freezes adds no group.
    assert [resolved.groups(k) for k in range(5)] == [(0,), (0, 1), (0, 2), (0, 2), (0, 2, 4)]
    plan = resolved.plan(2)
    assert plan.groups == (0, 2) and _blocks(plan.frozen) == {"layers.4"}
    assert _blocks(plan.params) == {"layers.5"}


def test_init_pg_lrs_has_one_lr_per_group_of_the_phase(resolved):
    assert resolved.init_pg_lrs(4) == (1e-3, 2e-3, 3e-3)
    assert resolved.group_lr(4) == 3e-3
    assert resolved.plan(4).lr_scheduler.init_pg_lrs == (1e-3, 2e-3, 3e-3)


def test_a_schedule_that_only_thaws_has_one_group_per_phase():
    thaws = {"0": {"params": HEAD, "max_transition_step": 10}, "1": {"params": [_block(5)]}}
    resolved = load_and_validate(make_job(thaws))
    assert resolved.groups(1) == (0, 1) and resolved.frozen_at(1) == ()


@pytest.mark.parametrize("schedule, phase, key, words", [
    ({"0": {"params": HEAD, "freeze": ["output.weight"], "max_transition_step": 5},
      "1": {"params": [_block(5)]}}, 0, "freeze", "nothing to freeze"),
    ({"0": {"params": HEAD, "max_transition_step": 5},
      "1": {"params": [_block(5)], "freeze": [_block(4)]}}, 1, "freeze[0]",
     "do not train before phase 1"),
    ({"0": {"params": HEAD, "max_transition_step": 5},
      "1": {"params": [_block(5)], "freeze": ["nothing_here"]}}, 1, "freeze[0]",
     "matches no parameter"),
    ({"0": {"params": [*HEAD, _block(5)], "max_transition_step": 5},
      "1": {"params": [_block(5)], "freeze": [_block(5)]}}, 1, "freeze",
     "freezes and thaws the same"),
    ({"0": {"params": HEAD, "max_transition_step": 5},
      "1": {"freeze": HEAD}}, 1, "freeze", "no parameter trains"),
    ({"0": {"params": [*HEAD, _block(5)], "max_transition_step": 5},
      "1": {"params": [_block(5)]}}, 1, "params[0]", "still trainable"),
    ({"0": {"params": HEAD, "max_transition_step": 5},
      "1": {"params": [_block(5)], "freeze": "output.weight"}}, 1, "freeze",
     "expected a list"),
])
def test_bad_freezes_name_the_phase_and_key(schedule, phase, key, words):
    problem = find_problem(problems_of(make_job(schedule)), phase, key)
    assert words in str(problem)


def test_init_pg_lrs_of_the_wrong_length_counts_the_groups_not_the_phases():
    schedule = {**SCHEDULE, "4": {
        "params": [_block(3)],
        "new_lr_scheduler": {"class_path": "StepLR", "init_args": {"step_size": 5},
                             "init_pg_lrs": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3]}}}
    problem = find_problem(problems_of(make_job(schedule)), 4, "new_lr_scheduler.init_pg_lrs")
    assert "phase 4 has 3 param group(s)" in str(problem)
