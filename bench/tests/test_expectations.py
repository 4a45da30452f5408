"""What the cyclic row expects from ``titan-phases plan``: one block per phase top-down, the
FLOPs each phase needs against the plan's FLOP ratio, and bytes per rank with and without bf16
storage (in process: the plan lays the model out on the meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cyclic import VARIANTS
from bench.expectations import expect
from bench.jobs import job_args
from bench.run import CYCLIC, model_jobs


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("expect")
    jobs = model_jobs(CYCLIC, 3, with_all=False)
    return {v.name: expect(job_args(jobs[v.name], root / v.name, Path("unused")), 2)
            for v in VARIANTS[:2]}


def test_one_block_per_phase_top_down(facts: dict) -> None:
    phases = facts["fp32"].phases
    assert [p.blocks for p in phases] == [(5,), (4,), (3,), (2,), (1,), (0,)]
    # a block's tensors, plus the head and final norm in every phase
    assert {p.trainable_tensors for p in phases} == {11}


def test_needed_flops_below_the_plan_under_frozen_blocks(facts: dict) -> None:
    phases = facts["fp32"].phases
    # the top block's span has no frozen param: the ratios agree
    assert phases[0].needed_ratio == pytest.approx(phases[0].plan_ratio)
    assert phases[0].ideal_ratio == phases[0].plan_ratio
    # lower blocks: frozen blocks above them need input gradients only
    for lower, higher in zip(phases[1:], phases):
        assert higher.needed_ratio < lower.needed_ratio < lower.plan_ratio
    assert phases[-1].plan_ratio == pytest.approx(1.0)


def test_bytes_with_and_without_bf16_storage(facts: dict) -> None:
    fp32, bf16 = facts["fp32"].phases[0].held, facts["bf16_storage"].phases[0].held
    assert fp32["master_bytes"] == (0, 0)
    assert bf16["param_bytes"] == tuple(b // 2 for b in fp32["param_bytes"])
    assert bf16["grad_bytes"] == tuple(b // 2 for b in fp32["grad_bytes"])
    # fp32 masters of the trainable shards, stepped with the fp32 run's state
    assert bf16["master_bytes"] == fp32["grad_bytes"]
    assert bf16["optimizer_state_bytes"] == fp32["optimizer_state_bytes"]
    assert fp32["optimizer_state_bytes"] == facts["fp32"].phases[0].state_bytes
