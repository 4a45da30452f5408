"""Validation that measures the same batches every time, and hands its loss to the trainer.

torchtitan 0.2.2's validator keeps iterating one validation dataloader across validations: with
``validation.steps`` limited, each validation sees the *next* batches of the split, so losses
of successive validations are measured on different data, and a resumed run (whose validation
dataloader starts afresh) sees other batches than an uninterrupted one. Plateau detection needs
comparable numbers and exact resume needs identical ones, so :class:`RepeatableValidator`
rewinds the validation dataloader to its start before every validation.

torchtitan's ``validate()`` returns nothing; the loss only reaches the metrics processor's
``log_validation``. :class:`RepeatableValidator` therefore gives the validator it wraps a
metrics processor that also records the loss (:class:`_LossRecordingProcessor`), and
:meth:`RepeatableValidator.take_loss` is the trainer's one channel to it.

**Limitations**
Validation with ``validation.steps`` limited always uses the first batches of the split.
The wrapped validator must report its loss through ``metrics_processor.log_validation`` (as
torchtitan's ``Validator`` does) and keep its dataloader in ``validation_dataloader``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torchtitan.components.validate import BaseValidator


class _LossRecordingProcessor:
    """A metrics processor that records each validation loss, then forwards everything."""

    def __init__(self, processor: Any, record: Callable[[int, float], None]) -> None:
        object.__setattr__(self, "_processor", processor)
        object.__setattr__(self, "_record", record)

    def log_validation(self, loss: float, step: int, *args: Any, **kwargs: Any) -> None:
        self._record(step, float(loss))
        self._processor.log_validation(loss, step, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # The validator counts tokens on the processor (``ntokens_since_last_log += ...``).
        setattr(self._processor, name, value)


class RepeatableValidator(BaseValidator):
    """Wraps a torchtitan validator (composition) and rewinds its dataloader before each run."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._start = copy.deepcopy(inner.validation_dataloader.state_dict())
        self._loss: tuple[int, float] | None = None
        if getattr(inner, "metrics_processor", None) is not None:
            inner.metrics_processor = _LossRecordingProcessor(
                inner.metrics_processor, self._record
            )

    def _record(self, step: int, loss: float) -> None:
        self._loss = (step, loss)

    def should_validate(self, step: int) -> bool:
        return self.inner.should_validate(step)

    def validate(self, model_parts: list[nn.Module], step: int) -> None:
        self.inner.validation_dataloader.load_state_dict(copy.deepcopy(self._start))
        self.inner.validate(model_parts, step)

    def take_loss(
        self, step: int, device: torch.device, pp_mesh: DeviceMesh | None = None
    ) -> float | None:
        """The loss of the validation run after ``step``, once; None if none ran then.

        Rank 0's value on every rank (broadcast), so decisions taken on it agree everywhere.
        Under pipeline parallelism (``pp_mesh``) only the last stage computes the loss, and the
        other stages record torchtitan's placeholder: the last stage's value is broadcast along
        ``pp_mesh`` first. Call on every rank.
        """
        recorded, self._loss = self._loss, None
        if recorded is None or recorded[0] != step:
            return None
        value = torch.tensor([recorded[1]], dtype=torch.float64, device=device)
        if pp_mesh is not None:
            dist.broadcast(value, group=pp_mesh.get_group(), group_src=pp_mesh.size() - 1)
        if dist.is_initialized():
            dist.broadcast(value, src=0)
        return value.item()


def repeatable(build_validator_fn: Callable[..., Any]) -> Callable[..., RepeatableValidator]:
    """A TrainSpec ``build_validator_fn`` whose validators rewind before each validation."""

    @functools.wraps(build_validator_fn)
    def build(*args: Any, **kwargs: Any) -> RepeatableValidator:
        return RepeatableValidator(build_validator_fn(*args, **kwargs))

    return build
