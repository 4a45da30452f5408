import math

from titan_phases.components.plateau import PlateauTracker


def test_min_mode_counts_validations_without_improvement_beyond_min_delta():
    tracker = PlateauTracker(patience=2, min_delta=0.1, mode="min")
    assert tracker.update(1.0, step=1)
    assert not tracker.update(0.95, step=2) and not tracker.plateaued
    assert tracker.update(0.85, step=3) and tracker.bad_validations == 0
    assert not tracker.update(0.9, step=4)
    assert not tracker.update(math.nan, step=5)
    assert tracker.plateaued and tracker.best == 0.85 and tracker.best_step == 3


def test_max_mode_and_reset():
    tracker = PlateauTracker(patience=1, min_delta=0.0, mode="max")
    tracker.update(0.5, step=1)
    assert tracker.update(0.6, step=2)
    assert not tracker.update(0.6, step=3) and tracker.plateaued
    state = tracker.state()
    tracker.reset()
    assert tracker.best is None and not tracker.plateaued
    tracker.restore(state)
    assert tracker.best == 0.6 and tracker.plateaued
