"""A run's history read back from its ``metrics.jsonl``: what ``titan-phases plot`` draws.

:func:`read_timeline` reads a file that may belong to a resumed run or to a run still in
progress through :func:`titan_phases.components.metrics_file.read_metrics`: the last record of
a step wins, a transition repeated by a restart is one transition, and a line being written
while the file is read is left out.

**Limitations**
Reads the records titan_phases writes: ``train`` (``loss``, ``lr`` per param group,
``trainable_params``, ``phase``), ``validation``, ``transition`` and ``end``. A non-finite loss
is stored as null and read as NaN.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path

from titan_phases.components.metrics_file import read_metrics

__all__ = ["PhaseBand", "Timeline", "read_timeline"]


@dataclass(frozen=True)
class PhaseBand:
    """The steps a phase trained, and why it began (None for phase 0)."""

    phase: int
    first_step: int
    last_step: int
    reason: str | None

    @property
    def span(self) -> tuple[float, float]:
        """Where the band lies on the step axis: each step it trained takes one unit, centred on
        the step's number, so that bands meet half-way between two phases' steps."""
        return self.first_step - 0.5, self.last_step + 0.5


@dataclass
class Timeline:
    """Per-step series of one run, in step order."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    validation_steps: list[int] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    lrs: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
    """``{param group: (steps, lrs)}``; a group's series starts at the phase that added it."""
    trainable_params: list[int | None] = field(default_factory=list)
    phases: list[PhaseBand] = field(default_factory=list)
    starts: int = 0
    """Process starts (``run_start`` lines): 1 for a run that never stopped."""
    end: str | None = None
    """Why training ended early, if it did (the last process start's ``end`` record)."""

    def trainable_params_line(self) -> tuple[list[float], list[int]]:
        """The trainable-parameter count as a step line over the phase bands: each phase's count
        (the last its steps logged) from where its band begins, and the last count on to where
        the last band ends.

        The count changes when a phase begins, which is where its band begins; steps logged
        every ``log_freq`` steps would put the change at the first step logged in the phase.
        A phase that logged no count is left out.
        """
        xs: list[float] = []
        ys: list[int] = []
        for band in self.phases:
            lo = bisect.bisect_left(self.steps, band.first_step)
            hi = bisect.bisect_right(self.steps, band.last_step)
            logged = [n for n in self.trainable_params[lo:hi] if n is not None]
            if logged:
                xs += [band.span[0], band.span[1]]
                ys += [logged[-1], logged[-1]]
        return xs, ys


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _bands(train: dict[int, dict], transitions: dict[int, tuple[int, str]]) -> list[PhaseBand]:
    # Steps are logged every log_freq steps: a band reaches from the step after the transition
    # into it to the step of the transition out of it, where those are known.
    bands: list[PhaseBand] = []
    for step in sorted(train):
        phase = train[step].get("phase", 0)
        if bands and bands[-1].phase == phase:
            bands[-1] = PhaseBand(phase, bands[-1].first_step, step, bands[-1].reason)
        else:
            entered = transitions.get(phase)
            first = entered[0] + 1 if entered else step
            bands.append(PhaseBand(phase, first, step, entered[1] if entered else None))
    return [
        PhaseBand(b.phase, b.first_step, transitions[b.phase + 1][0], b.reason)
        if b.phase + 1 in transitions else b
        for b in bands
    ]


def read_timeline(path: str | Path) -> Timeline:
    """The timeline of ``path`` (a ``metrics.jsonl`` file)."""
    metrics = read_metrics(path)
    transitions = {phase: (r["step"], r["reason"]) for phase, r in metrics.transitions.items()}
    timeline = Timeline(starts=metrics.starts, end=metrics.end and metrics.end.get("reason"))
    for step, record in metrics.train.items():
        timeline.steps.append(step)
        timeline.loss.append(_number(record.get("loss")))
        timeline.trainable_params.append(record.get("trainable_params"))
        for group, lr in enumerate(record.get("lr") or []):
            steps, values = timeline.lrs.setdefault(group, ([], []))
            steps.append(step)
            values.append(lr)
    timeline.validation_steps = list(metrics.validation)
    timeline.validation_loss = [_number(r.get("loss")) for r in metrics.validation.values()]
    timeline.phases = _bands(metrics.train, transitions)
    return timeline
