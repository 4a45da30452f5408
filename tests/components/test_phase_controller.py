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
