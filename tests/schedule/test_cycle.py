"""Generated block-cyclic schedules (``[phases.cycle]``) on the llama3 debug model (6 blocks)."""

from __future__ import annotations

import dataclasses

import pytest

from titan_phases.config.job_config import Cycle
from titan_phases.schedule import load_and_validate

from .conftest import find_problem, make_job, problems_of

HEAD = ["output.weight", "norm.weight"]


def _cycle_job(steps: int = 60, **cycle):
    settings = {"enable": True, "steps_per_phase": 5, **cycle}
    return make_job(steps=steps, cycle=Cycle(**settings))


def _blocks(resolved, k: int) -> list[int]:
    return sorted({int(n.split(".")[1]) for n in resolved.trainable_params(k)
                   if n.startswith("layers.")})


def test_descending_one_block_per_phase_steps_per_phase_apart():
    resolved = load_and_validate(_cycle_job(passes=2, always_train=HEAD))
    assert resolved.num_phases == 12
    assert [_blocks(resolved, k) for k in range(12)] == [[b] for b in (5, 4, 3, 2, 1, 0) * 2]
    assert [p.max_transition_step for p in resolved.phases] == [*range(5, 60, 5), None]
    assert all(set(HEAD) <= set(resolved.trainable_params(k)) for k in range(12))
    # BAdam's default: the embeddings never train unless always_train names them.
    assert resolved.frozen_params == ("tok_embeddings.weight",)
    assert resolved.groups(7) == (0, 7)  # the head's group, and the block that entered
    assert [(c.pass_index, c.position, c.blocks) for c in resolved.cycle[5:7]] == [
        (0, 5, (0,)), (1, 0, (5,))]
    assert resolved.cycle[0].generator_state is None


def test_ascending_blocks_per_phase_and_until_training_steps():
    resolved = load_and_validate(_cycle_job(steps=42, order="ascending", blocks_per_phase=4))
    # 6 blocks in phases of 4: [0-3], [4, 5]; 42 steps of 5 hold 9 phases, the last partial.
    assert resolved.num_phases == 9
    assert [_blocks(resolved, k) for k in range(3)] == [[0, 1, 2, 3], [4, 5], [0, 1, 2, 3]]
    assert resolved.phases[-1].max_transition_step is None


def test_random_draws_a_new_permutation_every_pass_from_its_seed():
    def order(seed: int) -> list[list[int]]:
        resolved = load_and_validate(_cycle_job(steps=90, order="random", passes=3, seed=seed))
        return [_blocks(resolved, k)[0] for k in range(resolved.num_phases)]

    first = order(0)
    passes = [first[i:i + 6] for i in range(0, 18, 6)]
    assert all(sorted(p) == list(range(6)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1
    assert order(0) == first and order(1) != first
    resolved = load_and_validate(_cycle_job(steps=90, order="random", passes=3))
    states = [c.generator_state for c in resolved.cycle]
    assert states[0] is not None and states[0] == states[5] != states[6]


def test_sampled_draws_its_blocks_for_every_phase_lisa_style():
    resolved = load_and_validate(_cycle_job(order="sampled", blocks_per_phase=2, passes=4,
                                            always_train=["tok_embeddings.weight", *HEAD]))
    assert resolved.num_phases == 12  # 4 "passes" of 3 phases
    drawn = [_blocks(resolved, k) for k in range(12)]
    assert all(len(blocks) == 2 for blocks in drawn)
    assert len({tuple(b) for b in drawn}) > 3
    assert resolved.frozen_params == ()


def test_a_block_drawn_again_keeps_training_without_a_freeze():
    resolved = load_and_validate(_cycle_job(order="sampled", blocks_per_phase=3, passes=10))
    for k in range(1, resolved.num_phases):
        kept = set(_blocks(resolved, k - 1)) & set(_blocks(resolved, k))
        frozen = {int(n.split(".")[1]) for n in resolved.frozen_at(k)}
        assert not kept & frozen


def test_the_lr_of_entering_blocks():
    resolved = load_and_validate(_cycle_job(passes=1, lr=2e-4))
    assert resolved.group_lr(0) == 8e-4 and resolved.group_lr(3) == 2e-4


def test_passes_that_do_not_fit_training_steps_are_cut_with_a_warning():
    resolved = load_and_validate(_cycle_job(steps=20, passes=2))
    assert resolved.num_phases == 4
    (warning,) = [w for w in resolved.warnings if w.key == "phases.cycle.passes"]
    assert "raise training.steps to 60" in str(warning)


@pytest.mark.parametrize("settings, job, key, words", [
    ({"blocks_per_phase": 6}, {}, "phases.cycle.blocks_per_phase", "leaves none"),
    ({"blocks_per_phase": 0}, {}, "phases.cycle.blocks_per_phase", "must be >= 1"),
    ({"steps_per_phase": 0}, {}, "phases.cycle.steps_per_phase", "must be >= 1"),
    ({"passes": -1}, {}, "phases.cycle.passes", "must be >= 0"),
    ({"lr": -1.0}, {}, "phases.cycle.lr", "must be > 0"),
    ({"always_train": ["outptu.weight"]}, {}, "phases.cycle.always_train[0]",
     "matches no parameter"),
    ({"always_train": [r"layers\.0\..+"]}, {}, "phases.cycle.always_train",
     "which the cycle trains in turn"),
    ({}, {"transition_mode": "plateau"}, "phases.transition_mode", "validation loss"),
    ({}, {"reinit_optimizer": {"class_path": "SGD"}}, "phases.reinit_optimizer",
     "not to a cycle"),
    ({}, {"schedule_file": "schedule.toml"}, "phases.cycle.enable", "keep one of them"),
])
def test_bad_cycle_settings_name_their_key(settings, job, key, words):
    config = _cycle_job(**settings)
    for name, value in job.items():
        setattr(config.phases, name, value)
    problem = find_problem(problems_of(config), None, key)
    assert words in str(problem)


def test_settings_of_generated_thawing_schedules_are_ignored_with_a_warning():
    config = _cycle_job(passes=1)
    config.phases = dataclasses.replace(config.phases, blocks_per_phase=2)
    resolved = load_and_validate(config)
    assert any(w.key == "phases.blocks_per_phase" for w in resolved.warnings)
