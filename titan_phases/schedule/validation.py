"""Every check of a schedule and of the ``[phases]`` settings, reporting into one Problems.

Checks are pure functions of the schedule, the job config and the model's parameter names, so
they give the same result on every rank, in the same order (see ``Problems.raise_if_any``).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from torch.distributed.pipelining.schedules import get_schedule_class
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torchtitan.config import JobConfig

from titan_phases.config.job_config import Phases
from titan_phases.config.toml_writer import as_written
from titan_phases.config.typecheck import describe, fits

from . import classes
from .errors import Problems
from .loading import parse_lr_scheduler_init, parse_optimizer_init
from .schema import LRSchedulerInit, OptimizerInit, PhaseSchedule

_DUMMY_LR = 1.0e-3


def _type_ok(value: Any, hint: Any) -> bool:
    # A NaN or infinite [phases] number is never meant.
    return fits(value, hint) and (hint is not float or math.isfinite(value))


# Zero-bubble schedules split a stage's backward into an input-grad and a weight-grad part; a
# stage after the first whose inputs need no grad (the lowest trainable stage, with frozen ones
# below it) never gets its weight grads, so its params would silently not train
# (tests/components/test_pipeline.py shows it on torch's schedules).
_ZERO_BUBBLE_SCHEDULES = ("InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV")


def _check_pipeline(job_config: JobConfig, source: str, problems: Problems) -> None:
    validation, training = job_config.validation, job_config.training
    if validation.enable and validation.local_batch_size != training.local_batch_size:
        # torchtitan validates through the training schedule, whose number of microbatches is
        # fixed from training.local_batch_size.
        problems.error(source, None, "validation.local_batch_size",
                       f"under pipeline parallelism validation runs through the training "
                       f"schedule and needs the training batch size, got "
                       f"{validation.local_batch_size} for {training.local_batch_size}",
                       f"set validation.local_batch_size = {training.local_batch_size}")
    key = "parallelism.pipeline_parallel_schedule"
    name = job_config.parallelism.pipeline_parallel_schedule
    if name in _ZERO_BUBBLE_SCHEDULES:
        problems.error(source, None, key,
                       f"{name!r} drops the weight gradients of a trainable stage whose "
                       f"inputs need no gradient, as the lowest trainable stage's do when the "
                       f"stages below it are frozen",
                       "use 1F1B, GPipe, Interleaved1F1B or LoopedBFS")
        return
    try:
        get_schedule_class(name)
    except ValueError as e:
        problems.error(source, None, key, str(e), "use one of the names listed")


class Settings(NamedTuple):
    """What :func:`check_settings` found usable."""

    invalid: frozenset[str]  # ``[phases]`` fields with a wrong type or value
    reinit_optimizer: OptimizerInit | None
    reinit_lr_scheduler: LRSchedulerInit | None


def check_settings(
    cfg: Phases, job_config: JobConfig, source: str, problems: Problems, *, explicit: bool
) -> Settings:
    """Check the ``[phases]`` fields and how they combine with the rest of the job config,
    and parse the implicit reinit configs (None when absent or invalid)."""
    hints = typing.get_type_hints(Phases)
    valid = set()
    for f in dataclasses.fields(Phases):
        value, hint = getattr(cfg, f.name), hints[f.name]
        if _type_ok(value, hint):
            valid.add(f.name)
        else:
            expected = "a finite number" if fits(value, hint) else describe(hint)
            problems.error(source, None, f"phases.{f.name}",
                           f"expected {expected}, got {as_written(value)}")

    ranges = {
        "lr_scale": (lambda v: v > 0, "must be > 0"),
        "max_depth": (lambda v: v >= -1, "must be -1 (no limit) or a phase index >= 0"),
        "blocks_per_phase": (lambda v: v >= 1, "must be >= 1"),
        "steps_per_phase": (lambda v: v >= 0, "must be >= 0 (0: split training.steps evenly)"),
        "patience": (lambda v: v >= 1, "must be >= 1 validation"),
        "min_delta": (lambda v: v >= 0, "must be >= 0"),
        "base_max_lr": (lambda v: v >= 0, "must be > 0, or 0 to leave it unset"),
    }
    for name, (ok, message) in ranges.items():
        if name in valid and not ok(getattr(cfg, name)):
            problems.error(source, None, f"phases.{name}",
                           f"{message}, got {as_written(getattr(cfg, name))}")
            valid.discard(name)

    if cfg.schedule_file and cfg.schedule:
        problems.error(source, None, "phases.schedule",
                       "both phases.schedule_file and an inline [phases.schedule] are set",
                       "keep one of them")

    if job_config.training.steps < 1:
        problems.error(source, None, "training.steps",
                       f"must be >= 1, got {job_config.training.steps}")

    if job_config.parallelism.pipeline_parallel_degree > 1:
        _check_pipeline(job_config, source, problems)

    if cfg.transition_mode in ("plateau", "both") and not job_config.validation.enable:
        problems.error(
            source, None, "phases.transition_mode",
            f"{cfg.transition_mode!r} transitions watch the validation loss, but "
            "[validation] enable = false",
            "set validation.enable = true, or use transition_mode = 'step'",
        )
    if cfg.restore_best is True:
        for section, enabled in (("validation", job_config.validation.enable),
                                 ("checkpoint", job_config.checkpoint.enable)):
            if not enabled:
                problems.error(source, None, "phases.restore_best",
                               f"restoring the best checkpoint needs [{section}] enable = true",
                               f"set {section}.enable = true, or restore_best = false")

    if cfg.cycle.enable is True:
        _check_cycle_settings(cfg, source, problems, explicit=explicit)
    if cfg.fp32_master_weights is True and job_config.training.dtype != "bfloat16":
        problems.error(source, None, "phases.fp32_master_weights",
                       f"keeps fp32 masters of bf16 weights, but training.dtype = "
                       f"{job_config.training.dtype!r} stores the weights in that dtype already",
                       'set training.dtype = "bfloat16", or remove fp32_master_weights')
    reinit_optimizer = reinit_lr_scheduler = None
    if explicit:
        for name in ("reinit_optimizer", "reinit_lr_scheduler"):
            if getattr(cfg, name):
                problems.error(
                    source, None, f"phases.{name}",
                    "only applies to generated schedules, but an explicit schedule is given",
                    "put new_optimizer / new_lr_scheduler into the schedule's phases instead",
                )
        defaults = Phases()
        for name in ("blocks_per_phase", "steps_per_phase", "base_max_lr"):
            if getattr(cfg, name) != getattr(defaults, name):
                problems.warn(source, None, f"phases.{name}",
                              "only applies to generated schedules; ignored")
    else:
        if "reinit_optimizer" in valid and cfg.reinit_optimizer:
            reinit_optimizer = parse_optimizer_init(
                cfg.reinit_optimizer, source, None, "phases.reinit_optimizer", problems)
        if "reinit_lr_scheduler" in valid and cfg.reinit_lr_scheduler:
            reinit_lr_scheduler = parse_lr_scheduler_init(
                cfg.reinit_lr_scheduler, source, None, "phases.reinit_lr_scheduler", problems)
            if reinit_lr_scheduler is not None and reinit_lr_scheduler.init_pg_lrs is not None:
                problems.error(
                    source, None, "phases.reinit_lr_scheduler.init_pg_lrs",
                    "not supported for generated schedules: the number of param groups grows "
                    "with every phase",
                    "remove it, or write the schedule out (titan-phases generate) and set "
                    "init_pg_lrs per phase",
                )
                reinit_lr_scheduler = None
    for name, parsed in (("reinit_optimizer", reinit_optimizer),
                         ("reinit_lr_scheduler", reinit_lr_scheduler)):
        if not explicit and getattr(cfg, name) and parsed is None:
            valid.discard(name)
    invalid = frozenset(f.name for f in dataclasses.fields(Phases)) - valid
    return Settings(invalid, reinit_optimizer, reinit_lr_scheduler)


def _check_cycle_settings(cfg: Phases, source: str, problems: Problems, *, explicit: bool) -> None:
    """What ``[phases.cycle]`` excludes: a written schedule, and the settings of generated
    thawing schedules."""
    if explicit:
        problems.error(source, None, "phases.cycle.enable",
                       "a cycle generates the schedule, but phases.schedule_file or an inline "
                       "[phases.schedule] is given too",
                       "keep one of them (titan-phases generate writes a cycle out as a "
                       "schedule file)")
    for name in ("reinit_optimizer", "reinit_lr_scheduler"):
        if getattr(cfg, name):
            problems.error(source, None, f"phases.{name}",
                           "applies to generated thawing schedules, not to a cycle",
                           "remove it, or write the cycle out (titan-phases generate) and give "
                           "phases new_optimizer / new_lr_scheduler")
    if cfg.transition_mode in ("plateau", "both"):
        problems.error(source, None, "phases.transition_mode",
                       f"a cycle changes blocks every phases.cycle.steps_per_phase steps; "
                       f"{cfg.transition_mode!r} would end phases on the validation loss",
                       "set transition_mode = 'step' (or 'auto')")
    defaults = Phases()
    for name in ("blocks_per_phase", "steps_per_phase", "base_max_lr", "max_depth"):
        if getattr(cfg, name) != getattr(defaults, name):
            problems.warn(source, None, f"phases.{name}",
                          "applies to generated thawing schedules; ignored with a cycle (its "
                          "own settings are under [phases.cycle])")


def check_phase_zero(schedule: PhaseSchedule, problems: Problems) -> None:
    """Phase 0 trains with ``[optimizer]`` and ``[lr_scheduler]``; it cannot replace them."""
    if not schedule.phases or schedule.phases[0].index != 0:
        return
    phase = schedule.phases[0]
    if phase.lr is not None:
        problems.error(
            schedule.source, 0, "lr",
            f"phase 0's param group takes [optimizer] lr; lr = {phase.lr} would be ignored",
            "remove lr from phase 0 and set optimizer.lr (FTS ignores it with a warning; here "
            "it is an error so the lr you meant is not silently dropped)",
        )
    for key, section in (("new_optimizer", "optimizer"), ("new_lr_scheduler", "lr_scheduler")):
        if getattr(phase, key) is not None:
            problems.error(
                schedule.source, 0, key,
                f"phase 0 trains with [{section}]; a {key} can only start a later phase",
                f"configure [{section}] for phase 0, or move {key} to the phase it should start",
            )


def check_transitions(
    schedule: PhaseSchedule, n_running: int, mode: str, training_steps: int, problems: Problems
) -> None:
    """``max_transition_step`` against ``transition_mode``, each other and ``training.steps``.

    Only the phases that run (``n_running``, after ``max_depth``) are checked: the last of them
    is the final phase, which has nothing to transition to.
    """
    previous: tuple[int, int] | None = None
    for position, phase in enumerate(schedule.phases[:n_running]):
        step, k = phase.max_transition_step, phase.index
        final = position == n_running - 1
        if step is None:
            # A malformed value or FTS's max_transition_epoch was reported already.
            reported = problems.has(k, "max_transition_")
            if mode == "step" and not final and not reported:
                problems.error(
                    schedule.source, k, "max_transition_step",
                    "missing: with transition_mode = 'step' every phase but the last needs one",
                    "add max_transition_step = <last step of this phase>, or set "
                    "phases.transition_mode = 'both' or 'plateau'",
                )
            continue
        if mode == "plateau":
            problems.error(
                schedule.source, k, "max_transition_step",
                "not used with transition_mode = 'plateau' (only the validation loss ends a phase)",
                "remove it, or set phases.transition_mode = 'both'",
            )
            continue
        if previous is not None and step <= previous[1]:
            problems.error(
                schedule.source, k, "max_transition_step",
                f"{step} is not after phase {previous[0]}'s max_transition_step {previous[1]}",
                "transition steps must increase from phase to phase",
            )
        if final:
            problems.warn(
                schedule.source, k, "max_transition_step",
                f"phase {k} is the last phase that runs, so max_transition_step = {step} has no "
                f"effect; training continues to training.steps = {training_steps}",
            )
        elif step >= training_steps:
            # A warning, not an error: shortening a run (--training.steps 20) is a normal thing
            # to do with a schedule written for the full run.
            problems.warn(
                schedule.source, k, "max_transition_step",
                f"{step} is not before the end of training (training.steps = {training_steps}), "
                f"so phase {k + 1} and later phases will not run in this job",
                "lower it, raise training.steps, or set phases.max_depth",
            )
        previous = (k, step)


def _signature_hint(cls: type) -> str:
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return "fix init_args"
    shown = [str(p) for p in params if p.name not in ("self", "params", "optimizer")
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return f"{cls.__name__} takes: {', '.join(shown)}"


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _typed_init_args(cls: type, init_args: Mapping[str, Any], source: str, phase: int | None,
                     prefix: str, problems: Problems) -> Mapping[str, Any] | None:
    """Report each of ``init_args`` whose value is not of its annotated type; return the others
    to dry-run with, or None when a required one is mistyped (a dry run would only fail on it
    again)."""
    mistyped = classes.mistyped_init_args(cls, init_args)
    for name, expected in mistyped.items():
        problems.error(source, phase, f"{prefix}.init_args.{name}",
                       f"expected {expected}, got {as_written(init_args[name])}",
                       _signature_hint(cls))
    if not all(classes.has_default(cls, name) for name in mistyped):
        return None
    return {k: v for k, v in init_args.items() if k not in mistyped}


def check_optimizer(init: OptimizerInit, source: str, phase: int | None, prefix: str,
                    problems: Problems) -> None:
    """Import the class, check it is an Optimizer, check the types of ``init_args`` and
    construct it over a dummy parameter."""
    try:
        cls = classes.import_class(init.class_path, Optimizer, "a torch.optim.Optimizer subclass")
    except classes.WrongKindError as e:
        problems.error(source, phase, f"{prefix}.class_path", f"wrong kind of class: {e}",
                       "name an optimizer class, e.g. torch.optim.AdamW")
        return
    except Exception as e:  # import runs user code: report whatever it raises
        problems.error(source, phase, f"{prefix}.class_path",
                       f"cannot import {init.class_path!r}: {_error_text(e)}",
                       "check the dotted path and that its package is installed")
        return
    init_args = _typed_init_args(cls, init.init_args, source, phase, prefix, problems)
    if init_args is None:
        return
    try:
        classes.dry_run_optimizer(cls, init_args)
    except Exception as e:
        problems.error(source, phase, f"{prefix}.init_args",
                       f"{cls.__name__}(**init_args) fails: {_error_text(e)}", _signature_hint(cls))


def check_lr_scheduler(
    init: LRSchedulerInit, n_groups: int, source: str, phase: int | None, prefix: str,
    cfg: Phases, job_config: JobConfig, problems: Problems,
) -> None:
    """Import and classify the scheduler, check ``init_pg_lrs`` against the ``n_groups`` param
    groups of the phase and the types of ``init_args``, and dry-run it as if around that many
    groups (:func:`_dry_run_lr_scheduler`)."""
    try:
        cls = classes.import_class(init.class_path, (LRScheduler, ReduceLROnPlateau),
                                   "a torch.optim.lr_scheduler class")
    except classes.WrongKindError as e:
        problems.error(source, phase, f"{prefix}.class_path", f"wrong kind of class: {e}",
                       "name an LR scheduler class, e.g. torch.optim.lr_scheduler.StepLR")
        return
    except Exception as e:
        problems.error(source, phase, f"{prefix}.class_path",
                       f"cannot import {init.class_path!r}: {_error_text(e)}",
                       "check the dotted path and that its package is installed")
        return

    if issubclass(cls, classes.REJECTED_LR_SCHEDULERS):
        problems.error(source, phase, f"{prefix}.class_path",
                       f"{cls.__name__} is not supported: it wraps other scheduler objects",
                       "express the combined schedule as a LambdaLR function")
        return
    if cls not in classes.SUPPORTED_LR_SCHEDULERS and cfg.allow_untested is not True:
        names = ", ".join(c.__name__ for c in classes.SUPPORTED_LR_SCHEDULERS)
        problems.error(source, phase, f"{prefix}.class_path",
                       f"{init.class_path} is not a tested LR scheduler (tested: {names})",
                       "set phases.allow_untested = true to use it anyway")
    if issubclass(cls, ReduceLROnPlateau) and not job_config.validation.enable:
        problems.error(source, phase, f"{prefix}.class_path",
                       "ReduceLROnPlateau needs a monitored metric (the validation loss), but "
                       "[validation] enable = false",
                       "set validation.enable = true; it is stepped after each validation")

    if init.init_pg_lrs is not None:
        if init.use_current_optimizer_pg_lrs:
            problems.error(source, phase, f"{prefix}.use_current_optimizer_pg_lrs",
                           "conflicts with init_pg_lrs: both set the param groups' lrs",
                           "keep one of them")
        if len(init.init_pg_lrs) != n_groups:
            problems.error(
                source, phase, f"{prefix}.init_pg_lrs",
                f"has {len(init.init_pg_lrs)} lr(s), but phase {phase} has {n_groups} param "
                f"group(s) (one per phase whose parameters still train)",
                f"give exactly {n_groups} lrs, the last one for this phase's new group",
            )
    init_args = _typed_init_args(cls, init.init_args, source, phase, prefix, problems)
    if init_args is None:
        return
    init_pg_lrs = init.init_pg_lrs
    if init_pg_lrs is not None and len(init_pg_lrs) != n_groups:
        init_pg_lrs = None  # reported above
    error = _dry_run_lr_scheduler(cls, init_args, n_groups, init_pg_lrs)
    if error is not None:
        problems.error(source, phase, f"{prefix}.init_args",
                       f"{cls.__name__}(optimizer, **init_args) fails: {_error_text(error)}",
                       _signature_hint(cls))


def _dry_run_lr_scheduler(cls: type, init_args: Mapping[str, Any], n_groups: int,
                          init_pg_lrs: Sequence[float] | None) -> Exception | None:
    """What constructing and stepping ``cls`` around ``n_groups`` param groups raises, or None.

    With ``init_pg_lrs`` (as long as the phase's groups, like the schedule text) every group
    takes part. Otherwise the run passes with :func:`classes.dry_run_group_count` groups exactly
    when it would with all of them; a failing run with fewer groups and a list argument is
    repeated with all of them, so that a per-group list of the wrong length is reported with
    the phase's real count.
    """
    if init_pg_lrs is not None:
        attempts = [list(init_pg_lrs)]
    else:
        count = classes.dry_run_group_count(init_args, n_groups)
        attempts = [[_DUMMY_LR] * count]
        if count != n_groups and any(isinstance(v, (list, tuple)) for v in init_args.values()):
            attempts.append([_DUMMY_LR] * n_groups)
    error = None
    for group_lrs in attempts:
        try:
            classes.dry_run_lr_scheduler(cls, init_args, group_lrs)
            return None
        except Exception as e:  # the class's own code runs: report whatever it raises
            error = e
    return error


def check_reinits(schedule: PhaseSchedule, group_counts: Sequence[int], cfg: Phases,
                  job_config: JobConfig, problems: Problems) -> None:
    """Dry-run every ``new_optimizer`` and ``new_lr_scheduler`` of an explicit schedule;
    ``group_counts``: each phase's number of optimizer param groups."""
    for phase, n_groups in zip(schedule.phases, group_counts):
        if phase.index == 0:
            continue  # reported by check_phase_zero
        if phase.new_optimizer is not None:
            check_optimizer(phase.new_optimizer, schedule.source, phase.index, "new_optimizer",
                            problems)
        scheduler = phase.new_lr_scheduler
        if scheduler is not None:
            check_lr_scheduler(scheduler, n_groups, schedule.source,
                               phase.index, "new_lr_scheduler", cfg, job_config, problems)
            lrs = scheduler.init_pg_lrs
            if (phase.lr is not None and lrs is not None and len(lrs) == n_groups
                    and lrs[-1] != phase.lr):
                problems.error(
                    schedule.source, phase.index, "new_lr_scheduler.init_pg_lrs",
                    f"its last entry {lrs[-1]} (this phase's group) contradicts lr = {phase.lr}",
                    "drop lr, or make the two equal",
                )


def check_implicit_reinits(
    reinit_optimizer: OptimizerInit | None, reinit_lr_scheduler: LRSchedulerInit | None,
    n_phases: int, source: str, cfg: Phases, job_config: JobConfig, problems: Problems,
) -> None:
    """Dry-run the reinit configs of a generated schedule once, reported against [phases]."""
    if reinit_optimizer is not None:
        check_optimizer(reinit_optimizer, source, None, "phases.reinit_optimizer", problems)
    if reinit_lr_scheduler is not None:
        for n_groups in sorted({2, max(n_phases, 2)}):  # the first and the last transition
            before = len(problems.errors)
            check_lr_scheduler(reinit_lr_scheduler, n_groups, source, None,
                               "phases.reinit_lr_scheduler", cfg, job_config, problems)
            if len(problems.errors) > before:
                break
