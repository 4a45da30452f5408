"""Entering a phase: the one sequence that (un)freezes the model and changes optimizers and
schedulers with it.

Run between steps, at a transition and (for phases 1..saved) when a job resumes, before the
checkpoint is loaded::

    set_trainable(model_parts, plan.trainable)     # reshards every FSDP2 module first
    refresh_fsdp_mixed_precision(model_parts)      # dtypes for newly trainable FSDP2 groups
    optimizers.add_phase(...)                       # frozen params leave with their state; a
                                                    # new param group, or a rebuilt optimizer
    lr_schedulers.add_phase(...)                    # the new group's lr at the current step
    limit_backward_all_gathers(model_parts)         # frozen blocks stay sharded in backward
    torch.compiler.reset()                          # with [compile] on
    reinfer_stage_metadata(pp_schedule)             # under pipeline parallelism

Everything comes from one :class:`~titan_phases.schedule.PhasePlan`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from titan_phases.components.lr_scheduler import PhasedLRSchedulersContainer
from titan_phases.components.optimizer import PhasedOptimizersContainer
from titan_phases.components.phase_controller import Transition
from titan_phases.components.pipeline import reinfer_stage_metadata
from titan_phases.components.thaw import (
    limit_backward_all_gathers,
    params_per_part,
    refresh_fsdp_mixed_precision,
    set_trainable,
    ThawCount,
)
from titan_phases.schedule import PhasePlan

__all__ = ["enter_phase", "transition_summary"]


def enter_phase(
    model_parts: list[nn.Module],
    optimizers: PhasedOptimizersContainer,
    lr_schedulers: PhasedLRSchedulersContainer,
    plan: PhasePlan,
    compiled: bool = False,
    pp_schedule: Any = None,
) -> ThawCount:
    """Freeze and thaw ``plan``'s params and bring the optimizers and LR schedulers to its
    phase.

    ``compiled``: the model runs under ``torch.compile``, whose graphs may have specialised on
    ``requires_grad`` (pytorch issue 139476); they are dropped so the next step recompiles.
    ``pp_schedule``: the job's pipeline schedule under pipeline parallelism, which then infers
    which stage outputs need grad again at its next step.
    Returns what is trainable now.
    """
    trainable = set_trainable(model_parts, plan.trainable)
    refresh_fsdp_mixed_precision(model_parts)
    optimizer = None
    if plan.optimizer is not None:
        class_path, init_args = plan.optimizer
        optimizer = (class_path, dict(init_args))
    optimizers.add_phase(
        plan.index, params_per_part(model_parts, plan.params), lr=plan.lr, optimizer=optimizer,
        leaving_per_part=params_per_part(model_parts, plan.frozen), groups=plan.groups,
    )
    scheduler = plan.lr_scheduler
    if scheduler is None:
        lr_schedulers.add_phase(plan.index)
    else:
        lr_schedulers.add_phase(
            plan.index,
            (scheduler.class_path, dict(scheduler.init_args)),
            init_pg_lrs=scheduler.init_pg_lrs,
            use_current_optimizer_pg_lrs=scheduler.use_current_optimizer_pg_lrs,
        )
    limit_backward_all_gathers(model_parts)
    if compiled:
        torch.compiler.reset()
    if pp_schedule is not None:
        reinfer_stage_metadata(pp_schedule)
    return trainable


def transition_summary(
    transition: Transition,
    plan: PhasePlan,
    trainable: ThawCount,
    param_numels: dict[str, int],
    optimizers: PhasedOptimizersContainer,
    lr_schedulers: PhasedLRSchedulersContainer,
) -> str:
    """The one log line that says what a transition changed."""
    lrs = [f"{g['lr']:.3g}" for g in next(iter(optimizers)).param_groups]
    froze = (
        f"froze {len(plan.frozen)} tensors ({sum(param_numels[n] for n in plan.frozen):,} "
        "elements), " if plan.frozen else ""
    )
    return (
        f"Phase {transition.from_phase} -> {transition.to_phase} after step "
        f"{transition.after_step} ({transition.reason}): {froze}thawed {len(plan.params)} "
        f"tensors, {sum(param_numels[name] for name in plan.params):,} elements "
        f"({trainable.elements:,} of {sum(param_numels.values()):,} trainable); optimizer "
        f"{optimizers.optimizer_cls.__name__}; lr scheduler "
        f"{type(lr_schedulers.schedulers[0]).__name__}; group lrs [{', '.join(lrs)}]"
    )
