"""restore_best's checkpoints on 2 real gloo ranks: a restore is bitwise the saved best."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.components import phased_workers as w
from tests.dist import run_ranks


def _save_train_restore(rank: int, world_size: int, root: str) -> dict[str, bool]:
    from titan_phases.components.best_checkpoint import BestCheckpoints

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


def test_restore_is_bitwise_the_saved_best_on_two_ranks(tmp_path: Path):
    for result in run_ranks(_save_train_restore, 2, str(tmp_path)):
        assert all(result.values()), result
    assert (tmp_path / "best_checkpoints" / "phase-1" / "after-step-2" / ".metadata").is_file()


def test_only_the_newest_two_bests_of_a_phase_are_kept(tmp_path: Path):
    run_ranks(_save_three_times, 1, str(tmp_path))
    kept = sorted(p.name for p in (tmp_path / "best_checkpoints" / "phase-0").iterdir())
    assert kept == ["after-step-2", "after-step-3"]


def _save_three_times(rank: int, world_size: int, root: str) -> None:
    from titan_phases.components.best_checkpoint import BestCheckpoints

    parts, optimizers, lr_schedulers = w.build_two_part_stack(world_size)
    best = BestCheckpoints(root)
    for step in (1, 2, 3):
        best.save(0, step, w.states_of(parts, optimizers, lr_schedulers))
