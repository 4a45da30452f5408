"""What every rank must agree on after a step: a non-finite loss, and a request to stop.

A NaN or infinite loss on one rank poisons every rank's weights (gradients are reduced across
ranks), and a stop signal may reach some ranks before others: SIGTERM, which schedulers send
before preempting a job, and SIGINT, which torchrun sends every rank when the user presses
Ctrl-C (the terminal signals torchrun; torchrun starts each rank in a session of its own, so
only torchrun's signal reaches them). Both need one decision on every rank, taken after the
step has trained and before its checkpoint is saved, so :meth:`StepGuard.after_step` exchanges
two numbers with a single all-reduce. A stop saves the step in full and ends with the signal's
own exit code (:data:`~titan_phases.runtime.process_exit.EXIT_PREEMPTED`,
:data:`~titan_phases.runtime.process_exit.EXIT_INTERRUPTED`), without a traceback.

A second Ctrl-C changes nothing on the ranks: torchrun, still waiting for them after the first,
then sends them SIGTERM, which only asks for the same stop again. Ranks that got different
signals agree on SIGTERM (a preemption outranks a user's interrupt).

**Limitations**
One all-reduce of two numbers per step; on a GPU its result is read on the host, so each step
synchronises with the device once more. The handlers are installed from the main thread, when
the guard is built (after the model, the optimizer and the checkpoint are set up; a signal
before that ends the rank as Python would), and only set a flag: a rank blocked in a collective
sees it after the collective returns, and torchrun's grace period (30 s by default, then
SIGKILL) must cover finishing the step and saving.
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

from titan_phases.runtime.process_exit import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_PREEMPTED

__all__ = [
    "StepGuard", "StepVerdict", "TrainingDiverged", "TrainingInterrupted", "TrainingPreempted",
    "TrainingStopped",
]

logger = logging.getLogger(__name__)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals that stop training after the step in progress."""


@dataclass(frozen=True)
class StepVerdict:
    diverged: bool
    """Some rank saw a non-finite loss in the step."""
    stop_signal: signal.Signals | None
    """What asked to stop: SIGTERM if it was the first stop signal of some rank, else SIGINT;
    None when no rank received one."""

    @property
    def stop_requested(self) -> bool:
        return self.stop_signal is not None


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
    """SIGTERM: stopped after a step, saved in full."""

    exit_code = EXIT_PREEMPTED
    received = "SIGTERM received"
    end_reason = "preempted (SIGTERM)"

    def __init__(self, step: int, checkpoint: str | None) -> None:
        saved = (
            f"saved a full checkpoint after step {step} ({checkpoint})"
            if checkpoint is not None
            else f"stopped after step {step}; checkpointing is off, so nothing was saved"
        )
        super().__init__(f"{self.received}: {saved}. Run the same command again to continue")


class TrainingInterrupted(TrainingPreempted):
    """SIGINT (Ctrl-C): stopped after a step, saved in full, as for SIGTERM."""

    exit_code = EXIT_INTERRUPTED
    received = "Ctrl-C (SIGINT) received"
    end_reason = "interrupted (SIGINT)"


class StepGuard:
    """Collects this rank's evidence during a step; :meth:`after_step` agrees on it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self._stop_signal = 0
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.request_stop(signal.Signals(signum))

    def request_stop(self, signum: signal.Signals = signal.SIGTERM) -> None:
        """Ask every rank to stop after the current step, as ``signum`` (one of
        :data:`STOP_SIGNALS`) does; a rank's first request is the one it reports."""
        if not self._stop_signal:
            self._stop_signal = int(signum)

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
        # The largest signal number wins the MAX: SIGTERM (15) over SIGINT (2).
        flags = torch.stack(
            [
                self._nonfinite.to(torch.float32),
                torch.tensor(float(self._stop_signal), device=self.device),
            ]
        )
        if dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        diverged, stop = flags.tolist()
        return StepVerdict(diverged=bool(diverged),
                           stop_signal=signal.Signals(int(stop)) if stop else None)

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
        raises :class:`TrainingPreempted` (SIGTERM) or :class:`TrainingInterrupted` (SIGINT).
        ``log_end`` records the reason first.
        """
        verdict = self.after_step()
        if verdict.diverged:
            what = f"non-finite training loss in step {step} (phase {phase})"
            if nonfinite_loss == "stop":
                log_end(f"diverged: {what}")
                raise TrainingDiverged(what, step)
            logger.warning("%s; training goes on (phases.nonfinite_loss = 'warn')", what)
        if verdict.stop_signal is not None:
            stop = (TrainingInterrupted if verdict.stop_signal == signal.SIGINT
                    else TrainingPreempted)
            saved = save_full_checkpoint()
            log_end(stop.end_reason)
            raise stop(step, saved)
