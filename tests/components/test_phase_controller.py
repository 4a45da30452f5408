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
