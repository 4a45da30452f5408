"""Problems found in a phase schedule, and the exception that carries them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from titan_phases.config import UnknownKey


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in a schedule or in the ``[phases]`` settings.

    Attributes:
        source: the file (or "<file> [phases.schedule]", "generated from <file>") it comes from.
        phase: the phase index, or None for settings that are not per phase.
        key: the offending key, dotted (``new_lr_scheduler.init_pg_lrs``, ``phases.lr_scale``).
        message: what was found and what was expected.
        hint: what to do about it; empty when the message says it all.
    """

    source: str
    phase: int | None
    key: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = self.source if self.phase is None else f"{self.source}: phase {self.phase}"
        text = f"{where}: {self.key}: {self.message}"
        return f"{text} -> {self.hint}" if self.hint else text


def unknown_key_problems(unknown: Iterable[UnknownKey]) -> list[Problem]:
    """The job TOML's unknown and mistyped keys as problems, to report with the schedule's."""
    return [Problem(u.where, None, u.key, u.message, u.hint) for u in unknown]


class ScheduleError(ValueError):
    """A schedule or its settings are invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: Iterable[Problem], what: str = "phase schedule"):
        self.problems = list(problems)
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {what} ({count} problem{'s' * (count != 1)}):\n{lines}")


class Problems:
    """Collects problems in the order they are found.

    ``has(phase, key)`` lets a later check stay quiet about a value an earlier check already
    rejected (e.g. a malformed ``max_transition_step`` is not reported again as missing).
    """

    def __init__(self) -> None:
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        # has() is asked once per phase; scanning every error each time would make a long
        # schedule full of errors quadratic. Errors appended to ``errors`` directly count too.
        self._keys_by_phase: dict[int | None, list[str]] = {}
        self._indexed = 0

    def error(self, source: str, phase: int | None, key: str, message: str, hint: str = "") -> None:
        self.errors.append(Problem(source, phase, key, message, hint))

    def warn(self, source: str, phase: int | None, key: str, message: str, hint: str = "") -> None:
        self.warnings.append(Problem(source, phase, key, message, hint))

    def has(self, phase: int | None, key: str) -> bool:
        for problem in self.errors[self._indexed:]:
            self._keys_by_phase.setdefault(problem.phase, []).append(problem.key)
        self._indexed = len(self.errors)
        return any(k.startswith(key) for k in self._keys_by_phase.get(phase, ()))

    def raise_if_any(self) -> None:
        """Raise ScheduleError with the errors: settings first, then phase by phase, each group
        in the order the checks found them."""
        if self.errors:
            raise ScheduleError(
                sorted(self.errors, key=lambda p: -1 if p.phase is None else p.phase))
