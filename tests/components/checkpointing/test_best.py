"""restore_best's checkpoints on 2 real gloo ranks: a restore is bitwise the saved best."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.components import phased_workers as w
from tests.dist import run_ranks


def _save_train_restore(rank: int, world_size: int, root: str) -> dict[str, bool]:
    from titan_phases.components.checkpointing.best import BestCheckpoints

    parts, optimizers, lr_schedulers = w.build_two_part_stack(world_size)
    w.enter_phase1(parts, optimizers, lr_schedulers)
    for step in (1, 2):
        w.train_step(parts, optimizers, lr_schedulers, step, rank, world_size)
    best = BestCheckpoints(root)
    path = best.save(1, 2, w.states_of(parts, optimizers, lr_schedulers))
    saved = w.snapshot(parts, optimizers, lr_schedulers)
    for step in (3, 4):
        w.train_step(parts, optimizers, lr_schedulers, step, rank, world_size)
    moved = w.snapshot(parts, optimizers, lr_schedulers)
    best.restore(path, w.states_of(parts, optimizers, lr_schedulers))
    restored = w.snapshot(parts, optimizers, lr_schedulers)

    def equal(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    return {
        "training moved the weights": not equal(moved["params"], saved["params"]),
        "weights restored bitwise": equal(restored["params"], saved["params"]),
        "optimizer state restored bitwise": equal(restored["state"], saved["state"]),
        "group hyperparameters restored": restored["groups"] == saved["groups"],
        "scheduler position restored": restored["schedulers"] == saved["schedulers"],
    }


@pytest.mark.e2e
def test_restore_is_bitwise_the_saved_best_on_two_ranks(tmp_path: Path):
    for result in run_ranks(_save_train_restore, 2, str(tmp_path)):
        assert all(result.values()), result
    assert (tmp_path / "best_checkpoints" / "phase-1" / "after-step-2" / ".metadata").is_file()


@pytest.mark.e2e
def test_only_the_newest_two_bests_of_a_phase_are_kept(tmp_path: Path):
    run_ranks(_save_three_times, 1, str(tmp_path))
    kept = sorted(p.name for p in (tmp_path / "best_checkpoints" / "phase-0").iterdir())
    assert kept == ["after-step-2", "after-step-3"]


def _save_three_times(rank: int, world_size: int, root: str) -> None:
    from titan_phases.components.checkpointing.best import BestCheckpoints

    parts, optimizers, lr_schedulers = w.build_two_part_stack(world_size)
    best = BestCheckpoints(root)
    for step in (1, 2, 3):
        best.save(0, step, w.states_of(parts, optimizers, lr_schedulers))


class _Value:
    """A Stateful holding one tensor, to see what a restore brings back."""

    def __init__(self, value: float) -> None:
        self.value = torch.tensor([value])

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"].clone()


def test_restore_best_keeps_what_the_next_phase_replaces(tmp_path: Path):
    from titan_phases.components.checkpointing.best import RestoreBest
    from titan_phases.components.plateau import PlateauTracker
    from titan_phases.schedule import LRSchedulerChange, PhasePlan

    model, optimizer, scheduler = _Value(1.0), _Value(2.0), _Value(3.0)
    keeper = RestoreBest(str(tmp_path), [], model, optimizer, scheduler)
    plateau = PlateauTracker(patience=1, min_delta=0.0, mode="min")
    following = PhasePlan(1, ("b",), ("a", "b"), 0.1, None,
                          LRSchedulerChange("StepLR", {"step_size": 1}, None, False), 1.0)

    keeper.restore(0, plateau, following)  # no validation yet: nothing to restore
    assert [model.value.item(), optimizer.value.item()] == [1.0, 2.0]

    plateau.update(0.5, step=4)
    keeper.save(0, 4)
    model.value, optimizer.value, scheduler.value = (torch.tensor([9.0]) for _ in range(3))
    keeper.restore(0, plateau, following)
    assert [model.value.item(), optimizer.value.item(), scheduler.value.item()] == [1.0, 2.0, 9.0]
