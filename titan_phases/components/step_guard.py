"""What every rank must agree on after a step: a non-finite loss, and a request to stop.

A NaN or infinite loss on one rank poisons every rank's weights (gradients are reduced across
ranks), and a SIGTERM, which schedulers send before preempting a job, may reach some ranks
before others. Both need one decision on every rank, taken after the step has trained and
before its checkpoint is saved, so :meth:`StepGuard.after_step` exchanges two numbers with a
single all-reduce.

**Limitations**
One all-reduce of two numbers per step; on a GPU its result is read on the host, so each step
synchronises with the device once more. The SIGTERM handler is installed from the main thread
and only sets a flag: a rank blocked in a collective sees it after the collective returns, and
torchrun's grace period (30 s by default) must cover finishing the step and saving.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from titan_phases.runtime.process_exit import EXIT_DIVERGED, EXIT_PREEMPTED

__all__ = ["StepGuard", "StepVerdict", "TrainingDiverged", "TrainingPreempted", "TrainingStopped"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepVerdict:
    diverged: bool
    """Some rank saw a non-finite loss in the step."""
    stop_requested: bool
    """Some rank received SIGTERM."""


class TrainingStopped(BaseException):
    """Training stopped on purpose; every rank raises it after the same step.

    A BaseException, like SystemExit: torch's ``@record`` (on torchtitan's ``Trainer.train``)
    would log an ``Exception`` as a crash, traceback and all, for torchrun to print again.
    """

    exit_code: int


class TrainingDiverged(TrainingStopped):
    exit_code = EXIT_DIVERGED

    def __init__(self, what: str, step: int) -> None:
        super().__init__(
            f"{what}. Stopped before saving step {step}: the newest checkpoint holds the last "
            "finite state. Lower the lr (optimizer.lr, a phase's lr, or phases.lr_scale) and "
            "resume, or set phases.nonfinite_loss = 'warn' to train on regardless"
        )


class TrainingPreempted(TrainingStopped):
    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, checkpoint: str | None) -> None:
        saved = (
            f"saved a full checkpoint after step {step} ({checkpoint})"
            if checkpoint is not None
            else f"stopped after step {step}; checkpointing is off, so nothing was saved"
        )
        super().__init__(f"SIGTERM received: {saved}. Run the same command again to continue")


class StepGuard:
    """Collects this rank's evidence during a step; :meth:`after_step` agrees on it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self._stop_requested = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        self._stop_requested = True

    def request_stop(self) -> None:
        """Ask every rank to stop after the current step (what SIGTERM does)."""
        self._stop_requested = True

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Note one microbatch's loss (no host synchronisation).

        Under tensor parallelism with loss parallel the loss is a DTensor; it is made a plain
        tensor as torchtitan's own loss logging does (``full_tensor``), so that the flags
        reduced after the step are plain tensors too.
        """
        loss = loss.detach()
        if isinstance(loss, DTensor):
            loss = loss.full_tensor()
        self._nonfinite = self._nonfinite | ~torch.isfinite(loss).all()

    def after_step(self) -> StepVerdict:
        """Agree with every rank on what happened in the step; call on every rank."""
        flags = torch.stack(
            [
                self._nonfinite.to(torch.float32),
                torch.tensor(float(self._stop_requested), device=self.device),
            ]
        )
        if dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        diverged, stop = (bool(v) for v in flags.tolist())
        return StepVerdict(diverged=diverged, stop_requested=stop)

    def settle(
        self,
        step: int,
        phase: int,
        nonfinite_loss: str,
        save_full_checkpoint: Callable[[], str | None],
        log_end: Callable[[str], None],
    ) -> None:
        """Agree on the step just trained (see :meth:`after_step`) and act on it.

        A non-finite loss raises :class:`TrainingDiverged` before anything is saved (with
        ``nonfinite_loss == "stop"``; "warn" logs it); a stop request saves the step in full and
        raises :class:`TrainingPreempted`. ``log_end`` records the reason first.
        """
        verdict = self.after_step()
        if verdict.diverged:
            what = f"non-finite training loss in step {step} (phase {phase})"
            if nonfinite_loss == "stop":
                log_end(f"diverged: {what}")
                raise TrainingDiverged(what, step)
            logger.warning("%s; training goes on (phases.nonfinite_loss = 'warn')", what)
        if verdict.stop_requested:
            saved = save_full_checkpoint()
            log_end("preempted (SIGTERM)")
            raise TrainingPreempted(step, saved)
