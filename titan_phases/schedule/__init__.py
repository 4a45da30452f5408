"""Phase schedules: format, loading, generation and validation; what a training run needs.

:func:`load_and_validate` is the one place that resolves a job's schedule. The input check of
``python -m titan_phases.train`` calls it on every rank before any process group exists, then
the phased TrainSpec (to freeze to phase 0) and the trainer; it is deterministic, so every call
gives the same :class:`ResolvedSchedule`. Converting schedules from and to other formats is
:mod:`titan_phases.interop`.
"""

from .errors import Problem, ScheduleError
from .generation import generate_schedule
from .loading import parse_schedule, read_schedule_file
from .matching import canonical_param_name, resolve_phase_params
from .resolve import load_and_validate, LRSchedulerChange, PhasePlan, ResolvedSchedule
from .schema import LRSchedulerInit, OptimizerInit, Phase, PhaseSchedule

__all__ = [
    "LRSchedulerChange",
    "LRSchedulerInit",
    "OptimizerInit",
    "Phase",
    "PhasePlan",
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
