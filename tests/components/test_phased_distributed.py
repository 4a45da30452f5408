"""PhasedOptimizersContainer / PhasedLRSchedulersContainer on real gloo ranks with FSDP2.

One 2-rank training run (two model parts, fused AdamW) is shared by the parity, checkpoint and
mismatch tests; resharded loads run it back on 1 and 3 ranks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.components import phased_workers as workers
from tests.dist import run_ranks

pytestmark = pytest.mark.e2e

TOL = 1e-6


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("phased_ckpt")


@pytest.fixture(scope="module")
def two_rank_run(ckpt_dir: Path) -> dict[str, Any]:
    return run_ranks(workers.train_and_save, 2, str(ckpt_dir))[0]


@pytest.fixture(scope="module")
def reinit_and_bf16_run() -> dict[str, Any]:
    return run_ranks(workers.reinit_and_bf16, 2)[0]


def _assert_matches_reference(diffs: list[dict[str, float]], steps: int) -> None:
    assert len(diffs) == steps
    for step, diff in enumerate(diffs):
        assert diff["grads"] <= TOL and diff["params"] <= TOL, f"step {step}: {diff}"


def test_thaw_with_state_carried_over_matches_single_process_reference(two_rank_run):
    # Steps 0-1 in phase 0, 2-3 after thawing block 1 (state of phase-0 params kept).
    _assert_matches_reference(two_rank_run["diffs"], 4)
    # The second model part holds no phase-1 params but keeps an (empty) phase-1 group.
    assert two_rank_run["empty_group_sizes"] == [4, 0]


def test_thaw_with_sgd_to_adamw_reinit_matches_single_process_reference(reinit_and_bf16_run):
    _assert_matches_reference(reinit_and_bf16_run["reinit_diffs"], 5)
    assert reinit_and_bf16_run["reinit_classes"] == ["AdamW"]


def test_bf16_thaw_of_block_frozen_at_lazy_init_trains_with_correct_grads(reinit_and_bf16_run):
    run = reinit_and_bf16_run
    _assert_matches_reference(run["bf16_diffs"], 4)
    assert run["bf16_grad_dtypes"] == ["torch.float32"]
    # The validation forward left the root unsharded; its unsharded tensors are refused.
    assert run["root_was_unsharded"]
    assert "not a registered parameter" in run["unsharded_param_rejected"]


def _assert_snapshots_identical(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["phase"] == want["phase"] == (1, 1)
    assert got["state"].keys() == want["state"].keys()
    for key, tensor in want["state"].items():
        assert torch.equal(got["state"][key], tensor), key
    assert got["groups"] == want["groups"]
    assert got["schedulers"] == want["schedulers"]
    for name, tensor in want["params"].items():
        assert torch.equal(got["params"][name], tensor), name


@pytest.mark.parametrize("world_size", [1, 3])
def test_phase1_checkpoint_from_2_ranks_loads_bitwise_on_other_rank_counts(
    two_rank_run, ckpt_dir, world_size
):
    saved = two_rank_run["saved"]
    # Two groups with different lrs, and every trainable param has state.
    lrs = [g["lr"] for g in saved["groups"][0]]
    assert len(lrs) == 2 and lrs[0] != lrs[1]
    assert len(saved["state"]) == 3 * (4 + 4 + 2)  # AdamW: 3 tensors x (head, block 2, block 1)

    loaded = run_ranks(workers.load_resharded, world_size, str(ckpt_dir))[0]
    _assert_snapshots_identical(loaded["loaded"], saved)

    # Resuming from the checkpoint taken right at the transition (no step in phase 1 yet)
    # continues exactly like the uninterrupted run (up to the order of the gradient sum).
    resumed = loaded["params_after_step2"]
    uninterrupted = two_rank_run["params_after_step2"]
    assert workers.max_abs_diff(resumed, uninterrupted) <= TOL


def test_checkpoint_phase_is_readable_without_loading(two_rank_run):
    assert two_rank_run["read_phases"] == [0, 1, 1]


def test_phase1_checkpoint_into_phase0_fails_naming_both_phases(two_rank_run):
    for key in ("optimizer", "lr_scheduler"):
        message = two_rank_run[f"phase1_into_phase0_{key}"]
        assert "saved in phase 1" in message and "in phase 0" in message, message


def test_phase0_checkpoint_into_phase1_fails_naming_both_phases(two_rank_run):
    # DCP itself refuses (BaseException, so `except Exception` would miss it) ...
    assert two_rank_run["checkpoint_exception_is_base"]
    assert two_rank_run["phase0_into_phase1_dcp"] == "CheckpointException"
    # ... and verify_checkpoint names both phases before any load is attempted.
    message = two_rank_run["phase0_into_phase1_verify"]
    assert "saved in phase 0" in message and "in phase 1" in message, message
