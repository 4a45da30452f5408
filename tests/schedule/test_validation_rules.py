"""One test per validation rule: each asserts the problem names the phase and the key."""

from __future__ import annotations

import time
from typing import Any

import pytest

from titan_phases.schedule import load_and_validate, ScheduleError

from .conftest import find_problem, make_job, problems_of, two_phases

HEAD = ["output.weight", "norm.weight"]


def warmup(step: int, warmup_steps: int = 10) -> float:
    """Module-level lr lambda used by the lr_lambda tests."""
    return min(1.0, (step + 1) / warmup_steps)


not_module_level = lambda step: 1.0  # noqa: E731  (a lambda, deliberately)


# --- phase keys -------------------------------------------------------------------------------

def test_non_int_phase_key():
    problems = problems_of(make_job({"0": {"params": HEAD}, "first": {"params": ["x"]}}))
    assert "'first'" in str(find_problem(problems, None, "[first]"))


def test_negative_phase_key():
    find_problem(problems_of(make_job({"0": {"params": HEAD}, "-1": {"params": ["x"]}})),
                 None, "[-1]")


def test_duplicate_phase_key():
    schedule = {"0": {"params": HEAD, "max_transition_step": 10},
                "1": {"params": [r"layers\.5\..+"]}, "01": {"params": [r"layers\.4\..+"]}}
    problem = find_problem(problems_of(make_job(schedule)), 1, "[01]")
    assert "duplicate" in problem.message


def test_non_contiguous_phase_keys():
    schedule = {"0": {"params": HEAD, "max_transition_step": 10},
                "2": {"params": [r"layers\.5\..+"]}}
    problem = find_problem(problems_of(make_job(schedule)), None, "(phase keys)")
    assert "[1]" in problem.message


def test_phase_not_a_table():
    find_problem(problems_of(make_job({"0": {"params": HEAD}, "1": 5})), 1, "(table)")


def test_empty_schedule_file(tmp_path):
    (tmp_path / "s.toml").write_text("# nothing yet\n")
    job = make_job(schedule_file=str(tmp_path / "s.toml"))
    find_problem(problems_of(job), None, "(schedule)")


# --- unknown keys -----------------------------------------------------------------------------

def test_unknown_phase_key_suggests_the_right_one():
    problem = find_problem(problems_of(make_job(two_phases(max_transtion_step=5))), 1,
                           "max_transtion_step")
    assert "max_transition_step" in problem.hint


def test_fts_epoch_key_gets_conversion_hint():
    problem = find_problem(problems_of(make_job(two_phases(max_transition_epoch=2))), 1,
                           "max_transition_epoch")
    assert "import-fts" in problem.hint


@pytest.mark.parametrize("table, key", [
    ({"new_optimizer": {"class_path": "SGD", "init_args": {"lr": 0.1}, "args": {}}},
     "new_optimizer.args"),
    ({"new_lr_scheduler": {"lr_scheduler_init": {"class_path": "StepLR"}}},
     "new_lr_scheduler.lr_scheduler_init"),
], ids=["new_optimizer", "new_lr_scheduler"])
def test_unknown_key_in_reinit_table(table, key):
    find_problem(problems_of(make_job(two_phases(**table))), 1, key)


# --- params -----------------------------------------------------------------------------------

@pytest.mark.parametrize("params, key", [
    (None, "params"),
    ("output.weight", "params"),
    ([], "params"),
    ([3], "params[0]"),
    ([r"layers\.[0-3\..+"], "params[0]"),
], ids=["missing", "string", "empty", "not-a-string", "bad-regex"])
def test_malformed_params(params, key):
    phase1: dict[str, Any] = {} if params is None else {"params": params}
    schedule = {"0": {"params": HEAD, "max_transition_step": 10}, "1": phase1}
    find_problem(problems_of(make_job(schedule)), 1, key)


def test_pattern_matching_no_parameter_suggests_names():
    problem = find_problem(problems_of(make_job(two_phases(params=["layers.5.attention.wq"]))),
                           1, "params[0]")
    assert "layers.5.attention.wq.weight" in problem.hint


def test_lightning_prefix_gets_strip_hint():
    problem = find_problem(problems_of(make_job(two_phases(params=["model.norm.weight"]))),
                           1, "params[0]")
    assert "--strip-prefix" in problem.hint


def test_parameter_in_two_phases():
    problem = find_problem(problems_of(make_job(two_phases(params=[r".*norm.*"]))), 1,
                           "params[0]")
    assert "phase 0" in problem.message and "norm.weight" in problem.message


# --- values -----------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("lr", "fast"), ("lr", -1e-4), ("lr", float("nan")), ("lr", True), ("max_norm", 0),
], ids=["lr-string", "lr-negative", "lr-nan", "lr-bool", "max_norm-zero"])
def test_bad_number(key, value):
    find_problem(problems_of(make_job(two_phases(**{key: value}))), 1, key)


def test_lr_in_phase_zero():
    schedule = two_phases()
    schedule["0"]["lr"] = 1e-3
    problem = find_problem(problems_of(make_job(schedule)), 0, "lr")
    assert "[optimizer] lr" in problem.message


# --- transitions ------------------------------------------------------------------------------

@pytest.mark.parametrize("step", [0, 1.5, "10"])
def test_max_transition_step_not_a_step(step):
    schedule = two_phases()
    schedule["0"]["max_transition_step"] = step
    find_problem(problems_of(make_job(schedule)), 0, "max_transition_step")


def test_max_transition_step_not_increasing():
    schedule = two_phases(max_transition_step=100)
    schedule["2"] = {"params": [r"layers\.4\..+"]}
    problem = find_problem(problems_of(make_job(schedule)), 1, "max_transition_step")
    assert "phase 0" in problem.message


def test_max_transition_step_beyond_training_is_a_warning():
    from titan_phases.schedule import load_and_validate

    schedule = two_phases()
    schedule["0"]["max_transition_step"] = 50
    resolved = load_and_validate(make_job(schedule, steps=50))
    problem = find_problem(list(resolved.warnings), 0, "max_transition_step")
    assert "training.steps = 50" in problem.message and "will not run" in problem.message


def test_max_transition_step_missing_in_step_mode():
    schedule = two_phases()
    del schedule["0"]["max_transition_step"]
    find_problem(problems_of(make_job(schedule)), 0, "max_transition_step")


def test_max_transition_step_in_plateau_mode():
    job = make_job(two_phases(), validation=True, transition_mode="plateau")
    problem = find_problem(problems_of(job), 0, "max_transition_step")
    assert "'both'" in problem.hint


def test_max_transition_step_on_last_phase_is_a_warning():
    resolved = load_and_validate(make_job(two_phases(max_transition_step=500)))
    assert (1, "max_transition_step") in [(w.phase, w.key) for w in resolved.warnings]


def test_plateau_transitions_need_validation():
    schedule = two_phases()
    find_problem(problems_of(make_job(schedule, transition_mode="both")), None,
                 "phases.transition_mode")
    load_and_validate(make_job(schedule, transition_mode="both", validation=True))


# --- optimizer / scheduler reinit -------------------------------------------------------------

@pytest.mark.parametrize("key", ["new_optimizer", "new_lr_scheduler"])
def test_reinit_in_phase_zero(key):
    schedule = two_phases()
    schedule["0"][key] = {"class_path": "SGD" if key == "new_optimizer" else "StepLR",
                          "init_args": {"lr": 0.1} if key == "new_optimizer" else {"step_size": 1}}
    find_problem(problems_of(make_job(schedule)), 0, key)


@pytest.mark.parametrize("key", ["new_optimizer", "new_lr_scheduler"])
def test_missing_class_path(key):
    find_problem(problems_of(make_job(two_phases(**{key: {"init_args": {}}}))), 1,
                 f"{key}.class_path")


def test_class_not_importable_suggests_name():
    problem = find_problem(problems_of(make_job(two_phases(new_optimizer={"class_path": "SDG"}))),
                           1, "new_optimizer.class_path")
    assert "did you mean 'SGD'" in problem.message


def test_module_not_importable():
    job = make_job(two_phases(new_optimizer={"class_path": "no_such_pkg.optim.Fast"}))
    find_problem(problems_of(job), 1, "new_optimizer.class_path")


@pytest.mark.parametrize("key, class_path", [
    ("new_optimizer", "torch.optim.lr_scheduler.StepLR"),
    ("new_lr_scheduler", "torch.optim.SGD"),
    ("new_optimizer", "torch.nn.functional.relu"),
], ids=["scheduler-as-optimizer", "optimizer-as-scheduler", "function"])
def test_class_of_wrong_kind(key, class_path):
    problem = find_problem(problems_of(make_job(two_phases(**{key: {"class_path": class_path}}))),
                           1, f"{key}.class_path")
    assert "wrong kind" in problem.message


def test_optimizer_init_args_fail_dry_run():
    job = make_job(two_phases(new_optimizer={"class_path": "AdamW",
                                             "init_args": {"betas": [0.9, 1.5]}}))
    problem = find_problem(problems_of(job), 1, "new_optimizer.init_args")
    assert "AdamW" in problem.message and "betas" in problem.hint


def test_optimizer_init_args_with_params():
    job = make_job(two_phases(new_optimizer={"class_path": "SGD",
                                             "init_args": {"lr": 0.1, "params": []}}))
    find_problem(problems_of(job), 1, "new_optimizer.init_args")


def test_scheduler_init_args_fail_dry_run():
    job = make_job(two_phases(new_lr_scheduler={"class_path": "StepLR",
                                                "init_args": {"step": 3}}))
    problem = find_problem(problems_of(job), 1, "new_lr_scheduler.init_args")
    assert "step_size" in problem.hint


@pytest.mark.parametrize("name", ["ChainedScheduler", "SequentialLR"])
def test_composite_schedulers_rejected_even_if_untested_allowed(name):
    job = make_job(two_phases(new_lr_scheduler={"class_path": name}), allow_untested=True)
    find_problem(problems_of(job), 1, "new_lr_scheduler.class_path")


def test_untested_scheduler_needs_allow_untested():
    scheduler = {"class_path": "PolynomialLR", "init_args": {"total_iters": 10}}
    problem = find_problem(problems_of(make_job(two_phases(new_lr_scheduler=scheduler))), 1,
                           "new_lr_scheduler.class_path")
    assert "allow_untested" in problem.hint
    load_and_validate(make_job(two_phases(new_lr_scheduler=scheduler), allow_untested=True))


def test_reduce_lr_on_plateau_needs_validation():
    scheduler = {"class_path": "ReduceLROnPlateau", "init_args": {"patience": 2}}
    problem = find_problem(problems_of(make_job(two_phases(new_lr_scheduler=scheduler))), 1,
                           "new_lr_scheduler.class_path")
    assert "monitor" in problem.message
    load_and_validate(make_job(two_phases(new_lr_scheduler=scheduler), validation=True))


def test_init_pg_lrs_length_must_match_phase():
    scheduler = {"class_path": "StepLR", "init_args": {"step_size": 10},
                 "init_pg_lrs": [1e-4, 1e-4, 1e-4]}
    problem = find_problem(problems_of(make_job(two_phases(new_lr_scheduler=scheduler))), 1,
                           "new_lr_scheduler.init_pg_lrs")
    assert "2 param group(s)" in problem.message


def test_init_pg_lrs_bad_value():
    scheduler = {"class_path": "StepLR", "init_args": {"step_size": 10}, "init_pg_lrs": [1e-4, "x"]}
    find_problem(problems_of(make_job(two_phases(new_lr_scheduler=scheduler))), 1,
                 "new_lr_scheduler.init_pg_lrs[1]")


def test_init_pg_lrs_with_use_current_lrs():
    scheduler = {"class_path": "StepLR", "init_args": {"step_size": 10},
                 "init_pg_lrs": [1e-4, 1e-4], "use_current_optimizer_pg_lrs": True}
    find_problem(problems_of(make_job(two_phases(new_lr_scheduler=scheduler))), 1,
                 "new_lr_scheduler.use_current_optimizer_pg_lrs")


def test_init_pg_lrs_contradicting_lr():
    scheduler = {"class_path": "StepLR", "init_args": {"step_size": 10},
                 "init_pg_lrs": [1e-4, 1e-4]}
    find_problem(problems_of(make_job(two_phases(lr=2e-4, new_lr_scheduler=scheduler))), 1,
                 "new_lr_scheduler.init_pg_lrs")


def test_lr_lambda_must_be_module_level_function():
    path = f"{__name__}.not_module_level"
    scheduler = {"class_path": "LambdaLR", "init_args": {"lr_lambda": path}}
    problem = find_problem(problems_of(make_job(two_phases(new_lr_scheduler=scheduler))), 1,
                           "new_lr_scheduler.init_args")
    assert "module-level" in problem.message


@pytest.mark.parametrize("spec", [
    f"{__name__}.warmup",
    {"function": f"{__name__}.warmup", "kwargs": {"warmup_steps": 5}},
    [f"{__name__}.warmup", f"{__name__}.warmup"],
], ids=["path", "partial", "per-group"])
def test_lr_lambda_specs_accepted(spec):
    scheduler = {"class_path": "LambdaLR", "init_args": {"lr_lambda": spec}}
    load_and_validate(make_job(two_phases(new_lr_scheduler=scheduler)))


# --- [phases] settings and combinations -------------------------------------------------------

def test_explicit_schedule_with_implicit_reinit_config():
    job = make_job(two_phases(), reinit_lr_scheduler={"class_path": "StepLR",
                                                      "init_args": {"step_size": 5}})
    problem = find_problem(problems_of(job), None, "phases.reinit_lr_scheduler")
    assert "new_lr_scheduler" in problem.hint


def test_implicit_init_pg_lrs_rejected():
    job = make_job(reinit_lr_scheduler={"class_path": "StepLR", "init_args": {"step_size": 5},
                                        "init_pg_lrs": [1e-4, 1e-4]})
    find_problem(problems_of(job), None, "phases.reinit_lr_scheduler.init_pg_lrs")


def test_implicit_reinit_config_is_dry_run():
    job = make_job(reinit_optimizer={"class_path": "SGD", "init_args": {"momentum": -1}})
    find_problem(problems_of(job), None, "phases.reinit_optimizer.init_args")


def test_implicit_reinit_config_unknown_key():
    job = make_job(reinit_optimizer={"class": "SGD"})
    find_problem(problems_of(job), None, "phases.reinit_optimizer.class")


def test_schedule_file_and_inline_schedule():
    find_problem(problems_of(make_job(two_phases(), schedule_file="other.toml")), None,
                 "phases.schedule")


def test_restore_best_needs_validation_and_checkpoint():
    problems = problems_of(make_job(two_phases(), restore_best=True))
    assert sum(p.key == "phases.restore_best" for p in problems) == 2
    load_and_validate(make_job(two_phases(), restore_best=True, validation=True,
                               checkpoint=True))


@pytest.mark.parametrize("field, value", [
    ("transition_mode", "plateu"), ("mode", "minimum"), ("lr_scale", 0.0), ("lr_scale", "x"),
    ("max_depth", -2), ("blocks_per_phase", 0), ("steps_per_phase", -1), ("patience", 0),
    ("min_delta", -0.1), ("allow_untested", "yes"), ("restore_best", 1),
    ("base_max_lr", -1e-5), ("base_max_lr", "1e-5"), ("apply_lambdas_new_pgs", "false"),
])
def test_bad_phases_setting(field, value):
    find_problem(problems_of(make_job(two_phases(), **{field: value})), None, f"phases.{field}")


def test_base_max_lr_with_an_explicit_schedule_is_a_warning():
    resolved = load_and_validate(make_job(two_phases(), base_max_lr=1e-5))
    assert [w.key for w in resolved.warnings if w.key.startswith("phases.")] == [
        "phases.base_max_lr"]
    assert resolved.group_lr(1) == 8e-4  # the explicit phase keeps the optimizer's lr


def test_generated_schedule_needs_enough_steps():
    problem = find_problem(problems_of(make_job(steps=5)), None, "training.steps")
    assert "8 generated phases" in problem.message


def test_unknown_model_name():
    job = make_job(two_phases())
    job.model.name = "llama99"
    problem = find_problem(problems_of(job), None, "model.name")
    assert "register" in problem.hint


def test_unknown_model_flavor():
    job = make_job(two_phases())
    job.model.flavor = "tiny"
    problem = find_problem(problems_of(job), None, "model.flavor")
    assert "debugmodel" in problem.hint


# --- files ------------------------------------------------------------------------------------

def test_schedule_file_not_found(tmp_path):
    find_problem(problems_of(make_job(schedule_file=str(tmp_path / "nope.toml"))), None,
                 "phases.schedule_file")


def test_schedule_file_not_toml(tmp_path):
    (tmp_path / "s.toml").write_text("[0\nparams = 1\n")
    find_problem(problems_of(make_job(schedule_file=str(tmp_path / "s.toml"))), None, "(file)")


def test_yaml_schedule_file_gets_import_hint(tmp_path):
    (tmp_path / "s.yaml").write_text("0:\n  params: [a]\n")
    problem = find_problem(problems_of(make_job(schedule_file=str(tmp_path / "s.yaml"))), None,
                           "phases.schedule_file")
    assert "import-fts" in problem.hint


# --- all at once, fast, deterministic ---------------------------------------------------------

BAD = {
    "0": {"params": HEAD, "lr": 0.1, "max_transition_step": 10},
    "1": {"params": ["layers.5.nope", r".*norm\.weight"], "max_transition_step": 5,
          "new_optimizer": {"class_path": "SDG"},
          "new_lr_scheduler": {"class_path": "StepLR", "init_args": {"step": 1},
                               "init_pg_lrs": [1e-4]}},
    "3": {"params": [r"layers\.[0"], "typo": 1},
}


def test_every_problem_reported_at_once_in_well_under_a_second():
    job = make_job(BAD)
    problems_of(job)  # warm up imports and the model registry
    start = time.perf_counter()
    with pytest.raises(ScheduleError) as info:
        load_and_validate(job)
    elapsed = time.perf_counter() - start
    keys = {(p.phase, p.key) for p in info.value.problems}
    assert {(None, "(phase keys)"), (0, "lr"), (1, "params[0]"), (1, "params[1]"),
            (1, "max_transition_step"), (1, "new_optimizer.class_path"),
            (1, "new_lr_scheduler.init_pg_lrs"), (1, "new_lr_scheduler.init_args"),
            (3, "params[0]"), (3, "typo")} <= keys
    assert elapsed < 0.5, f"validation took {elapsed:.2f} s"
    message = str(info.value)
    assert message.count("\n  - ") == len(info.value.problems)


def test_validation_is_deterministic():
    first = problems_of(make_job(BAD))
    second = problems_of(make_job(BAD))
    assert [str(p) for p in first] == [str(p) for p in second]


def test_schedule_error_is_a_value_error():
    assert issubclass(ScheduleError, ValueError)


@pytest.mark.parametrize("schedule", ["1F1B", "GPipe", "Interleaved1F1B", "LoopedBFS"])
def test_pipeline_schedules_that_run_every_stages_weight_grads_are_accepted(schedule: str):
    job = make_job(two_phases())
    job.parallelism.pipeline_parallel_degree = 2
    job.parallelism.pipeline_parallel_schedule = schedule
    assert load_and_validate(job).num_phases == 2


@pytest.mark.parametrize("schedule", ["InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV"])
def test_zero_bubble_pipeline_schedules_are_rejected(schedule: str):
    job = make_job(two_phases())
    job.parallelism.pipeline_parallel_degree = 2
    job.parallelism.pipeline_parallel_schedule = schedule
    problem = find_problem(problems_of(job), None, "parallelism.pipeline_parallel_schedule")
    assert "weight gradients" in problem.message and "1F1B" in problem.hint


def test_validation_under_pipeline_parallelism_needs_the_training_batch_size():
    job = make_job(two_phases())
    job.parallelism.pipeline_parallel_degree = 2
    job.validation.enable = True
    job.training.local_batch_size, job.validation.local_batch_size = 4, 2
    problem = find_problem(problems_of(job), None, "validation.local_batch_size")
    assert "validation.local_batch_size = 4" in problem.hint


def test_an_unknown_pipeline_schedule_is_rejected_with_the_valid_names():
    job = make_job(two_phases())
    job.parallelism.pipeline_parallel_degree = 2
    job.parallelism.pipeline_parallel_schedule = "OneFOneB"
    problem = find_problem(problems_of(job), None, "parallelism.pipeline_parallel_schedule")
    assert "GPipe" in problem.message
