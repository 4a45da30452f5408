"""Validation that measures the same batches every time.

torchtitan 0.2.2's validator keeps iterating one validation dataloader across validations: with
``validation.steps`` limited, each validation sees the *next* batches of the split, so losses
of successive validations are measured on different data, and a resumed run (whose validation
dataloader starts afresh) sees other batches than an uninterrupted one. Plateau detection needs
comparable numbers and exact resume needs identical ones, so :class:`RepeatableValidator`
rewinds the validation dataloader to its start before every validation.

**Limitations**
Validation with ``validation.steps`` limited always uses the first batches of the split.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch.nn as nn
from torchtitan.components.validate import BaseValidator


class RepeatableValidator(BaseValidator):
    """Wraps a torchtitan validator (composition) and rewinds its dataloader before each run."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._start = copy.deepcopy(inner.validation_dataloader.state_dict())

    def should_validate(self, step: int) -> bool:
        return self.inner.should_validate(step)

    def validate(self, model_parts: list[nn.Module], step: int) -> None:
        self.inner.validation_dataloader.load_state_dict(copy.deepcopy(self._start))
        self.inner.validate(model_parts, step)


def repeatable(build_validator_fn: Callable[..., Any]) -> Callable[..., RepeatableValidator]:
    """A TrainSpec ``build_validator_fn`` whose validators rewind before each validation."""

    @functools.wraps(build_validator_fn)
    def build(*args: Any, **kwargs: Any) -> RepeatableValidator:
        return RepeatableValidator(build_validator_fn(*args, **kwargs))

    return build
