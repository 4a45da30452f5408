"""Generated (implicit) schedules."""

from __future__ import annotations

import pytest

from titan_phases.schedule import load_and_validate
from titan_phases.schedule.errors import Problems
from titan_phases.schedule.generation import generate_schedule, phase_groups, transition_steps

from .conftest import make_job, NUM_DEBUGMODEL_PARAMS, qwen3_debug_names, QWEN3_TIED


def test_debugmodel_schedule_covers_every_parameter_exactly_once():
    resolved = load_and_validate(make_job())
    names = [n for phase in resolved.phase_params for n in phase]
    assert len(names) == len(set(names)) == NUM_DEBUGMODEL_PARAMS
    assert set(names) == set(resolved.param_numels)
    assert resolved.frozen_params == ()
    assert resolved.generated


def test_order_head_then_blocks_top_down_then_embeddings():
    resolved = load_and_validate(make_job())
    assert resolved.phase_params[0] == ("norm.weight", "output.weight")
    for k, block in enumerate(range(5, -1, -1), start=1):
        assert len(resolved.phase_params[k]) == 9
        assert all(n.startswith(f"layers.{block}.") for n in resolved.phase_params[k])
    assert resolved.phase_params[-1] == ("tok_embeddings.weight",)


@pytest.mark.parametrize("blocks, expected", [
    (2, [r"layers\.(4|5)\..+", r"layers\.(2|3)\..+", r"layers\.(0|1)\..+"]),
    (4, [r"layers\.(2|3|4|5)\..+", r"layers\.(0|1)\..+"]),
    (10, [r"layers\.(0|1|2|3|4|5)\..+"]),
])
def test_blocks_per_phase(blocks, expected):
    resolved = load_and_validate(make_job(blocks_per_phase=blocks))
    patterns = [p.params for p in resolved.phases]
    assert patterns == [("norm.weight", "output.weight"), *[(e,) for e in expected],
                        ("tok_embeddings.weight",)]


def test_even_split_of_training_steps():
    resolved = load_and_validate(make_job(steps=800))
    steps = [p.max_transition_step for p in resolved.phases]
    assert steps == [100, 200, 300, 400, 500, 600, 700, None]


def test_steps_per_phase_and_max_depth():
    resolved = load_and_validate(make_job(steps=1000, steps_per_phase=50, max_depth=2))
    assert [p.max_transition_step for p in resolved.phases] == [50, 100, None]
    assert len(resolved.dropped_phases) == 5
    assert len(resolved.frozen_params) == NUM_DEBUGMODEL_PARAMS - 2 - 18
    assert [w.key for w in resolved.warnings] == ["phases.max_depth"]


def test_plateau_mode_sets_no_steps():
    resolved = load_and_validate(make_job(transition_mode="plateau", validation=True))
    assert all(p.max_transition_step is None for p in resolved.phases)


def test_reinit_configs_go_into_every_later_phase():
    resolved = load_and_validate(make_job(
        reinit_optimizer={"class_path": "SGD", "init_args": {"lr": 1e-5, "momentum": 0.9}},
        reinit_lr_scheduler={"class_path": "StepLR", "init_args": {"step_size": 10}},
    ))
    first, *rest = resolved.phases
    assert first.new_optimizer is None and first.new_lr_scheduler is None
    assert {p.new_optimizer.class_path for p in rest} == {"torch.optim.SGD"}
    assert {p.new_lr_scheduler.class_path for p in rest} == {"torch.optim.lr_scheduler.StepLR"}


def test_model_without_numbered_blocks_falls_back_to_top_level_modules():
    names = ["embed.weight", "encoder.weight", "encoder.bias", "head.weight"]
    assert phase_groups(names, 1) == [["head.weight"], ["encoder.weight", "encoder.bias"],
                                      ["embed.weight"]]


def test_modules_between_two_block_stacks():
    names = ["emb.w", "down.0.w", "down.1.w", "mid.w", "up.0.w", "up.1.w", "out.w"]
    assert phase_groups(names, 2) == [["out.w"], [r"up\.(0|1)\..+"], ["mid.w", r"down\.1\..+"],
                                      [r"down\.0\..+"], ["emb.w"]]


def test_a_head_tied_to_the_embeddings_is_thawed_with_the_head():
    names = qwen3_debug_names()
    assert names[0] == "tok_embeddings.weight" and names[-2:] == ["norm.weight", "output.weight"]
    assert phase_groups(names, 4, QWEN3_TIED) == [
        ["norm.weight", "tok_embeddings.weight"], [r"layers\.(4|5|6|7)\..+"],
        [r"layers\.(0|1|2|3)\..+"]]
    # What the model lists (the tied name once, by the name registered first) puts the head
    # last and leaves phase 0 the final norm alone.
    listed = [n for n in names if n != "output.weight"]
    assert phase_groups(listed, 4)[0] == ["norm.weight"]


def test_a_generated_schedule_says_which_phase_thaws_a_tied_parameter():
    problems = Problems()
    schedule = generate_schedule(
        qwen3_debug_names(), blocks_per_phase=8, max_depth=-1, transition_mode="fixed",
        training_steps=10, steps_per_phase=0, reinit_optimizer=None, reinit_lr_scheduler=None,
        tied=QWEN3_TIED, source="job.toml", problems=problems)
    assert [p.params for p in schedule.phases] == [
        ("norm.weight", "tok_embeddings.weight"), (r"layers\.(0|1|2|3|4|5|6|7)\..+",)]
    (warning,) = problems.warnings
    assert (warning.phase, warning.key) == (0, "params")
    assert "output.weight is tied to tok_embeddings.weight" in str(warning)


def test_a_tied_name_inside_a_block_leaves_the_parameter_to_its_block():
    names = ["emb.w", "layers.0.w", "layers.1.w", "layers.1.emb", "head.w"]
    assert phase_groups(names, 1, {"layers.1.emb": "emb.w"}) == [
        ["head.w"], [r"layers\.1\..+"], [r"layers\.0\..+"], ["emb.w"]]
    assert phase_groups(names[:-1] + ["head.w"], 1, {"head.w": "layers.0.w"}) == [
        [r"layers\.1\..+"], [r"layers\.0\..+"], ["emb.w"]]


def test_transition_steps_beyond_max_depth_are_unset():
    assert transition_steps(5, 3, 90, 0) == [30, 60, None, None, None]


def test_base_max_lr_is_the_lr_of_every_generated_phase_but_the_first():
    # FTS gives the phases it generates base_max_lr; here it is opt-in ([optimizer] lr if 0).
    resolved = load_and_validate(make_job(base_max_lr=1e-5, lr_scale=0.5))
    assert resolved.phases[0].lr is None
    assert all(p.lr == 1e-5 for p in resolved.phases[1:])
    assert resolved.group_lr(0) == pytest.approx(4e-4)
    assert [resolved.group_lr(k) for k in range(1, resolved.num_phases)] == pytest.approx(
        [5e-6] * (resolved.num_phases - 1))
    default = load_and_validate(make_job())
    assert default.group_lr(1) == default.base_lr == 8e-4


def test_base_max_lr_with_reinits_and_written_out(tmp_path):
    job = make_job(base_max_lr=2e-5, reinit_optimizer={
        "class_path": "SGD", "init_args": {"lr": 1e-3}})
    resolved = load_and_validate(job)
    assert resolved.group_lr(3) == 2e-5  # not the reinit optimizer's lr
    assert resolved.phases[3].to_raw()["lr"] == 2e-5  # what `titan-phases generate` writes
