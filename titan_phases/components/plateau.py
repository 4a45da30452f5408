"""Plateau detection on the validation loss, FTS's FTSEarlyStopping adapted to steps.

One :class:`PlateauTracker` watches one phase: every validation either improves on the phase's
best value by more than ``min_delta`` (resetting the count) or adds one to the count of
validations without improvement; at ``patience`` the phase has plateaued. A NaN or infinite
loss never counts as an improvement.

**Limitations**
Only one monitored value (the validation loss torchtitan's validator reports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal


@dataclass
class PlateauTracker:
    patience: int
    min_delta: float
    mode: Literal["min", "max"]
    best: float | None = None
    best_step: int | None = None
    bad_validations: int = 0

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, step: int) -> bool:
        """Record one validation; True when this one is a new best."""
        if self.improves(value):
            self.best, self.best_step, self.bad_validations = value, step, 0
            return True
        self.bad_validations += 1
        return False

    @property
    def plateaued(self) -> bool:
        return self.bad_validations >= self.patience

    def reset(self) -> None:
        """Start watching a new phase."""
        self.best, self.best_step, self.bad_validations = None, None, 0

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad_validations}

    def restore(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.bad_validations = (
            state["best"], state["best_step"], state["bad"]
        )
