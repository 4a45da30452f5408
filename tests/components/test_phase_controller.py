import pytest

from titan_phases.components.phase_controller import (
    PhaseController,
    REASON_STEP,
    ScheduleMismatchError,
    Transition,
)

PARAMS = [["output.weight", "norm.weight"], ["layers.5.w"], ["tok_embeddings.weight"]]


def _controller(steps=(10, 20, None), params=PARAMS) -> PhaseController:
    return PhaseController(list(steps), params)


def test_transitions_after_each_max_transition_step_then_final_phase_runs_on():
    controller = _controller()
    decisions = []
    for completed in range(0, 40):
        transition = controller.due(completed)
        if transition:
            controller.commit(transition)
            decisions.append(transition)
    assert decisions == [
        Transition(0, 1, 10, REASON_STEP),
        Transition(1, 2, 20, REASON_STEP),
    ]
    assert controller.is_final_phase and controller.due(10_000) is None


def test_requested_transition_wins_before_the_step_limit():
    controller = _controller()
    assert controller.due(3) is None
    controller.request_transition("plateau")
    transition = controller.due(3)
    assert transition == Transition(0, 1, 3, "plateau")
    controller.commit(transition)
    assert controller.due(4) is None


def test_state_round_trips_and_resumed_controller_decides_identically():
    original = _controller()
    original.commit(original.due(10))
    resumed = _controller()
    resumed.load_state_dict(original.state_dict())
    assert resumed.phase == 1 and resumed.history == original.history
    assert [resumed.due(s) for s in range(15, 25)] == [original.due(s) for s in range(15, 25)]


def test_changed_phase_params_up_to_the_saved_phase_are_refused():
    saved = _controller()
    saved.commit(saved.due(10))
    changed = _controller(params=[PARAMS[0], ["layers.4.w"], PARAMS[2]])
    with pytest.raises(ScheduleMismatchError, match=r"phase 1.*phase\(s\) 1 differ"):
        changed.load_state_dict(saved.state_dict())


def test_later_phases_may_change_and_fewer_phases_are_refused():
    saved = _controller()
    saved.commit(saved.due(10))
    extended = _controller(params=[*PARAMS[:2], ["tok_embeddings.weight", "x"]])
    extended.load_state_dict(saved.state_dict())
    assert extended.phase == 1
    shorter = PhaseController([None], [PARAMS[0]])
    with pytest.raises(ScheduleMismatchError, match="only 1 phase"):
        shorter.load_state_dict(saved.state_dict())


def test_commit_out_of_order_is_a_bug():
    controller = _controller()
    with pytest.raises(RuntimeError):
        controller.commit(Transition(1, 2, 5, REASON_STEP))


def _plateau_controller(patience=2, steps=(100, 200, None)) -> PhaseController:
    from titan_phases.components.plateau import PlateauTracker

    return PhaseController(
        list(steps), PARAMS, PlateauTracker(patience=patience, min_delta=0.01, mode="min"),
        plateau_transitions=True,
    )


def test_plateau_requests_the_next_phase_before_its_step_limit():
    controller = _plateau_controller()
    assert controller.observe_validation(5, 3.0) is True
    assert controller.observe_validation(10, 2.995) is False  # within min_delta: no improvement
    assert controller.due(10) is None
    assert controller.observe_validation(15, 3.1) is False
    transition = controller.due(15)
    assert transition == Transition(0, 1, 15, "validation plateau")
    controller.commit(transition)
    assert controller.plateau.best is None and controller.plateau.bad_validations == 0


def test_plateau_in_the_final_phase_asks_to_stop_with_the_reason():
    from titan_phases.components.plateau import PlateauTracker

    tracker = PlateauTracker(patience=1, min_delta=0.0, mode="min")
    controller = PhaseController([None], [PARAMS[0]], tracker, plateau_transitions=True)
    controller.observe_validation(5, 2.0)
    assert controller.stop_reason is None
    controller.observe_validation(10, float("nan"))
    assert controller.due(10) is None
    assert "plateaued in the final phase 0" in controller.stop_reason
    assert "best 2 after step 5" in controller.stop_reason


def test_without_plateau_transitions_only_the_best_is_tracked():
    controller = _controller()
    for step, loss in ((5, 3.0), (10, 2.0), (15, 4.0), (20, 4.0)):
        controller.observe_validation(step, loss)
    assert controller.plateau.best == 2.0 and controller.plateau.best_step == 10
    assert controller.due(7) is None and controller.stop_reason is None


def test_plateau_state_survives_a_checkpoint():
    original = _plateau_controller(patience=3)
    original.observe_validation(5, 3.0)
    original.observe_validation(10, 3.5)
    resumed = _plateau_controller(patience=3)
    resumed.load_state_dict(original.state_dict())
    assert resumed.plateau.state() == original.plateau.state()
    assert resumed.last_validation_step == 10
    for controller in (original, resumed):
        controller.observe_validation(15, 3.6)
        controller.observe_validation(20, 3.7)
    assert original.due(20) == resumed.due(20) == Transition(0, 1, 20, "validation plateau")


def test_final_phase_plateau_without_a_finite_validation_says_so():
    controller = PhaseController([None], [["w"]], plateau_transitions=True)
    assert controller.observe_validation(3, float("nan")) is False
    assert "no finite validation loss" in controller.stop_reason


# --- settings of the saved phases that a checkpoint fixes ---------------------------------------

DEBUG_JOB = ("--job.config_file", "train_configs/debug_model.toml")


def _job_controller(*overrides: str, job: tuple[str, ...] = DEBUG_JOB) -> PhaseController:
    """The controller the trainer, validate and the start check build for the job."""
    from titan_phases.components.phase_controller import build_phase_controller
    from titan_phases.config import parse_job_config
    from titan_phases.schedule import load_and_validate
    from titan_phases.train_spec import register_train_specs

    register_train_specs()
    config = parse_job_config([*job, *overrides])
    return build_phase_controller(load_and_validate(config), config.phases,
                                  config.validation.enable)


def _refusal(live: PhaseController, saved: dict) -> str:
    """Why ``live`` refuses to load the controller state ``saved``."""
    with pytest.raises(ScheduleMismatchError) as refused:
        live.load_state_dict(saved)
    return str(refused.value)


def _saved_in(phase: int, *overrides: str, job: tuple[str, ...] = DEBUG_JOB) -> dict:
    controller = _job_controller(*overrides, job=job)
    for k in range(phase):
        controller.commit(Transition(k, k + 1, 20 * (k + 1), REASON_STEP))
    return controller.state_dict()


@pytest.mark.parametrize(
    "phase, change, said",
    [
        (1, ("--phases.schedule.1.lr", "3e-4"),
         "phase 1 lr: 0.0005 in the checkpoint, 0.0003 now"),
        (2, ("--phases.schedule.1.lr", "3e-4"),
         "phase 1 lr: 0.0005 in the checkpoint, 0.0003 now"),
        (0, ("--optimizer.lr", "2e-3"), "[optimizer] lr: 0.001 in the checkpoint, 0.002 now"),
        (1, ("--optimizer.weight_decay", "0"),
         "[optimizer] weight_decay: 0.1 in the checkpoint, 0.0 now"),
        (1, ("--optimizer.beta2", "0.99"), "[optimizer] beta2: 0.95 in the checkpoint, 0.99 now"),
        (1, ("--optimizer.eps", "1e-6"), "[optimizer] eps: 1e-08 in the checkpoint, 1e-06 now"),
        (1, ("--optimizer.name", "Adam"),
         '[optimizer] name: "torch.optim.adamw.AdamW" in the checkpoint, '
         '"torch.optim.adam.Adam" now'),
        (1, ("--optimizer.implementation", "for-loop"),
         '[optimizer] implementation: "fused" in the checkpoint, "for-loop" now'),
        (0, ("--phases.lr_scale", "0.5"), "[phases] lr_scale: 1.0 in the checkpoint, 0.5 now"),
        (1, ("--phases.no-apply_lambdas_new_pgs",),
         "[phases] apply_lambdas_new_pgs: true in the checkpoint, false now (phase 1)"),
        (2, ("--phases.schedule.2.new_lr_scheduler.init_args.T_max", "30"),
         'phase 2 new_lr_scheduler.init_args: {"T_max": 20, "eta_min": 1e-05} in the '
         'checkpoint, {"T_max": 30, "eta_min": 1e-05} now'),
        (2, ("--phases.schedule.2.new_lr_scheduler.no-use_current_optimizer_pg_lrs",),
         "phase 2 new_lr_scheduler.use_current_optimizer_pg_lrs: true in the checkpoint, "
         "false now"),
    ],
)
def test_a_changed_setting_the_checkpoint_fixes_is_refused_naming_phase_and_key(
    phase, change, said
):
    message = _refusal(_job_controller(*change), _saved_in(phase))
    assert f"the checkpoint is in phase {phase}, and this job changes settings" in message
    assert f"\n  {said}\n" in message
    assert "Restore the values the run was started with, or start a new run" in message


@pytest.mark.parametrize(
    "change",
    [
        ("--phases.schedule.0.max_transition_step", "10"),
        ("--phases.schedule.1.max_transition_step", "30"),
        ("--training.max_norm", "0.5"),
        ("--lr_scheduler.warmup_steps", "10", "--lr_scheduler.decay_type", "linear",
         "--lr_scheduler.min_lr_factor", "0.0"),
        ("--training.steps", "80"),
        ("--phases.schedule.2.lr", "1e-4"),
        ("--phases.schedule.2.new_lr_scheduler.init_args.T_max", "30"),
        ("--phases.patience", "5"),
    ],
)
def test_what_a_resumed_job_reads_from_its_config_may_change(change):
    resumed = _job_controller(*change)
    resumed.load_state_dict(_saved_in(1))
    assert resumed.phase == 1 and not resumed.settings_unchecked


def _reinit_job(tmp_path) -> tuple[str, ...]:
    """debug_model.toml with phase 2 starting an SGD optimizer and a lambda LR scheduler."""
    from pathlib import Path

    text = Path("train_configs/debug_model.toml").read_text()
    start = text.index("[phases.schedule.2.new_lr_scheduler]")
    job = tmp_path / "reinit.toml"
    job.write_text(
        text[:start]
        + "[phases.schedule.2.new_optimizer]\nclass_path = \"SGD\"\n"
        "init_args = { lr = 1e-3, momentum = 0.9 }\n\n"
        "[phases.schedule.2.new_lr_scheduler]\n"
        "class_path = \"LambdaLR\"\n"
        "init_args = { lr_lambda = { function = "
        "\"titan_phases.components.lr_scheduler.linear_warmup_stable_decay\", kwargs = { "
        "warmup_steps = 0, stable_steps = 10, decay_steps = 11, lr_decay_type = \"linear\", "
        "min_lr_factor = 0.0 } } }\n"
        "init_pg_lrs = [1e-3, 5e-4, 2e-4]\n"
    )
    return ("--job.config_file", str(job))


def test_a_new_optimizer_and_init_pg_lrs_are_fixed_a_lambda_schedulers_arguments_are_not(
    tmp_path,
):
    job = _reinit_job(tmp_path)
    saved = _saved_in(2, job=job)
    for change, said in (
        (("--phases.schedule.2.new_optimizer.init_args.momentum", "0.5"),
         'phase 2 new_optimizer.init_args: {"lr": 0.001, "momentum": 0.9} in the checkpoint, '
         '{"lr": 0.001, "momentum": 0.5} now'),
        (("--phases.schedule.2.new_optimizer.class_path", "RMSprop"),
         'phase 2 new_optimizer.class_path: "torch.optim.SGD" in the checkpoint, '
         '"torch.optim.RMSprop" now'),
        (("--phases.schedule.2.new_lr_scheduler.init_pg_lrs", "1e-3", "4e-4", "2e-4"),
         "phase 2 new_lr_scheduler.init_pg_lrs: [0.001, 0.0005, 0.0002] in the checkpoint, "
         "[0.001, 0.0004, 0.0002] now"),
    ):
        with pytest.raises(ScheduleMismatchError, match="settings of phases 0..2") as refused:
            _job_controller(*change, job=job).load_state_dict(saved)
        assert f"\n  {said}\n" in str(refused.value)
    # The lambdas come from the config: a longer decay takes effect.
    longer = _job_controller(
        "--phases.schedule.2.new_lr_scheduler.init_args.lr_lambda.kwargs.decay_steps", "40",
        job=job,
    )
    longer.load_state_dict(saved)
    assert longer.phase == 2


def test_changed_settings_are_named_at_once_with_changed_params():
    settings = [{"[optimizer] lr": 1.0}, {"lr": 1.0}, {"lr": 2.0}]
    saved = PhaseController([10, 20, None], PARAMS, phase_settings=settings)
    saved.commit(saved.due(10))
    live = PhaseController([10, 20, None], [["norm.weight"], *PARAMS[1:]],
                           phase_settings=[{"[optimizer] lr": 3.0}, *settings[1:]])
    message = _refusal(live, saved.state_dict())
    assert "the parameters of phase(s) 0 differ" in message
    assert "\n  [optimizer] lr: 1.0 in the checkpoint, 3.0 now\n" in message


def test_one_line_per_change_names_every_phase_it_was_made_in():
    n = 40
    params = [[f"layers.{k}.w"] for k in range(n)]
    saved = PhaseController([None] * n, params, phase_settings=[{"lr": None}] * n)
    for k in range(n - 1):
        saved.commit(Transition(k, k + 1, k, REASON_STEP))
    lrs = [{"lr": None}] + [{"lr": 1e-3}] * 30 + [{"lr": None}] * 3 + [{"lr": 1e-3}] * 6
    live = PhaseController([None] * n, params, phase_settings=lrs,
                           settings_source="[phases.cycle] lr")
    message = _refusal(live, saved.state_dict())
    assert "\n  phases 1-30, 34-39 lr: not set in the checkpoint, 0.001 now\n" in message
    assert "The phases' own settings come from [phases.cycle] lr." in message


def test_a_checkpoint_saved_without_settings_resumes_unchecked():
    import json

    saved = _saved_in(1)
    state = json.loads(saved["json"])
    del state["settings"]  # as a checkpoint written before the settings were saved
    resumed = _job_controller("--phases.schedule.1.lr", "3e-4")
    resumed.load_state_dict({**saved, "json": json.dumps(state)})
    assert resumed.phase == 1 and resumed.settings_unchecked
    checked = _job_controller()
    checked.load_state_dict(saved)
    assert not checked.settings_unchecked
