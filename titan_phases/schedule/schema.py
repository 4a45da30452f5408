"""The phase schedule as typed, immutable values.

A schedule is a sequence of phases 0..N-1. Phase k stops training the parameters its ``freeze``
names (their optimizer state is dropped), then thaws its ``params`` and adds one optimizer param
group holding them. During phase k the optimizer therefore has one param group per phase
0..k whose parameters still train, in phase order. A parameter frozen again may be thawed by a
later phase; it then starts with fresh optimizer state in that phase's group.

``init_args`` mappings are stored as parsed; treat them as read-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OptimizerInit:
    """A new optimizer to build at the start of a phase (it stays until the next one).

    Attributes:
        class_path: dotted path of a ``torch.optim.Optimizer`` subclass; bare names such as
            ``"SGD"`` are expanded to ``torch.optim.SGD`` when loading.
        init_args: keyword arguments for the class, except the params.
    """

    class_path: str
    init_args: Mapping[str, Any] = field(default_factory=dict)

    def to_raw(self) -> dict[str, Any]:
        return {"class_path": self.class_path, "init_args": dict(self.init_args)}


@dataclass(frozen=True)
class LRSchedulerInit:
    """A new LR scheduler to wrap the optimizer with at the start of a phase.

    Attributes:
        class_path: dotted path of a ``torch.optim.lr_scheduler`` class; bare names such as
            ``"StepLR"`` are expanded to ``torch.optim.lr_scheduler.StepLR`` when loading.
        init_args: keyword arguments for the class, except the optimizer. For LambdaLR and
            MultiplicativeLR, ``lr_lambda`` is a dotted path to a module-level function, or
            ``{function = "pkg.mod.fn", kwargs = {...}}`` for a ``functools.partial`` of it.
        init_pg_lrs: initial lrs of all k+1 param groups at phase k (scaled by ``lr_scale``), or
            None to keep the groups' lrs.
        use_current_optimizer_pg_lrs: start the new scheduler from the groups' current lrs
            instead of their initial lrs. Exclusive with ``init_pg_lrs``.
    """

    class_path: str
    init_args: Mapping[str, Any] = field(default_factory=dict)
    init_pg_lrs: tuple[float, ...] | None = None
    use_current_optimizer_pg_lrs: bool = False

    def to_raw(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"class_path": self.class_path, "init_args": dict(self.init_args)}
        if self.init_pg_lrs is not None:
            raw["init_pg_lrs"] = list(self.init_pg_lrs)
        if self.use_current_optimizer_pg_lrs:
            raw["use_current_optimizer_pg_lrs"] = True
        return raw


@dataclass(frozen=True)
class Phase:
    """One phase of the schedule.

    Attributes:
        index: the phase number, 0-based.
        params: parameter names and/or regexes (``re.fullmatch``) as written; a pattern equal to
            a parameter name matches only that parameter.
        freeze: parameters (names and/or regexes) that stop training when the phase starts;
            each must be trainable then. Not allowed in phase 0.
        max_transition_step: the last training step (torchtitan's 1-based ``step``) of this phase;
            the next phase starts at the step after it. None: the phase ends on a plateau, or runs
            to the end of training.
        lr: initial lr of the param group this phase adds; None uses the current optimizer's lr
            (``[optimizer] lr``, or ``init_args.lr`` of the latest ``new_optimizer``).
            Not allowed in phase 0, whose group takes ``[optimizer] lr``.
        new_optimizer: build a new optimizer at the start of this phase.
        new_lr_scheduler: build a new LR scheduler at the start of this phase.
        max_norm: gradient clipping norm from this phase on (until a later phase sets another);
            None keeps the previous one (``[training] max_norm`` in phase 0).
    """

    index: int
    params: tuple[str, ...]
    max_transition_step: int | None = None
    lr: float | None = None
    new_optimizer: OptimizerInit | None = None
    new_lr_scheduler: LRSchedulerInit | None = None
    max_norm: float | None = None
    freeze: tuple[str, ...] = ()

    def to_raw(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"params": list(self.params)}
        if self.freeze:
            raw["freeze"] = list(self.freeze)
        for key in ("max_transition_step", "lr", "max_norm"):
            if getattr(self, key) is not None:
                raw[key] = getattr(self, key)
        if self.new_optimizer is not None:
            raw["new_optimizer"] = self.new_optimizer.to_raw()
        if self.new_lr_scheduler is not None:
            raw["new_lr_scheduler"] = self.new_lr_scheduler.to_raw()
        return raw


@dataclass(frozen=True)
class PhaseSchedule:
    """All phases, in order (``phases[k].index == k``), and where they came from."""

    phases: tuple[Phase, ...]
    source: str

    def to_raw(self) -> dict[str, dict[str, Any]]:
        """The schedule as a TOML-ready mapping ``{"0": {...}, "1": {...}}``."""
        return {str(p.index): p.to_raw() for p in self.phases}


def running_phase_count(n_phases: int, max_depth: int) -> int:
    """How many phases run: all with ``max_depth = -1``, else phases ``0..max_depth``."""
    return n_phases if max_depth < 0 else min(n_phases, max_depth + 1)
