"""StepGuard: the per-step verdict, in one process (the agreement is one all-reduce)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from titan_phases.components.step_guard import StepGuard, TrainingDiverged, TrainingPreempted
from titan_phases.runtime.process_exit import EXIT_DIVERGED, EXIT_PREEMPTED


@pytest.fixture
def guard():
    previous = signal.getsignal(signal.SIGTERM)
    yield StepGuard(torch.device("cpu"))
    signal.signal(signal.SIGTERM, previous)


def test_a_non_finite_microbatch_loss_marks_only_its_step(guard: StepGuard):
    guard.observe_loss(torch.tensor(2.0))
    guard.observe_loss(torch.tensor(float("nan")))
    assert guard.after_step().diverged
    guard.observe_loss(torch.tensor(1.0))
    assert not guard.after_step().diverged


def test_sigterm_asks_to_stop_after_the_step(guard: StepGuard):
    assert not guard.after_step().stop_requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.after_step().stop_requested


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
