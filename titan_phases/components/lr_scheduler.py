"""Phase-aware lr schedulers for gradual unfreezing, reshardable through DCP.

:class:`PhasedLRSchedulersContainer` is a torchtitan ``LRSchedulersContainer`` (one scheduler
per inner optimizer, all identical) driving a :class:`PhasedOptimizersContainer`. Phase 0 runs
torchtitan's warmup-stable-decay schedule (:class:`WarmupStableDecayLR`, the same lrs step by
step as torchtitan's ``build_lr_schedulers``); :func:`build_phased_lr_schedulers` has
torchtitan's builder signature, so it drops into a ``TrainSpec`` as ``build_lr_schedulers_fn``.

At a transition the new param group either joins the running schedule or a new scheduler
takes over (FTS's ``new_lr_scheduler`` with ``init_pg_lrs`` / ``use_current_optimizer_pg_lrs``).
Both follow finetuning-scheduler (FTS) 2.14: the same lrs step by step, checked against lrs
recorded from FTS runs (``tests/components/test_fts_lr_parity.py``), except where
:class:`PhasedLRSchedulersContainer` names a difference.

**Limitations** (private torch API this module relies on; check on upgrades)
* ``LRScheduler._last_lr``: extended by the new group's lr, so ``get_last_lr()`` (which
  torchtitan logs) covers every group.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    LambdaLR,
    LRScheduler,
    MultiplicativeLR,
    ReduceLROnPlateau,
)
from torchtitan.components.lr_scheduler import LRSchedulersContainer
from torchtitan.config import LRScheduler as LRSchedulerConfig

from titan_phases.components.checkpointing.format import (
    decode_metadata,
    encode_state,
    FORMAT_VERSION,
    METADATA_KEY,
    PhaseMismatchError,
)
from titan_phases.components.optimizer import PHASE_KEY, PhasedOptimizersContainer
from titan_phases.runtime.ranks import is_rank0
from titan_phases.schedule.classes import (
    class_path_of,
    import_class_path,
    lr_scheduler_kwargs,
    LR_SCHEDULER_MODULE,
    REJECTED_LR_SCHEDULERS,
    SUPPORTED_LR_SCHEDULERS,
)

__all__ = [
    "PhasedLRSchedulersContainer",
    "WarmupStableDecayLR",
    "build_phased_lr_schedulers",
    "linear_warmup_stable_decay",
    "warmup_stable_decay_args",
]

logger = logging.getLogger(__name__)


def linear_warmup_stable_decay(
    current_step: int,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    lr_decay_type: str,
    min_lr_factor: float,
) -> float:
    """torchtitan 0.2.2's warmup-stable-decay lr factor, as a module-level function.

    torchtitan defines it inside ``build_lr_schedulers`` where it cannot be imported; this copy
    keeps the same arithmetic (the parity tests compare both step by step), and being
    module-level it pickles by reference inside ``functools.partial``.
    """
    warmup_stable_steps = warmup_steps + stable_steps
    if current_step < warmup_steps:
        # 0-indexed step, hence + 1 adjustments
        current_step += 1
        return float(current_step / warmup_steps)
    if current_step < warmup_stable_steps:
        return 1.0
    if decay_steps == 0:
        raise ValueError(
            f"step {current_step} is past warmup ({warmup_steps}) + stable ({stable_steps}) "
            "steps with no decay steps: the schedule is shorter than the training run"
        )
    current_step += 1
    progress = float(current_step - warmup_stable_steps) / decay_steps
    if lr_decay_type == "linear":
        curr_adjustment = 1 - progress
    elif lr_decay_type == "sqrt":
        curr_adjustment = 1 - math.sqrt(progress)
    elif lr_decay_type == "cosine":
        curr_adjustment = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"Unknown lr_decay_type: {lr_decay_type}")
    return min_lr_factor + (1 - min_lr_factor) * curr_adjustment


class WarmupStableDecayLR(LambdaLR):
    """torchtitan's linear warmup, stable, then linear/sqrt/cosine decay as a ``LambdaLR``.

    Its init args are plain values, so it can also be a phase's ``new_lr_scheduler`` (e.g. a
    fresh warmup and decay over the remaining steps). :func:`warmup_stable_decay_args` derives
    them from torchtitan's ``[lr_scheduler]`` section.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        stable_steps: int,
        decay_steps: int,
        decay_type: str = "linear",
        min_lr_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        lr_lambda = functools.partial(
            linear_warmup_stable_decay,
            warmup_steps=warmup_steps,
            stable_steps=stable_steps,
            decay_steps=decay_steps,
            lr_decay_type=decay_type,
            min_lr_factor=min_lr_factor,
        )
        super().__init__(optimizer, lr_lambda, last_epoch)


def warmup_stable_decay_args(config: LRSchedulerConfig, training_steps: int) -> dict[str, Any]:
    """:class:`WarmupStableDecayLR` init args for ``[lr_scheduler]``, computed like torchtitan."""
    total_steps = config.total_steps if config.total_steps is not None else training_steps
    warmup_steps = int(config.warmup_steps)
    if warmup_steps > total_steps:
        logger.warning(
            "Warmup steps (%d) exceed total steps (%d). Adjusting warmup steps to %d.",
            warmup_steps,
            total_steps,
            total_steps,
        )
        warmup_steps = total_steps
    if config.decay_ratio is not None:
        decay_steps = round(total_steps * config.decay_ratio)
        if warmup_steps + decay_steps > total_steps:
            logger.warning(
                "Warmup (%d) + decay (%d) steps exceed total steps (%d). "
                "Adjusting decay steps to %d.",
                warmup_steps,
                decay_steps,
                total_steps,
                total_steps - warmup_steps,
            )
            decay_steps = total_steps - warmup_steps
    else:
        decay_steps = total_steps - warmup_steps
    return {
        "warmup_steps": warmup_steps,
        # A virtual last step keeps the lr from dropping to 0 (as in torchtitan).
        "stable_steps": total_steps + 1 - warmup_steps - decay_steps,
        "decay_steps": decay_steps,
        "decay_type": config.decay_type,
        "min_lr_factor": config.min_lr_factor,
    }


def _import_lr_scheduler_class(class_path: str) -> type[LRScheduler]:
    cls = import_class_path(class_path, LRScheduler, LR_SCHEDULER_MODULE, "an lr scheduler")
    if issubclass(cls, REJECTED_LR_SCHEDULERS):
        raise ValueError(f"{class_path} is not supported: it wraps other scheduler objects")
    if not issubclass(cls, SUPPORTED_LR_SCHEDULERS):
        # The schedule validator only lets these through with phases.allow_untested.
        logger.warning("lr scheduler %s is untested with phases", class_path)
    return cls


def _extend_to_new_group(scheduler: LRScheduler, apply_lambdas: bool) -> float:
    """Make ``scheduler`` cover its optimizer's newest param group; return that group's lr.

    FTS's ``add_optimizer_groups``: the group starts at its phase lr (its ``initial_lr``),
    times the scheduler's latest lambda at the current step if ``apply_lambdas`` and the
    scheduler has lr lambdas; its base lr is the phase lr.
    """
    group = scheduler.optimizer.param_groups[-1]
    lr = base_lr = group["initial_lr"]
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.min_lrs.append(scheduler.min_lrs[0])
    else:
        scheduler.base_lrs.append(base_lr)
        if isinstance(scheduler, LambdaLR | MultiplicativeLR):
            scheduler.lr_lambdas.append(scheduler.lr_lambdas[-1])
            if apply_lambdas:
                lr = base_lr * scheduler.lr_lambdas[-1](scheduler.last_epoch)
    group["lr"] = lr
    scheduler._last_lr.append(lr)
    return lr


def _drop_groups(scheduler: LRScheduler, indices: Sequence[int]) -> None:
    """Drop the per-group entries of the param groups at ``indices`` (groups that left the
    optimizer) from ``scheduler``."""
    for name in ("base_lrs", "_last_lr", "lr_lambdas", "min_lrs"):
        values = getattr(scheduler, name, None)
        if isinstance(values, list):
            for index in sorted(indices, reverse=True):
                del values[index]


def build_phased_lr_schedulers(
    optimizers: PhasedOptimizersContainer,
    lr_scheduler_config: LRSchedulerConfig,
    training_steps: int,
) -> PhasedLRSchedulersContainer:
    """Build phase 0's schedulers (torchtitan's builder signature and schedule).

    The lrs equal torchtitan's ``build_lr_schedulers`` for the same ``[lr_scheduler]`` config,
    step by step. The builder's signature carries no ``[phases]`` section: the container's
    ``apply_lambdas_new_pgs`` is True (the setting's default) until the trainer sets the job's.
    """
    if not isinstance(optimizers, PhasedOptimizersContainer):
        raise TypeError(
            "build_phased_lr_schedulers needs the PhasedOptimizersContainer built by "
            f"build_phased_optimizers, got {type(optimizers).__name__}"
        )
    return PhasedLRSchedulersContainer(
        optimizers,
        class_path_of(WarmupStableDecayLR),
        warmup_stable_decay_args(lr_scheduler_config, training_steps),
    )


class PhasedLRSchedulersContainer(LRSchedulersContainer):
    """torchtitan ``LRSchedulersContainer`` that follows a :class:`PhasedOptimizersContainer`.

    One scheduler of the active class per inner optimizer, all identical, as in torchtitan.
    ``step()`` advances per-step schedules (the trainer calls it after every optimizer step);
    :meth:`step_on_metric` feeds a validation metric to ``ReduceLROnPlateau``; each is a no-op
    for the other kind, so a trainer may call both unconditionally.

    At a transition, after ``optimizers.add_phase``, call :meth:`add_phase`. Without a new
    scheduler the new group joins the running one as in FTS: its ``initial_lr`` and base lr are
    the phase lr, lambdas are extended to it, and it starts at the phase lr, times the current
    lambda value if :attr:`apply_lambdas_new_pgs` and the scheduler has lr lambdas (LambdaLR,
    MultiplicativeLR, :class:`WarmupStableDecayLR`). From there the scheduler's own rule moves
    it: chained schedulers (StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR, ConstantLR,
    LinearLR, MultiplicativeLR) multiply its current lr, so e.g. a StepLR halves the phase lr at
    its next step boundary; LambdaLR and CosineAnnealingWarmRestarts compute from the base lr,
    so from the next step on the group is where it would be had it trained from the start; a
    ReduceLROnPlateau reduces it from its next reduction on. After an optimizer reinit the
    schedule keeps running on the rebuilt optimizer with the carried-over lrs. With a new
    scheduler, that class takes over from the current step.

    Known difference from FTS: with ``use_current_optimizer_pg_lrs``, FTS sets each group's lr
    but leaves its ``initial_lr``, so a new LambdaLR or CosineAnnealingWarmRestarts (which
    compute from base lrs) restarts the groups at their initial lrs; here the current lrs become
    the initial and base lrs, so every scheduler starts from them, as FTS's documentation
    describes the option.

    ``state_dict`` is reshard-friendly: one JSON string (no tensors, the same on every rank)
    holding the phase, the active scheduler's class path and init args, and scheduler 0's state
    (its position). Loading state of another phase or scheduler class raises
    :class:`PhaseMismatchError` naming both. As with torch schedulers, the checkpoint's state
    (``last_epoch``, base lrs, attributes such as ``gamma``) is restored while lambdas come from
    the live configuration; differing init args are logged as a warning.

    **Limitations**
    ``titan_phases.schedule.classes.SUPPORTED_LR_SCHEDULERS`` (FTS's list) and their subclasses
    are tested; other schedulers run with a warning (the schedule validator admits them only
    with ``phases.allow_untested``). ChainedScheduler / SequentialLR are rejected. Init args
    must be plain values; lambdas (``lr_lambda`` of LambdaLR / MultiplicativeLR) are dotted
    paths to module-level functions, or ``{function, kwargs}``. A chained scheduler applies its
    factors to a joining group's phase lr, not to the lr the schedule would have given it
    (a ConstantLR joined during its constant span ends at the phase lr divided by its factor):
    that is torch's and FTS's behaviour. All inner optimizers must share one group layout,
    which :class:`PhasedOptimizersContainer` guarantees.

    Args:
        optimizers (PhasedOptimizersContainer): The optimizers to schedule.
        class_path (str): Scheduler class (``torch.optim.lr_scheduler`` name or dotted path).
        init_args (dict[str, Any]): Its init args, except the optimizer.
        apply_lambdas_new_pgs (bool): FTS's option, ``[phases] apply_lambdas_new_pgs`` (see
            above); an attribute, so a trainer can set it on a container a TrainSpec built.
    """

    schedulers: list[LRScheduler]

    def __init__(
        self,
        optimizers: PhasedOptimizersContainer,
        class_path: str,
        init_args: dict[str, Any],
        apply_lambdas_new_pgs: bool = True,
    ) -> None:
        if len(optimizers) == 0:
            raise ValueError("Must have at least one optimizer to create LRScheduler")
        self.optimizers = optimizers
        self.apply_lambdas_new_pgs = apply_lambdas_new_pgs
        self.phase = optimizers.phase
        # The phase that added each param group, to mirror the groups that leave.
        self._group_phases = [g[PHASE_KEY] for g in next(iter(optimizers)).param_groups]
        self.scheduler_cls = _import_lr_scheduler_class(class_path)
        self.scheduler_init_args = self._checked_init_args(init_args)
        self.schedulers = [self._instantiate(opt) for opt in optimizers]

    @staticmethod
    def _checked_init_args(init_args: dict[str, Any]) -> dict[str, Any]:
        encode_state(init_args)  # plain values only: fail now, not at the first checkpoint
        return dict(init_args)

    def _instantiate(self, optimizer: Optimizer) -> LRScheduler:
        return self.scheduler_cls(
            optimizer, **lr_scheduler_kwargs(self.scheduler_cls, self.scheduler_init_args)
        )

    @property
    def steps_on_metric(self) -> bool:
        """Whether a ``ReduceLROnPlateau`` is active (stepped by :meth:`step_on_metric`)."""
        return issubclass(self.scheduler_cls, ReduceLROnPlateau)

    def step(self) -> None:
        if self.steps_on_metric:
            return
        for scheduler in self.schedulers:
            scheduler.step()

    def step_on_metric(self, value: float) -> bool:
        """Feed a validation metric to an active ``ReduceLROnPlateau``; return whether it did.

        Give the same (globally reduced) value on every rank so all ranks keep the same lrs.
        """
        if not self.steps_on_metric:
            return False
        for scheduler in self.schedulers:
            scheduler.step(value)
        return True

    def start_phase0_at(self, lr: float) -> None:
        """Start phase 0's param group at ``lr`` rather than the builder's ``[optimizer] lr``
        (``[phases] lr_scale`` applied); call before the first step.

        torchtitan's builders only see ``[optimizer]``, so the trainer sets the schedule's
        phase-0 lr here: it becomes the group's ``initial_lr`` and the schedulers are rebuilt
        over it, exactly as if the optimizer had been built with it.
        """
        if self.phase != 0 or any(s.last_epoch != 0 for s in self.schedulers):
            raise ValueError("start_phase0_at must be called before the first step of phase 0")
        groups = [optimizer.param_groups[0] for optimizer in self.optimizers]
        if all(group["initial_lr"] == lr for group in groups):
            return
        for group in groups:
            group["lr"] = group["initial_lr"] = lr
        self.schedulers[:] = [self._instantiate(opt) for opt in self.optimizers]

    def add_phase(
        self,
        phase: int,
        lr_scheduler: tuple[str, dict[str, Any]] | None = None,
        init_pg_lrs: Sequence[float] | None = None,
        use_current_optimizer_pg_lrs: bool = False,
    ) -> None:
        """Schedule phase ``phase``'s new param group; call right after ``optimizers.add_phase``.

        Without ``lr_scheduler`` the running schedule continues and covers the new group (see
        the class docstring for its starting lr). With ``lr_scheduler=(class_path, init_args)``
        that scheduler replaces it, starting from the current step; each group's starting lr
        (which becomes its ``initial_lr`` and base lr) is, in FTS's order of precedence:
        ``init_pg_lrs[i]`` (one per group, phases 0..phase), else the group's current lr if
        ``use_current_optimizer_pg_lrs``, else its ``initial_lr`` (for the new group: the phase
        lr). :meth:`titan_phases.schedule.ResolvedSchedule.plan` always passes ``init_pg_lrs``
        unless ``use_current_optimizer_pg_lrs``: the initial lrs FTS would restart the groups
        at, which after an optimizer reinit are not the ``initial_lr`` the groups carry.
        """
        if phase != self.phase + 1 or self.optimizers.phase != phase:
            raise ValueError(
                f"cannot add phase {phase} to lr schedulers in phase {self.phase}: call "
                f"optimizers.add_phase({phase}, ...) first (optimizers are in phase "
                f"{self.optimizers.phase}), one phase at a time"
            )
        if lr_scheduler is None and (init_pg_lrs is not None or use_current_optimizer_pg_lrs):
            raise ValueError(
                f"phase {phase}: init_pg_lrs / use_current_optimizer_pg_lrs apply only with a new "
                "lr scheduler"
            )
        # After an optimizer reinit the schedulers must drive the rebuilt optimizers.
        for scheduler, optimizer in zip(self.schedulers, self.optimizers, strict=True):
            scheduler.optimizer = optimizer
        groups = [g[PHASE_KEY] for g in next(iter(self.optimizers)).param_groups]
        left = [i for i, t in enumerate(self._group_phases) if t not in groups]
        self._group_phases = groups

        if lr_scheduler is None:
            # Extended first, while the entries of the groups that left can still serve as the
            # new group's template; those entries come before the new one.
            apply_lambdas = self.apply_lambdas_new_pgs
            new_lrs = [
                _extend_to_new_group(s, apply_lambdas) for s in self.schedulers
                if phase in groups
            ]
            for scheduler in self.schedulers:
                _drop_groups(scheduler, left)
            description = f"{self.scheduler_cls.__name__} continues" + (
                f", new group lr {new_lrs[0]:g}" if new_lrs else ""
            ) + (f", {len(left)} group(s) left" if left else "")
        else:
            class_path, init_args = lr_scheduler
            scheduler_cls = _import_lr_scheduler_class(class_path)
            checked_args = self._checked_init_args(init_args)
            self._set_start_lrs(phase, init_pg_lrs, use_current_optimizer_pg_lrs)
            self.scheduler_cls, self.scheduler_init_args = scheduler_cls, checked_args
            self.schedulers[:] = [self._instantiate(opt) for opt in self.optimizers]
            description = f"new {scheduler_cls.__name__}{checked_args}"
        self.phase = phase
        if is_rank0():
            logger.info("LR schedulers phase %d: %s", phase, description)

    def _set_start_lrs(
        self, phase: int, init_pg_lrs: Sequence[float] | None, use_current_optimizer_pg_lrs: bool
    ) -> None:
        n_groups = len(self._group_phases)
        if init_pg_lrs is not None and len(init_pg_lrs) != n_groups:
            raise ValueError(
                f"phase {phase}: init_pg_lrs has {len(init_pg_lrs)} entries, expected {n_groups} "
                f"(one per param group: phases {self._group_phases})"
            )
        for optimizer in self.optimizers:
            for index, group in enumerate(optimizer.param_groups):
                if init_pg_lrs is not None:
                    start = float(init_pg_lrs[index])
                elif use_current_optimizer_pg_lrs:
                    start = group["lr"]
                else:
                    start = group["initial_lr"]
                group["lr"] = group["initial_lr"] = start

    def state_dict(self) -> dict[str, Any]:
        # Scheduler 0 stands for all (they are identical), as in torchtitan: that is what lets
        # the state load on any number of ranks / model parts.
        return {
            METADATA_KEY: encode_state(
                {
                    "format_version": FORMAT_VERSION,
                    "phase": self.phase,
                    "lr_scheduler": {
                        "class_path": class_path_of(self.scheduler_cls),
                        "init_args": self.scheduler_init_args,
                    },
                    "state": self.schedulers[0].state_dict(),
                }
            )
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = decode_metadata(state_dict, "lr scheduler", type(self).__name__, self.phase)
        saved_cls = saved["lr_scheduler"]["class_path"]
        live_cls = class_path_of(self.scheduler_cls)
        if saved["phase"] != self.phase or saved_cls != live_cls:
            raise PhaseMismatchError(
                f"lr scheduler state was saved in phase {saved['phase']} ({saved_cls}) but the "
                f"live schedulers are in phase {self.phase} ({live_cls}); rebuild to the saved "
                "phase with the same schedule before loading"
            )
        if saved["lr_scheduler"]["init_args"] != self.scheduler_init_args:
            logger.warning(
                "lr scheduler init args differ from the checkpoint's (saved %s, live %s): the "
                "saved scheduler state is restored, lambdas come from the live configuration",
                saved["lr_scheduler"]["init_args"],
                self.scheduler_init_args,
            )
        for scheduler in self.schedulers:
            scheduler.load_state_dict(copy.deepcopy(saved["state"]))
