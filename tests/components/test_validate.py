"""RepeatableValidator: the same batches every time, and the loss handed to the trainer once."""

from __future__ import annotations

import torch

from titan_phases.components.validate import RepeatableValidator


class _Loader:
    def __init__(self) -> None:
        self.position = 0

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


class _Processor:
    def __init__(self) -> None:
        self.logged: list[tuple[float, int]] = []
        self.ntokens_since_last_log = 0

    def log_validation(self, loss: float, step: int) -> None:
        self.logged.append((loss, step))


class _Validator:
    """Like torchtitan's: reads on from the loader and reports through the processor only."""

    def __init__(self, processor: _Processor) -> None:
        self.validation_dataloader = _Loader()
        self.metrics_processor = processor

    def should_validate(self, step: int) -> bool:
        return step % 2 == 0

    def validate(self, model_parts, step: int) -> None:
        start = self.validation_dataloader.position
        self.validation_dataloader.position += 3
        self.metrics_processor.ntokens_since_last_log += 10
        self.metrics_processor.log_validation(loss=float(start + step), step=step)


def test_every_validation_reads_the_same_batches_and_hands_its_loss_on_once():
    processor = _Processor()
    validator = RepeatableValidator(_Validator(processor))
    cpu = torch.device("cpu")
    assert validator.take_loss(2, cpu) is None
    validator.validate([], 2)
    validator.validate([], 4)
    assert processor.logged == [(2.0, 2), (4.0, 4)]  # both from position 0
    assert processor.ntokens_since_last_log == 20  # counted on the real processor
    assert validator.take_loss(2, cpu) is None  # the last validation was after step 4
    validator.validate([], 6)
    assert validator.take_loss(6, cpu) == 6.0
    assert validator.take_loss(6, cpu) is None
    assert validator.should_validate(4) and not validator.should_validate(5)
