"""Read transition timings from a job's console log (rank 0, torchtitan's log format).

torchtitan logs ``step: S ...`` at the end of step ``S``; titan_phases logs
``Phase k -> k+1 after step S`` once the next phase's params are thawed and the optimizer and
LR schedulers are rebuilt, at the start of step ``S + 1``. With checkpointing and validation
off, the time between the two lines is the thaw + rebuild (plus a few Python statements of
torchtitan's loop).

**Limitations**
Log timestamps have millisecond resolution.
"""

from __future__ import annotations

import re
from datetime import datetime

_STAMP = r"\[titan\] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - "
_STEP = re.compile(_STAMP + r"root - INFO - step:\s*(\d+)\s")
_TRANSITION = re.compile(
    _STAMP + r"titan_phases\.trainer - INFO - Phase (\d+) -> (\d+) after step (\d+)"
)


def _time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def thaw_rebuild_seconds(log: str) -> dict[int, float]:
    """``{phase entered: seconds from the last step's log line to the transition line}``."""
    step_logged: dict[int, float] = {}
    result: dict[int, float] = {}
    for line in log.splitlines():
        if match := _STEP.search(line):
            step_logged[int(match.group(2))] = _time(match.group(1))
        elif match := _TRANSITION.search(line):
            after_step = int(match.group(4))
            if after_step not in step_logged:
                raise ValueError(f"log has a transition after step {after_step} but no such step")
            result[int(match.group(3))] = _time(match.group(1)) - step_logged[after_step]
    return result
