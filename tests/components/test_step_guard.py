"""StepGuard: the per-step verdict, in one process (the agreement is one all-reduce)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from titan_phases.components.step_guard import (
    StepGuard,
    TrainingDiverged,
    TrainingInterrupted,
    TrainingPreempted,
)
from titan_phases.runtime.process_exit import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_PREEMPTED


@pytest.fixture
def guard():
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield StepGuard(torch.device("cpu"))
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_a_non_finite_microbatch_loss_marks_only_its_step(guard: StepGuard):
    guard.observe_loss(torch.tensor(2.0))
    guard.observe_loss(torch.tensor(float("nan")))
    assert guard.after_step().diverged
    guard.observe_loss(torch.tensor(1.0))
    assert not guard.after_step().diverged


def test_sigterm_asks_to_stop_after_the_step(guard: StepGuard):
    assert not guard.after_step().stop_requested
    os.kill(os.getpid(), signal.SIGTERM)
    verdict = guard.after_step()
    assert verdict.stop_requested and verdict.stop_signal == signal.SIGTERM


def test_ctrl_c_asks_to_stop_after_the_step_and_twice_raises_nothing(guard: StepGuard):
    # Python's own handler would raise KeyboardInterrupt here, mid-step, on every rank.
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)
    # torchrun answers a second Ctrl-C with SIGTERM: the rank's first request stands.
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.after_step().stop_signal == signal.SIGINT


def test_settle_stops_before_saving_on_divergence_and_saves_on_a_stop_request(guard: StepGuard):
    saved, ended = [], []

    def save() -> str:
        saved.append(True)
        return "ckpt/step-4"

    guard.observe_loss(torch.tensor(float("inf")))
    with pytest.raises(TrainingDiverged) as diverged:
        guard.settle(4, 1, "stop", save, ended.append)
    assert diverged.value.exit_code == EXIT_DIVERGED and not saved
    assert ended == ["diverged: non-finite training loss in step 4 (phase 1)"]

    guard.observe_loss(torch.tensor(float("inf")))
    guard.settle(5, 1, "warn", save, ended.append)  # logged, training goes on
    assert not saved

    guard.request_stop()
    with pytest.raises(TrainingPreempted) as preempted:
        guard.settle(6, 1, "stop", save, ended.append)
    assert preempted.value.exit_code == EXIT_PREEMPTED and saved == [True]
    assert "saved a full checkpoint after step 6 (ckpt/step-4)" in str(preempted.value)
    assert not isinstance(preempted.value, Exception)  # torch's @record must not log it


def test_settle_saves_on_ctrl_c_and_ends_with_its_own_code(guard: StepGuard):
    saved, ended = [], []

    def save() -> str:
        saved.append(True)
        return "ckpt/step-7"

    guard.request_stop(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as interrupted:
        guard.settle(7, 2, "stop", save, ended.append)
    assert interrupted.value.exit_code == EXIT_INTERRUPTED and saved == [True]
    assert ended == ["interrupted (SIGINT)"]
    assert str(interrupted.value) == (
        "Ctrl-C (SIGINT) received: saved a full checkpoint after step 7 (ckpt/step-7). Run the "
        "same command again to continue")
    assert not isinstance(interrupted.value, Exception)
