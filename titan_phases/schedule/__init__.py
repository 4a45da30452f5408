"""Phase schedules: format, loading, generation and validation; what a training run needs.

:func:`load_and_validate` is the one place that resolves a job's schedule. The input check of
``python -m titan_phases.train`` calls it once on every rank, before any process group exists,
and hands the result to the trainer, which attaches it to the job config for the phased
TrainSpec's builders (:func:`attach_schedule`, :func:`attached_schedule`). The phase table
(:mod:`.table`) and :mod:`titan_phases.config.toml_writer` turn a schedule back into text;
imports from other formats are :mod:`titan_phases.interop`.
"""

from .errors import Problem, ScheduleError
from .generation import generate_schedule
from .loading import parse_schedule, read_schedule_file
from .matching import canonical_param_name, resolve_phase_params
from .resolve import (
    attach_schedule,
    attached_schedule,
    load_and_validate,
    LRSchedulerChange,
    PhasePlan,
    ResolvedSchedule,
)
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
    "attach_schedule",
    "attached_schedule",
    "canonical_param_name",
    "generate_schedule",
    "load_and_validate",
    "parse_schedule",
    "read_schedule_file",
    "resolve_phase_params",
]
