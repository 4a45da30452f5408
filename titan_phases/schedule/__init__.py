"""Phase schedules: format, loading, generation, validation, FTS import and rendering.

The trainer calls :func:`load_and_validate` on every rank before any process group exists.
"""

from .errors import Problem, ScheduleError
from .generation import generate_schedule
from .loading import parse_schedule, read_schedule_file
from .matching import canonical_param_name, resolve_phase_params
from .resolve import ResolvedSchedule, load_and_validate
from .schema import LRSchedulerInit, OptimizerInit, Phase, PhaseSchedule

__all__ = [
    "LRSchedulerInit",
    "OptimizerInit",
    "Phase",
    "PhaseSchedule",
    "Problem",
    "ResolvedSchedule",
    "ScheduleError",
    "canonical_param_name",
    "generate_schedule",
    "load_and_validate",
    "parse_schedule",
    "read_schedule_file",
    "resolve_phase_params",
]
