"""Transition timings from console logs."""

from __future__ import annotations

import pytest

from bench.logs import thaw_rebuild_seconds

LOG = """\
[titan] 2026-11-22 03:23:14,153 - root - INFO - step:  8  loss:  8.00189  grad_norm:  1.5234
[titan] 2026-11-22 03:23:14,156 - titan_phases.components.optimizer - INFO - Optimizer phase 1
[titan] 2026-11-22 03:23:14,157 - titan_phases.trainer - INFO - Phase 0 -> 1 after step 8 (x)
[titan] 2026-11-22 03:23:15,403 - root - INFO - step:  9  loss:  8.02265  grad_norm:  1.5570
[titan] 2026-11-22 03:23:22,125 - root - INFO - step: 16  loss:  7.86764  grad_norm:  1.5744
[titan] 2026-11-22 03:23:22,200 - titan_phases.trainer - INFO - Phase 1 -> 2 after step 16 (x)
"""


def test_thaw_rebuild_seconds() -> None:
    seconds = thaw_rebuild_seconds(LOG)
    assert seconds.keys() == {1, 2}
    assert seconds[1] == pytest.approx(0.004, abs=1e-6)
    assert seconds[2] == pytest.approx(0.075, abs=1e-6)


def test_stock_log_has_no_transitions() -> None:
    assert thaw_rebuild_seconds(LOG.splitlines()[0]) == {}


def test_transition_without_its_step_line() -> None:
    with pytest.raises(ValueError, match="after step 16"):
        thaw_rebuild_seconds(LOG.splitlines()[-1])
