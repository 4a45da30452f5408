"""In-process timing of the controller's per-step decision (no job, no noise from other ranks).

On a non-transition step PhasedTrainer asks ``PhaseController.due(step)`` once; this times that
call in phase 0 of a three-phase schedule at a step before its limit (the common case).

**Limitations**
Times the decision only; titan_phases' per-step metrics work is measured inside the jobs.
"""

from __future__ import annotations

import timeit

from titan_phases.components.phase_controller import PhaseController


def controller_due_seconds(calls: int = 100_000, rounds: int = 5) -> float:
    """Best-of-``rounds`` seconds per ``PhaseController.due`` call on a non-transition step."""
    controller = PhaseController([1_000, 2_000, None], [["a"], ["b"], ["c"]])
    if controller.due(10) is not None:
        raise AssertionError("step 10 of a 1000-step phase must not transition")
    best = min(timeit.repeat(lambda: controller.due(10), number=calls, repeat=rounds))
    return best / calls
