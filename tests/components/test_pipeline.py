"""reinfer_stage_metadata: a thaw across a stage boundary trains the thawed stage, on real gloo
ranks with torch's own schedules; a frozen stage below the trainable ones runs no backward."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
import torch
import torch.nn as nn

from tests.dist import run_ranks
from titan_phases.components.pipeline import reinfer_stage_metadata


def _loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((output - target) ** 2).sum()


def _layers() -> tuple[list[nn.Linear], torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return [nn.Linear(4, 4) for _ in range(2)], torch.randn(2, 4), torch.randn(2, 4)


def _thaw_stage0(rank: int, world_size: int, reinfer: bool
                 ) -> tuple[list[int], torch.Tensor | str]:
    """Two stages, one per rank (1F1B, 2 microbatches): a step with stage 0 frozen, then one
    after thawing it. Returns how many tensors each backward of the first step started from on
    this rank, and this rank's weight grad of the second step, or its error."""
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining.schedules import Schedule1F1B

    layers, inputs, target = _layers()
    schedule = Schedule1F1B(
        PipelineStage(layers[rank], rank, 2, torch.device("cpu")), n_microbatches=2,
        loss_fn=_loss, scale_grads=False,  # as torchtitan builds its schedules
    )

    def step() -> None:
        layers[rank].zero_grad()
        if rank == 0:
            schedule.step(inputs)
        else:
            schedule.step(target=target)

    started_from: list[int] = []
    backward = torch.autograd.backward

    def recording_backward(tensors: Any, *args: Any, **kwargs: Any) -> None:
        started_from.append(len(tensors) if isinstance(tensors, (list, tuple)) else 1)
        backward(tensors, *args, **kwargs)

    layers[0].requires_grad_(False)
    with mock.patch.object(torch.autograd, "backward", recording_backward):
        step()
    layers[0].requires_grad_(True)
    if reinfer:
        reinfer_stage_metadata(schedule)
    try:
        step()
    except RuntimeError as e:
        return started_from, str(e)
    return started_from, layers[rank].weight.grad.clone()


@pytest.mark.e2e
def test_a_thawed_stage_gets_the_grads_of_the_unsplit_model():
    layers, inputs, target = _layers()
    _loss(layers[1](layers[0](inputs)), target).backward()
    (frozen_stage, trained_stage), grads = zip(*run_ranks(_thaw_stage0, 2, True))
    for got, layer in zip(grads, layers):
        torch.testing.assert_close(got, layer.weight.grad)
    # While stage 0 was frozen its outputs needed no grad: the schedule's backward of it had
    # nothing to start from, so no autograd work ran on its rank.
    assert not any(frozen_stage) and trained_stage == [1, 1]


@pytest.mark.e2e
def test_without_it_the_thawed_stage_fails_in_backward():
    # The schedule inferred at its first step that stage 0's outputs need no grad, so stage 1
    # sends none back.
    error = run_ranks(_thaw_stage0, 2, False)[0][1]
    assert "Failed to run stage backward" in error and "Output gradient: ('None',)" in error


def _multi_stage_flags(rank: int, world_size: int) -> tuple[bool, bool]:
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining.schedules import ScheduleLoopedBFS

    layers, inputs, target = _layers()
    stages = [PipelineStage(layer, i, 2, torch.device("cpu")) for i, layer in enumerate(layers)]
    schedule = ScheduleLoopedBFS(stages, n_microbatches=2, loss_fn=_loss)
    schedule.step(inputs, target=target)
    assert schedule._stages_forward_initialized and schedule._stages_backward_initialized
    reinfer_stage_metadata(schedule)
    return schedule._stages_forward_initialized, schedule._stages_backward_initialized


@pytest.mark.e2e
def test_multi_stage_schedules_infer_again_too():
    assert run_ranks(_multi_stage_flags, 1) == [(False, False)]


def test_a_schedule_without_known_flags_is_refused():
    with pytest.raises(RuntimeError, match="private API"):
        reinfer_stage_metadata(object())


def _lowest_trainable_grads(rank: int, world_size: int, schedule_name: str) -> list[bool]:
    """Four stages, two per rank, stages 0-1 frozen: whether stages 2 and 3 got weight grads."""
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining.schedules import get_schedule_class

    torch.manual_seed(0)
    layers = [nn.Linear(4, 4) for _ in range(4)]
    inputs, target = torch.randn(4, 4), torch.randn(4, 4)
    for layer in layers[:2]:
        layer.requires_grad_(False)
    mine = (rank, rank + 2)
    stages = [PipelineStage(layers[i], i, 4, torch.device("cpu")) for i in mine]
    schedule = get_schedule_class(schedule_name)(
        stages, n_microbatches=4, loss_fn=_loss, scale_grads=False
    )
    if rank == 0:
        schedule.step(inputs)
    else:
        schedule.step(target=target)
    return [layers[i].weight.grad is not None for i in mine if i >= 2]


@pytest.mark.e2e
@pytest.mark.parametrize("schedule, trained", [
    ("Interleaved1F1B", [[True], [True]]),
    # Why schedule validation refuses zero-bubble schedules: stage 2 (on rank 0), the lowest
    # trainable one, silently gets no weight grad.
    ("InterleavedZeroBubble", [[False], [True]]),
])
def test_which_schedules_train_the_lowest_trainable_stage(schedule: str, trained: list):
    assert run_ranks(_lowest_trainable_grads, 2, schedule) == trained
