"""Load, generate and validate the job's schedule: the one entry point for the trainer.

:func:`load_and_validate` is deterministic and needs no process group or accelerator (the model
is built on the meta device), so every rank calls it before ``torch.distributed`` is set up and
gets the same :class:`ResolvedSchedule`, or the same :class:`ScheduleError`.

A process resolves its job's schedule once and hands it on with the job config
(:func:`attach_schedule`): torchtitan passes the job config, and nothing else of the job, to the
TrainSpec builders, which read the schedule back with :func:`attached_schedule`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torchtitan.config import JobConfig

from . import classes
from .cycle import CyclePosition, generate_cycle
from .errors import Problem, Problems, ScheduleError
from .generation import generate_schedule
from .loading import parse_schedule, read_schedule_file, resolve_schedule_path
from .matching import match_phase_params, select_params
from .model_info import model_params, ModelParams
from .schema import LRSchedulerInit, OptimizerInit, Phase, running_phase_count
from .validation import (
    check_implicit_reinits,
    check_phase_zero,
    check_reinits,
    check_settings,
    check_transitions,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LRSchedulerChange:
    """A new LR scheduler a phase starts, with how its param groups' starting lrs are chosen."""

    class_path: str
    init_args: Mapping[str, Any]
    init_pg_lrs: tuple[float, ...] | None
    """One starting lr per param group (phases 0..k), ``lr_scale`` applied: the phase's
    ``init_pg_lrs``, else the groups' initial lrs (:meth:`ResolvedSchedule.initial_lrs`). None
    only with ``use_current_optimizer_pg_lrs``: the groups then start at their current lrs."""
    use_current_optimizer_pg_lrs: bool


@dataclass(frozen=True)
class PhasePlan:
    """Everything entering phase ``index`` hands to the model and the optimizer/LR containers."""

    index: int
    params: tuple[str, ...]
    """Canonical names of the parameters this phase thaws."""
    trainable: tuple[str, ...]
    """Canonical names of every parameter trainable during the phase."""
    lr: float
    """Initial lr of the param group the phase adds, ``lr_scale`` applied."""
    optimizer: tuple[str, Mapping[str, Any]] | None
    """``(class_path, init_args)`` of a new optimizer (``lr`` scaled), or None to keep it."""
    lr_scheduler: LRSchedulerChange | None
    """A new LR scheduler, or None to let the running one cover the new group."""
    max_norm: float
    """Gradient clipping norm during the phase."""
    frozen: tuple[str, ...] = ()
    """Canonical names of the parameters that stop training when the phase starts."""
    groups: tuple[int, ...] | None = None
    """The optimizer's param groups during the phase, by the phase that added each (a phase
    with ``params`` adds one; a group leaves once all its parameters are frozen). None: every
    phase so far added one and none left (a plan made by hand for a schedule that only thaws)."""


class _PhaseTables(NamedTuple):
    """Per-phase values of a ResolvedSchedule that depend on the phases before, built in one
    pass so that asking about every phase (the phase table, each transition's plan) costs O(N)
    in all rather than O(N^2)."""

    optimizer: tuple[OptimizerInit | None, ...]
    """The latest ``new_optimizer`` up to each phase."""
    max_norm: tuple[float, ...]
    group_lr: tuple[float, ...]
    latest_init_pg_lrs: tuple[int | None, ...]
    """The latest phase >= 1 up to each phase whose new LR scheduler has ``init_pg_lrs``."""
    trainable: tuple[tuple[str, ...], ...]
    """Per phase, every parameter that trains in it, in model order."""
    groups: tuple[tuple[int, ...], ...]
    """Per phase, its param groups by the phase that added each (see :class:`PhasePlan`)."""
    lr_scheduler: tuple[LRSchedulerInit | None, ...]
    """The latest ``new_lr_scheduler`` up to each phase (None: ``[lr_scheduler]``'s)."""


def trainable_and_groups(
    names: Iterable[str], thawed: Sequence[Sequence[str]], frozen: Sequence[Sequence[str]]
) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[int, ...], ...]]:
    """Per phase, the parameters that train in it (in the order of ``names``, the model's) and
    its optimizer param groups by the phase that added each, given what each phase thaws and
    freezes (a param group leaves once none of its parameters trains)."""
    order = {name: i for i, name in enumerate(names)}
    group_of: dict[str, int] = {}  # a trainable parameter -> the phase that thawed it
    trainable: list[tuple[str, ...]] = []
    groups: list[tuple[int, ...]] = []
    for k, (entering, leaving) in enumerate(zip(thawed, frozen)):
        for name in leaving:
            group_of.pop(name, None)
        group_of.update(dict.fromkeys(entering, k))
        trainable.append(tuple(sorted(group_of, key=order.__getitem__)))
        groups.append(tuple(sorted(set(group_of.values()))))
    return tuple(trainable), tuple(groups)


@dataclass(frozen=True)
class ResolvedSchedule:
    """A validated schedule with its parameters resolved against the model.

    Attributes:
        phases: the phases that run (``max_depth`` applied); ``phases[k].index == k``.
        source: where the schedule came from (file, inline table, or generated from a job).
        phase_params: per running phase, the canonical names of the parameters it thaws.
        phase_frozen: per running phase, the canonical names of the parameters it freezes.
        frozen_params: parameters never thawed: in no phase, or in a phase beyond ``max_depth``.
        cycle: per running phase, its place in a generated cycle (None for other schedules).
        dropped_phases: phases beyond ``max_depth`` (validated, but never run).
        param_numels: every model parameter (canonical name -> elements), in model order.
        generated: whether the schedule was generated (no schedule file / inline schedule).
        lr_scale, base_lr, base_max_norm: ``phases.lr_scale``, ``optimizer.lr`` and
            ``training.max_norm`` of the job.
        base_optimizer: the ``[optimizer]`` fields phase 0's optimizer is built with
            (:func:`optimizer_section_settings`), as ``(field, value)`` pairs.
        apply_lambdas_new_pgs: ``phases.apply_lambdas_new_pgs``, for the LR schedulers.
        warnings: problems that do not stop the run; the caller decides where to log them.
    """

    phases: tuple[Phase, ...]
    source: str
    phase_params: tuple[tuple[str, ...], ...]
    frozen_params: tuple[str, ...]
    dropped_phases: tuple[Phase, ...]
    param_numels: Mapping[str, int]
    generated: bool
    lr_scale: float
    base_lr: float
    base_max_norm: float
    apply_lambdas_new_pgs: bool = True
    warnings: tuple[Problem, ...] = ()
    phase_frozen: tuple[tuple[str, ...], ...] = ()
    cycle: tuple[CyclePosition, ...] | None = None
    base_optimizer: tuple[tuple[str, Any], ...] = ()

    @property
    def num_phases(self) -> int:
        return len(self.phases)

    def plan(self, k: int) -> PhasePlan:
        """What entering phase ``k`` does (see :class:`PhasePlan`)."""
        phase = self.phases[k]
        scheduler = phase.new_lr_scheduler
        start_lrs = None
        if scheduler is not None:
            start_lrs = self.init_pg_lrs(k)
            if start_lrs is None and not scheduler.use_current_optimizer_pg_lrs:
                start_lrs = self.initial_lrs(k)
        return PhasePlan(
            index=k,
            params=self.phase_params[k],
            trainable=self.trainable_params(k),
            frozen=self.frozen_at(k),
            groups=self.groups(k),
            lr=self.group_lr(k),
            optimizer=(
                None
                if phase.new_optimizer is None
                else (phase.new_optimizer.class_path, self.optimizer_kwargs(phase.new_optimizer))
            ),
            lr_scheduler=(
                None
                if scheduler is None
                else LRSchedulerChange(
                    scheduler.class_path,
                    dict(scheduler.init_args),
                    start_lrs,
                    scheduler.use_current_optimizer_pg_lrs,
                )
            ),
            max_norm=self.max_norm_at(k),
        )

    @functools.cached_property
    def _tables(self) -> _PhaseTables:
        optimizer: list[OptimizerInit | None] = []
        max_norm: list[float] = []
        group_lr: list[float] = []
        latest_init_pg_lrs: list[int | None] = []
        lr_scheduler: list[LRSchedulerInit | None] = []
        init, init_lr, norm, given, running = None, None, self.base_max_norm, None, None
        for phase in self.phases:
            if phase.new_optimizer is not None:
                init = phase.new_optimizer
                init_lr = float(init.init_args["lr"]) if "lr" in init.init_args else init_lr
            norm = norm if phase.max_norm is None else phase.max_norm
            scheduler = phase.new_lr_scheduler
            running = running if scheduler is None else scheduler
            own_lrs = scheduler.init_pg_lrs if scheduler is not None else None
            if own_lrs is not None and phase.index > 0:
                given = phase.index
            optimizer.append(init)
            max_norm.append(norm)
            latest_init_pg_lrs.append(given)
            lr_scheduler.append(running)
            if own_lrs is not None:
                # The last entry is the new group's (init_pg_lrs lists the phase's groups).
                group_lr.append(own_lrs[-1] * self.lr_scale)
            elif phase.lr is not None:
                group_lr.append(phase.lr * self.lr_scale)
            else:
                group_lr.append((self.base_lr if init_lr is None else init_lr) * self.lr_scale)
        frozen = [self.frozen_at(k) for k in range(self.num_phases)]
        trainable, groups = trainable_and_groups(self.param_numels, self.phase_params, frozen)
        return _PhaseTables(tuple(optimizer), tuple(max_norm), tuple(group_lr),
                            tuple(latest_init_pg_lrs), trainable, groups, tuple(lr_scheduler))

    def trainable_params(self, k: int) -> tuple[str, ...]:
        """Every parameter trainable during phase ``k``, in model order: those thawed by phases
        0..k and not frozen since."""
        return self._tables.trainable[k]

    def frozen_at(self, k: int) -> tuple[str, ...]:
        """The parameters phase ``k`` freezes when it starts."""
        return self.phase_frozen[k] if self.phase_frozen else ()

    def groups(self, k: int) -> tuple[int, ...]:
        """Phase ``k``'s optimizer param groups, by the phase that added each. For a schedule
        that only thaws, ``(0, 1, ..., k)``."""
        return self._tables.groups[k]

    def optimizer_at(self, k: int) -> OptimizerInit | None:
        """The optimizer config in effect during phase ``k``: the latest ``new_optimizer`` at or
        before it, or None for torchtitan's ``[optimizer]``."""
        return self._tables.optimizer[k]

    def group_lr(self, k: int) -> float:
        """Initial lr of the param group phase ``k`` adds, ``lr_scale`` applied: the last entry
        of the phase's ``init_pg_lrs``, else its ``lr``, else ``init_args.lr`` of the latest
        ``new_optimizer`` (up to phase k) that sets one, else ``[optimizer] lr``."""
        return self._tables.group_lr[k]

    def initial_lrs(self, k: int) -> tuple[float, ...]:
        """The initial lr of every param group of phase ``k`` (:meth:`groups`), ``lr_scale``
        applied, as FTS keeps it; a new LR scheduler without ``init_pg_lrs`` (or
        ``use_current_optimizer_pg_lrs``) restarts the groups there.

        A group's is the entry for it in the latest ``init_pg_lrs`` up to phase k, else the lr
        it joined with (:meth:`group_lr`). Phase 0's group has no phase lr of its own: it
        takes the lr of the latest ``new_optimizer`` up to phase k (``init_args.lr``, else the
        class's default lr), since FTS rebuilds that group with the new optimizer's defaults,
        else ``[optimizer] lr``.

        **Limitations** With ``apply_lambdas_new_pgs``, FTS makes the lambda-scaled lr of a
        group that joined a lambda schedule its initial lr (and, at an optimizer reinit,
        rescales the restarted groups by the running lambda), values known only at run time;
        this keeps the phase lr.
        """
        group_lr = self._tables.group_lr
        # The latest init_pg_lrs gives the lr of each group of its phase j; a group of phase k
        # older than j was one of them (a group only loses parameters once it exists).
        j = self._tables.latest_init_pg_lrs[k]
        given = {} if j is None else dict(zip(self.groups(j), self.init_pg_lrs(j)))
        return tuple(
            given[t] if t in given else self._phase0_initial_lr(k) if t == 0 else group_lr[t]
            for t in self.groups(k)
        )

    def _phase0_initial_lr(self, k: int) -> float:
        init = self.optimizer_at(k)
        if init is None:
            return self.base_lr * self.lr_scale
        lr = classes.configured_lr(classes.import_object(init.class_path), init.init_args)
        # An optimizer without an lr argument keeps [optimizer] lr.
        return (self.base_lr if lr is None else lr) * self.lr_scale

    def init_pg_lrs(self, k: int) -> tuple[float, ...] | None:
        """Phase ``k``'s ``new_lr_scheduler.init_pg_lrs`` with ``lr_scale`` applied, or None."""
        scheduler = self.phases[k].new_lr_scheduler
        if scheduler is None or scheduler.init_pg_lrs is None:
            return None
        return tuple(lr * self.lr_scale for lr in scheduler.init_pg_lrs)

    def fixed_settings(self, k: int) -> dict[str, Any]:
        """The settings of phase ``k`` that a checkpoint saved in phase ``k`` or later fixes:
        a resumed job takes what they decided from the checkpoint, not from its config, so a
        changed value would be silently ignored (:mod:`titan_phases.components.phase_controller`
        refuses it). Keys name the setting: ``lr`` and ``new_optimizer.*`` /
        ``new_lr_scheduler.*`` for the phase's own keys, ``[section] key`` for the job's.

        * the lr of the group the phase adds, and its new optimizer's class and init args: the
          checkpoint holds every param group's lr and hyperparameters, and the optimizer class;
        * phase 0: the ``[optimizer]`` fields its optimizer is built with, and ``[phases]
          lr_scale`` (in every lr the checkpoint restores);
        * the phase's new LR scheduler: class, ``init_pg_lrs`` and
          ``use_current_optimizer_pg_lrs`` (the start lrs it set are restored), and its init
          args, which the checkpoint's scheduler state restores (``step_size``, ``gamma``,
          ``T_max``...), except for LambdaLR and MultiplicativeLR (the warmup-stable-decay
          schedule of ``[lr_scheduler]`` is one): their lambdas, which is what their init args
          configure, come from the live config, so a change takes effect;
        * ``[phases] apply_lambdas_new_pgs`` in a phase whose group joins a running lambda
          schedule (the lr it joined with is restored).

        Not fixed: ``max_transition_step`` and ``max_norm`` (the resumed job reads them from its
        config), ``[lr_scheduler]`` and ``training.steps`` (lambda arguments, see above).

        **Limitations** An ``lr_lambda`` that is a callable object rather than a function gets
        its attributes back from the checkpoint (torch's LambdaLR saves them); its own settings
        are not checked here.
        """
        phase = self.phases[k]
        settings: dict[str, Any] = {}
        if k == 0:
            settings.update((f"[optimizer] {name}", value) for name, value in self.base_optimizer)
            settings["[phases] lr_scale"] = self.lr_scale
        else:
            settings["lr"] = phase.lr
        if phase.new_optimizer is not None:
            settings["new_optimizer.class_path"] = phase.new_optimizer.class_path
            settings["new_optimizer.init_args"] = dict(phase.new_optimizer.init_args)
        scheduler = phase.new_lr_scheduler
        if scheduler is not None:
            settings["new_lr_scheduler.class_path"] = scheduler.class_path
            if not _is_lambda_scheduler(scheduler.class_path):
                settings["new_lr_scheduler.init_args"] = dict(scheduler.init_args)
            settings["new_lr_scheduler.init_pg_lrs"] = (
                None if scheduler.init_pg_lrs is None else list(scheduler.init_pg_lrs)
            )
            settings["new_lr_scheduler.use_current_optimizer_pg_lrs"] = (
                scheduler.use_current_optimizer_pg_lrs
            )
        elif k > 0 and k in self.groups(k):
            running = self._tables.lr_scheduler[k]
            if running is None or _is_lambda_scheduler(running.class_path):
                settings["[phases] apply_lambdas_new_pgs"] = self.apply_lambdas_new_pgs
        return settings

    def max_norm_at(self, k: int) -> float:
        """Gradient clipping norm during phase ``k``: the latest per-phase ``max_norm`` up to
        phase k, else ``[training] max_norm``."""
        return self._tables.max_norm[k]

    def optimizer_kwargs(self, init: OptimizerInit) -> dict[str, Any]:
        """Constructor kwargs for ``init``'s class (params excluded), ``lr`` scaled."""
        kwargs = dict(init.init_args)
        if "lr" in kwargs:
            kwargs["lr"] = float(kwargs["lr"]) * self.lr_scale
        return kwargs

    @staticmethod
    def lr_scheduler_kwargs(init: LRSchedulerInit) -> dict[str, Any]:
        """Constructor kwargs for ``init``'s class (optimizer excluded), lr lambdas imported."""
        cls = classes.import_object(init.class_path)
        return classes.lr_scheduler_kwargs(cls, init.init_args)


@functools.cache
def _is_lambda_scheduler(class_path: str) -> bool:
    """Whether the LR scheduler class computes its lrs from lr lambdas (LambdaLR,
    MultiplicativeLR and their subclasses)."""
    try:
        cls = classes.import_object(class_path)
    except ImportError:  # reported by validation; nothing runs with it
        return False
    return isinstance(cls, type) and issubclass(cls, classes.LAMBDA_SCHEDULERS)


def optimizer_section_settings(section: Any) -> tuple[tuple[str, Any], ...]:
    """The ``[optimizer]`` fields phase 0's optimizer is built with
    (:func:`~.classes.optimizer_from_config`): ``name`` as the class's dotted path, and each
    other field its class has an argument for. A name that does not import keeps every field
    (the optimizer builder reports it)."""
    try:
        cls = classes.import_class_path(
            section.name, torch.optim.Optimizer, classes.OPTIMIZER_MODULE, "an optimizer"
        )
    except Exception:  # importing runs the named module's code, which may raise anything
        return (("name", section.name),
                *((name, getattr(section, name)) for name in classes.OPTIMIZER_FIELD_ARGS))
    accepted = inspect.signature(cls.__init__).parameters
    return (("name", classes.class_path_of(cls)), *(
        (name, getattr(section, name)) for name, args in classes.OPTIMIZER_FIELD_ARGS.items()
        if any(arg in accepted for arg in args)
    ))


def _config_source(job_config: JobConfig, config_path: str | None) -> str:
    return config_path or job_config.job.config_file or "<command line>"


def load_schedule_source(
    job_config: JobConfig, config_path: str | None, problems: Problems
) -> tuple[bool, dict[str, Any] | None, str]:
    """Whether the schedule is explicit, its raw tables (None for a generated schedule or an
    unreadable file, which is reported into ``problems``) and its source name."""
    cfg = job_config.phases
    config_source = _config_source(job_config, config_path)
    if isinstance(cfg.schedule_file, str) and cfg.schedule_file:
        path = resolve_schedule_path(cfg.schedule_file, config_path or job_config.job.config_file)
        logger.debug("phase schedule file: %s", path)
        try:
            return True, read_schedule_file(path), str(path)
        except ScheduleError as e:
            problems.errors.extend(e.problems)
            return True, None, str(path)
    if isinstance(cfg.schedule, dict) and cfg.schedule:
        return True, cfg.schedule, f"{config_source} [phases.schedule]"
    return False, None, f"generated from {config_source}"


def load_and_validate(job_config: JobConfig, config_path: str | None = None) -> ResolvedSchedule:
    """Load the job's schedule (file, inline, or generated), validate it against the job config
    and the model, and resolve every phase to parameter names.

    Args:
        job_config: a parsed job config with a ``phases`` section (see
            :func:`titan_phases.config.parse_job_config`).
        config_path: the job TOML, to resolve a relative ``schedule_file`` and name it in
            messages; defaults to ``job_config.job.config_file``.

    Raises:
        ScheduleError: listing every problem found.
    """
    cfg = job_config.phases
    problems = Problems()
    config_source = _config_source(job_config, config_path)
    explicit, raw, source = load_schedule_source(job_config, config_path, problems)
    settings = check_settings(cfg, job_config, config_source, problems, explicit=explicit)
    params: ModelParams | None = None
    try:
        params = model_params(job_config, config_source)
    except ScheduleError as e:
        problems.errors.extend(e.problems)
    # Go on past broken settings where the phases can still be checked; stop where they cannot.
    if params is None or (explicit and raw is None):
        problems.raise_if_any()
    numels, tied = params.numels, params.tied
    if tied and job_config.parallelism.data_parallel_shard_degree != 1:
        problems.warn(
            config_source, None, "parallelism.data_parallel_shard_degree",
            f"{job_config.model.name} {job_config.model.flavor} ties "
            + ", ".join(f"{a} to {n}" for a, n in tied.items())
            + ": torchtitan 0.2.2 shards them in separate FSDP groups, which torch's FSDP2 "
            "refuses at the first step when there is more than one shard",
            "train it on one data-parallel shard (data_parallel_shard_degree = 1; one rank "
            "trains), or choose a flavor without weight tying",
        )
    generation_keys = ("blocks_per_phase", "steps_per_phase", "max_depth", "transition_mode",
                       "reinit_optimizer", "reinit_lr_scheduler", "base_max_lr")
    if not explicit and settings.invalid.intersection(generation_keys):
        problems.raise_if_any()

    max_depth = -1 if "max_depth" in settings.invalid else cfg.max_depth
    mode = cfg.effective_transition_mode(job_config.validation.enable)
    cycle = None
    if explicit:
        schedule = parse_schedule(raw, source, problems)
    elif cfg.cycle.enable:
        max_depth = -1
        always_train = select_params(cfg.cycle.always_train, numels, config_source,
                                     "phases.cycle.always_train", problems, tied)
        cycle = generate_cycle(list(numels), cfg.cycle, always_train, job_config.training.steps,
                               f"cycle generated from {config_source}", problems)
        problems.raise_if_any()
        schedule = cycle.schedule
    else:
        schedule = generate_schedule(
            params.all_names, blocks_per_phase=cfg.blocks_per_phase, max_depth=max_depth,
            transition_mode=mode, training_steps=job_config.training.steps,
            steps_per_phase=cfg.steps_per_phase, reinit_optimizer=settings.reinit_optimizer,
            reinit_lr_scheduler=settings.reinit_lr_scheduler,
            base_max_lr=cfg.base_max_lr, tied=tied,
            source=source, problems=problems,
        )
    n_running = running_phase_count(len(schedule.phases), max_depth)

    check_phase_zero(schedule, problems)
    matched = match_phase_params(schedule, numels, problems, tied)
    if explicit:
        if "transition_mode" not in settings.invalid:
            check_transitions(schedule, n_running, mode, job_config.training.steps, problems)
        group_counts = [len(g) for g in trainable_and_groups(numels, *matched)[1]]
        check_reinits(schedule, group_counts, cfg, job_config, problems)
    elif cycle is None:
        check_implicit_reinits(settings.reinit_optimizer, settings.reinit_lr_scheduler, n_running,
                               config_source, cfg, job_config, problems)
    problems.raise_if_any()

    running = tuple(tuple(names) for names in matched.thawed[:n_running])
    thawed = {n for names in running for n in names}
    frozen = tuple(n for n in numels if n not in thawed)
    dropped = schedule.phases[n_running:]
    if dropped:
        count = sum(len(names) for names in matched.thawed[n_running:])
        problems.warn(config_source, None, "phases.max_depth",
                      f"max_depth = {max_depth} drops phases "
                      f"{dropped[0].index}..{dropped[-1].index}; their {count} parameter(s) "
                      "stay frozen")
    assigned = {n for names in matched.thawed for n in names}
    in_no_phase = [n for n in numels if n not in assigned]
    if in_no_phase:
        problems.warn(source, None, "params",
                      f"{len(in_no_phase)} parameter(s) are in no phase and stay frozen: "
                      + ", ".join(in_no_phase[:5]) + (" ..." if len(in_no_phase) > 5 else ""))
    logger.info("Resolved the phase schedule: %d phase(s), %s", n_running, schedule.source)
    return ResolvedSchedule(
        phases=schedule.phases[:n_running],
        source=schedule.source,
        phase_params=running,
        frozen_params=frozen,
        dropped_phases=dropped,
        param_numels=dict(numels),
        generated=not explicit,
        lr_scale=cfg.lr_scale,
        base_lr=job_config.optimizer.lr,
        base_max_norm=float(job_config.training.max_norm),
        apply_lambdas_new_pgs=cfg.apply_lambdas_new_pgs,
        warnings=tuple(problems.warnings),
        phase_frozen=tuple(tuple(names) for names in matched.frozen[:n_running]),
        cycle=None if cycle is None else cycle.positions[:n_running],
        base_optimizer=optimizer_section_settings(job_config.optimizer),
    )


_ATTACHED = "titan_phases_schedule"
"""The job config's attribute holding its resolved schedule (not a config field: no flag, no
TOML key)."""


def attach_schedule(job_config: JobConfig, resolved: ResolvedSchedule) -> None:
    """Hand ``resolved`` on with ``job_config``, for :func:`attached_schedule`."""
    setattr(job_config, _ATTACHED, resolved)


def attached_schedule(job_config: JobConfig) -> ResolvedSchedule:
    """The schedule :func:`attach_schedule` handed on with ``job_config``.

    Raises RuntimeError when there is none: a phased TrainSpec's builders run under
    :class:`~titan_phases.trainer.PhasedTrainer`, which attaches the schedule it resolved.
    """
    resolved = getattr(job_config, _ATTACHED, None)
    if resolved is None:
        raise RuntimeError(
            "this job config carries no resolved phase schedule: run phased TrainSpecs with "
            "titan_phases.trainer.PhasedTrainer, or attach one first with "
            "titan_phases.schedule.attach_schedule(job_config, load_and_validate(job_config))"
        )
    return resolved
