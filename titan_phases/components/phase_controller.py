"""PhaseController: which phase a job is in, when it moves on, and the record of how it got there.

The controller decides; the trainer acts. It is Stateful and is saved in every DCP checkpoint
under ``phases`` (:data:`~.checkpointing.format.PHASES_KEY`), so a resumed job
knows its phase before it builds anything.

Transitions are decided *between* steps: after step ``S`` has been trained, checkpointed and
validated, :meth:`PhaseController.due` says whether step ``S + 1`` belongs to the next phase.
Checkpoints therefore always hold a consistent "phase k after step S" state, and a job resumed
from step ``S`` makes the same decision at the same point as one that never stopped.

A phase ends after its ``max_transition_step`` (the last step it trains), or earlier when its
validation loss plateaus (with plateau transitions on, see
:mod:`titan_phases.components.plateau`). The final phase runs to the end of training,
unless it plateaus: then the controller asks to stop, with the reason.

The controller also remembers the best validation loss of the current phase and the step it
was measured at, which ``restore_best`` uses. For a generated cycle it saves the current
phase's place in the cycle (pass, position, blocks, the order generator's state), and a resume
refuses a cycle that would not go on the same way.

A resume also refuses a job whose phases ``0..saved`` differ from the checkpoint's in what the
checkpoint fixes: the parameters each phase thaws and freezes (saved as fingerprints), and the
settings the checkpoint restores instead of reading them from the config
(:meth:`~titan_phases.schedule.ResolvedSchedule.fixed_settings`: lrs, optimizer and LR
scheduler classes and arguments, ``[optimizer]``, ``lr_scale``), saved as values so the refusal
can name each. A checkpoint written before the settings were saved has only the fingerprints:
its settings are not checked (:attr:`PhaseController.settings_unchecked`).

**Limitations**
Phases only advance, one at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch.distributed.checkpoint.stateful import Stateful

from titan_phases.components.plateau import PlateauTracker
from titan_phases.config import Phases
from titan_phases.schedule import ResolvedSchedule

REASON_STEP = "max_transition_step"
REASON_PLATEAU = "validation plateau"


class ScheduleMismatchError(ValueError):
    """The checkpoint was written under a schedule the current one cannot continue."""


@dataclass(frozen=True)
class Transition:
    from_phase: int
    to_phase: int
    after_step: int
    """Last step trained in ``from_phase``."""
    reason: str

    def event(self) -> dict[str, Any]:
        """The transition's metrics.jsonl record."""
        return {
            "type": "transition",
            "step": self.after_step,
            "from_phase": self.from_phase,
            "to_phase": self.to_phase,
            "reason": self.reason,
        }


def phase_fingerprints(
    phase_params: Sequence[Sequence[str]], phase_frozen: Sequence[Sequence[str]] = ()
) -> list[str]:
    """One digest per phase of the parameter names it thaws and freezes (order-insensitive).
    A phase that freezes nothing has the digest of its thawed names alone, as before freezing
    phases existed, so older checkpoints stay resumable."""
    frozen = list(phase_frozen) or [()] * len(phase_params)
    text = [
        "\n".join(sorted(names)) + ("\n--freeze\n" + "\n".join(sorted(leaving)) if leaving else "")
        for names, leaving in zip(phase_params, frozen)
    ]
    return [hashlib.sha256(t.encode()).hexdigest()[:16] for t in text]


def build_phase_controller(
    schedule: ResolvedSchedule, phases_config: Phases, validation_enabled: bool
) -> PhaseController:
    """The controller for a job's resolved schedule and ``[phases]`` settings."""
    mode = phases_config.effective_transition_mode(validation_enabled)
    return PhaseController(
        [p.max_transition_step for p in schedule.phases],
        schedule.phase_params,
        PlateauTracker(phases_config.patience, phases_config.min_delta, phases_config.mode),
        plateau_transitions=mode in ("plateau", "both"),
        phase_frozen=schedule.phase_frozen,
        cycle=None if schedule.cycle is None else [p.as_dict() for p in schedule.cycle],
        phase_settings=[schedule.fixed_settings(k) for k in range(schedule.num_phases)],
        settings_source=_settings_source(schedule),
    )


def _settings_source(schedule: ResolvedSchedule) -> str:
    """Where the phases' own settings (``lr``, ``new_optimizer``...) come from."""
    if schedule.cycle is not None:
        return "[phases.cycle] lr (the schedule is generated)"
    if schedule.generated:
        return ("[phases] base_max_lr, reinit_optimizer and reinit_lr_scheduler (the schedule is "
                "generated)")
    return schedule.source


class PhaseController(Stateful):
    """Tracks the current phase and decides transitions; see the module docstring.

    Args:
        max_transition_steps: per phase, the last step it trains, or None for no step limit.
        phase_params: per phase, the canonical names of the parameters it thaws; used to
            refuse checkpoints written under a schedule with different phases.
        plateau: tracks the validation loss of the current phase (best value and step).
        plateau_transitions: whether a plateau ends the phase (or, in the final phase, training).
        phase_frozen: per phase, the names of the parameters it freezes (none: a schedule that
            only thaws).
        cycle: per phase, its place in a generated cycle
            (:meth:`~titan_phases.schedule.cycle.CyclePosition.as_dict`), saved with the
            current phase's so that a resume checks it goes on with the same draws.
        phase_settings: per phase, the settings a checkpoint fixes
            (:meth:`~titan_phases.schedule.ResolvedSchedule.fixed_settings`), plain values;
            those of phases ``0..current`` are saved and must be the same on resume. None: not
            known, neither saved nor checked.
        settings_source: where the phases' own settings come from, for the refusal.
    """

    def __init__(
        self,
        max_transition_steps: Sequence[int | None],
        phase_params: Sequence[Sequence[str]],
        plateau: PlateauTracker | None = None,
        plateau_transitions: bool = False,
        phase_frozen: Sequence[Sequence[str]] = (),
        cycle: Sequence[dict[str, Any]] | None = None,
        phase_settings: Sequence[Mapping[str, Any]] | None = None,
        settings_source: str = "the schedule",
    ) -> None:
        if len(max_transition_steps) != len(phase_params) or not phase_params:
            raise ValueError("one max_transition_step and one parameter list per phase")
        if phase_settings is not None and len(phase_settings) != len(phase_params):
            raise ValueError("one settings mapping per phase")
        self.max_transition_steps = list(max_transition_steps)
        self.fingerprints = phase_fingerprints(phase_params, phase_frozen)
        # As they come back from the checkpoint's JSON (tuples are lists there).
        self.settings: list[dict[str, Any]] | None = (
            None if phase_settings is None
            else json.loads(json.dumps([dict(s) for s in phase_settings], default=str))
        )
        self.settings_source = settings_source
        # Whether the state loaded last had no settings (saved before they were) to check this
        # controller's against.
        self.settings_unchecked = False
        self.cycle = None if cycle is None else list(cycle)
        self.plateau = plateau or PlateauTracker(patience=1, min_delta=0.0, mode="min")
        self.plateau_transitions = plateau_transitions
        self.phase = 0
        self.history: list[Transition] = []
        self.last_validation_step: int | None = None
        self.stop_reason: str | None = None
        self._requested: str | None = None

    @property
    def n_phases(self) -> int:
        return len(self.fingerprints)

    @property
    def is_final_phase(self) -> bool:
        return self.phase == self.n_phases - 1

    def request_transition(self, reason: str) -> None:
        """Ask for a transition before the next step (e.g. a validation plateau)."""
        self._requested = reason

    def observe_validation(self, step: int, value: float) -> bool:
        """Record the validation loss measured after ``step``; True if it is the phase's best.

        With plateau transitions on, a plateau requests the next phase, or in the final phase
        sets :attr:`stop_reason`.
        """
        self.last_validation_step = step
        improved = self.plateau.update(value, step)
        if self.plateau_transitions and self.plateau.plateaued:
            if self.is_final_phase:
                self.stop_reason = (
                    f"validation loss plateaued in the final phase {self.phase}: "
                    f"{self.plateau.bad_validations} validations without improvement "
                    f"(patience {self.plateau.patience}), "
                    + (
                        f"best {self.plateau.best:.6g} after step {self.plateau.best_step}"
                        if self.plateau.best_step is not None
                        else "no finite validation loss"
                    )
                )
            else:
                self.request_transition(REASON_PLATEAU)
        return improved

    def due(self, completed_step: int) -> Transition | None:
        """The transition to carry out before step ``completed_step + 1``, if any."""
        if self.is_final_phase:
            return None
        limit = self.max_transition_steps[self.phase]
        if self._requested is not None:
            reason = self._requested
        elif limit is not None and completed_step >= limit:
            reason = REASON_STEP
        else:
            return None
        return Transition(self.phase, self.phase + 1, completed_step, reason)

    def commit(self, transition: Transition) -> None:
        """Record that the trainer carried out ``transition``."""
        if transition.from_phase != self.phase:
            raise RuntimeError(
                f"transition from phase {transition.from_phase} committed in phase {self.phase}"
            )
        self.phase = transition.to_phase
        self.history.append(transition)
        self._requested = None
        self.plateau.reset()

    def state_dict(self) -> dict[str, Any]:
        # Variable-length structures go in one JSON string: DCP loads only keys that the
        # destination state dict already has, and a fresh controller has no history entries.
        return {
            "phase": self.phase,
            "json": json.dumps(
                {
                    "fingerprints": self.fingerprints,
                    "history": [asdict(t) for t in self.history],
                    "requested": self._requested,
                    "plateau": self.plateau.state(),
                    "last_validation_step": self.last_validation_step,
                    "stop_reason": self.stop_reason,
                    "cycle": None if self.cycle is None else self.cycle[self.phase],
                    "settings": None if self.settings is None else self.settings[: self.phase + 1],
                }
            ),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = json.loads(state_dict["json"])
        phase = int(state_dict["phase"])
        problems = [
            problem
            for problem in (
                cycle_problem(saved.get("cycle"), phase, self.cycle),
                schedule_problem(saved["fingerprints"], phase, self.fingerprints),
                settings_problem(saved.get("settings"), phase, self.settings,
                                 self.settings_source),
            )
            if problem is not None
        ]
        if problems:
            raise ScheduleMismatchError("\n".join(problems))
        self.settings_unchecked = saved.get("settings") is None and self.settings is not None
        self.phase = phase
        self.history = [Transition(**t) for t in saved["history"]]
        self._requested = saved["requested"]
        self.plateau.restore(saved["plateau"])
        self.last_validation_step = saved["last_validation_step"]
        self.stop_reason = saved["stop_reason"]


def schedule_problem(saved: Sequence[str], saved_phase: int, current: Sequence[str]) -> str | None:
    """Why the current schedule cannot continue a run saved in ``saved_phase``, or None.

    Phases up to and including the saved one decided which params are trainable and how the
    optimizer's param groups are laid out, so they must be unchanged; later phases may change.
    """
    if saved_phase >= len(current):
        return (
            f"the checkpoint is in phase {saved_phase} but the schedule has only "
            f"{len(current)} phase(s); restore the schedule the run was started with or start "
            "a new run (new job.dump_folder)"
        )
    changed = [i for i in range(saved_phase + 1) if saved[i] != current[i]]
    if changed:
        return (
            f"the checkpoint is in phase {saved_phase}, but the parameters of phase(s) "
            f"{', '.join(map(str, changed))} differ from the schedule it was saved with; phases "
            f"0..{saved_phase} must stay as they were (later phases may change). Restore the "
            "original params for those phases or start a new run (new job.dump_folder)"
        )
    return None


def _shown(value: Any) -> str:
    return "not set" if value is None else json.dumps(value)


def _phase_ranges(phases: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"phases 1-3, 5"``."""
    runs: list[list[int]] = []
    for k in phases:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    text = ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
    return f"phase{'s' if len(phases) > 1 else ''} {text}"


_SHOWN_CHANGES = 20


def settings_problem(
    saved: Sequence[Mapping[str, Any]] | None,
    saved_phase: int,
    current: Sequence[Mapping[str, Any]] | None,
    source: str = "the schedule",
) -> str | None:
    """Why a run saved in ``saved_phase`` cannot go on with the current settings of phases
    ``0..saved_phase`` (:meth:`~titan_phases.schedule.ResolvedSchedule.fixed_settings`), or
    None. Either None (a checkpoint written before the settings were saved, a controller
    without them): not checked.
    One line per changed key and values, naming the phases where it changed (a job-wide key,
    ``[section] key``, is named as such)."""
    if saved is None or current is None:
        return None
    changes: dict[tuple[str, str, str], list[int]] = {}
    for k in range(min(saved_phase + 1, len(saved), len(current))):
        for key in sorted(set(saved[k]) | set(current[k])):
            before, now = saved[k].get(key), current[k].get(key)
            if before != now:
                changes.setdefault((key, _shown(before), _shown(now)), []).append(k)
    if not changes:
        return None
    lines = [
        (f"{key}" if key.startswith("[") else f"{_phase_ranges(phases)} {key}")
        + f": {before} in the checkpoint, {now} now"
        + (f" ({_phase_ranges(phases)})" if key.startswith("[") and phases != [0] else "")
        for (key, before, now), phases in changes.items()
    ]
    own = any(not key.startswith("[") for key, _, _ in changes)
    if len(lines) > _SHOWN_CHANGES:
        lines[_SHOWN_CHANGES:] = [f"... and {len(lines) - _SHOWN_CHANGES} more"]
    return (
        f"the checkpoint is in phase {saved_phase}, and this job changes settings of phases "
        f"0..{saved_phase} that the checkpoint fixes (resuming restores them from the "
        "checkpoint, so the change would be silently ignored):\n  "
        + "\n  ".join(lines)
        + ("\nThe phases' own settings come from " + source + "." if own else "")
        + "\nRestore the values the run was started with, or start a new run (new "
        "job.dump_folder). What may change on resume: max_transition_step, max_norm, "
        "[lr_scheduler] and training.steps, the init_args of a LambdaLR or MultiplicativeLR, "
        f"and phases after {saved_phase}"
    )


def cycle_problem(
    saved: dict[str, Any] | None, saved_phase: int, current: Sequence[dict[str, Any]] | None
) -> str | None:
    """Why a run saved in ``saved_phase`` of a generated cycle cannot go on with the current
    cycle, or None: it must have the same pass, position, blocks and order generator state."""
    live = None if current is None or saved_phase >= len(current) else current[saved_phase]
    if saved == live:
        return None
    if saved is None or live is None:
        what = "a generated cycle" if saved is not None else "no generated cycle"
        return (
            f"the checkpoint was saved by {what}, and this job's schedule is "
            f"{'not one' if saved is not None else 'one'}; resume with the settings the run "
            "was started with, or start a new run (new job.dump_folder)"
        )
    return (
        f"the checkpoint is in pass {saved['pass']}, phase {saved['position']} of its pass, "
        f"blocks {saved['blocks']}, but this job's cycle has pass {live['pass']}, phase "
        f"{live['position']}, blocks {live['blocks']} there"
        + (" and another order generator state (phases.cycle.seed or order changed?)"
           if saved["generator_state"] != live["generator_state"] else "")
        + "; resume with the [phases.cycle] settings the run was started with, or start a new "
        "run (new job.dump_folder)"
    )
