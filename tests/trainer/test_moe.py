"""A phased MoE job (deepseek_v3 debug model) on 2 gloo ranks, with and without expert
parallelism: the top two blocks' routers train from step 1, the other routers and the experts
thaw in later phases. A one-phase job on the same config is held to stock torchtitan.

On 2 ranks EP 2 splits the experts' first dimension over the same 2 ranks as FSDP does, so
random initialisation gives both runs the same weights, and both see the same batches. With EP
the routed tokens travel by all-to-all to the rank holding their expert instead of being
computed where they are, so losses may differ by reduction order only (tolerance 1e-5
relative; they were bitwise equal when this was written).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.jobs import (
    JobResult,
    measured_state_bytes,
    model_tensors,
    planned_state_bytes,
    REPO,
    run_job,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_assets")]

MOE_JOB = REPO / "tests" / "trainer" / "moe_job.toml"
EP2 = ("--parallelism.expert_parallel_degree", "2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, JobResult]:
    results = {}
    for name, options in (("fsdp", ()), ("ep2", EP2)):
        result = run_job(tmp_path_factory.mktemp(name) / "run", *options, config=MOE_JOB,
                         record_all_gathers=True)
        assert result.returncode == 0, result.failure()
        results[name] = result
    return results


def test_moe_phases_with_expert_parallelism_match_fsdp(runs: dict[str, JobResult]):
    fsdp, ep = runs["fsdp"], runs["ep2"]
    for run in (fsdp, ep):
        assert [r["phase"] for r in run.records()] == [0, 0, 1, 1, 2, 2]
    expected, got = fsdp.losses(), ep.losses()
    worst = max(abs(got[s] - expected[s]) / expected[s] for s in expected)
    assert worst <= 1e-5, f"largest relative loss difference {worst:.2e}"
    assert [r["lr"] for r in ep.records()] == [r["lr"] for r in fsdp.records()]
    for run, options in ((fsdp, ()), (ep, EP2)):
        assert measured_state_bytes(run.records()) == planned_state_bytes(
            2, "--job.config_file", str(MOE_JOB), *options
        )


def test_expert_bias_keeps_balancing_while_the_experts_are_frozen(
    runs: dict[str, JobResult], tmp_path: Path
):
    # torchtitan's load-balancing hook updates every MoE block's expert_bias after each step;
    # under phases it must go on while the experts themselves are frozen (phase 0).
    for name, run in runs.items():
        at = {step: model_tensors(run.dump / "checkpoint" / f"step-{step}",
                                  tmp_path / f"{name}-{step}.pt")
              for step in (2, 4)}
        biases = [n for n in at[2] if n.endswith("moe.expert_bias")]
        assert len(biases) == 5
        assert all(at[2][n].abs().sum() > 0 for n in biases), name
        assert any(not torch.equal(at[2][n], at[4][n]) for n in biases), name
        # Block 1's experts thaw in phase 2 (after step 4).
        frozen_experts = [n for n in at[2] if n.startswith("layers.1.moe.experts.")]
        assert frozen_experts
        assert all(torch.equal(at[2][n], at[4][n]) for n in frozen_experts), name
    bias = {name: model_tensors(run.dump / "checkpoint" / "step-6", tmp_path / f"{name}.pt")
            for name, run in runs.items()}
    for n in (n for n in bias["fsdp"] if n.endswith("moe.expert_bias")):
        assert torch.equal(bias["fsdp"][n], bias["ep2"][n]), n


def test_backward_never_all_gathers_a_frozen_block_below_the_trainable_ones(
    runs: dict[str, JobResult],
):
    # Under EP each MoE block's experts are an FSDP module of their own; here they count as
    # part of their block (layers.N). Phase 0 trains the routers of blocks 4-5 and phase 1 the
    # routers from block 1 up: the frozen blocks below, experts included, are never gathered.
    expected = {0: {"layers.4", "layers.5"},
                1: {"layers.1", "layers.2", "layers.3", "layers.4", "layers.5"},
                2: {"layers.0", "layers.1", "layers.2", "layers.3", "layers.4", "layers.5",
                    "tok_embeddings.weight"}}
    for name, run in runs.items():
        gathered = run.backward_all_gathers()
        assert {k: v - {"output.weight", "norm.weight"} for k, v in gathered.items()} == (
            expected
        ), name


def test_the_expert_bias_follows_stock_torchtitan_while_the_same_params_train(
    tmp_path: Path,
):
    # One phase that trains everything against torchtitan's own Trainer on the same job (EP 2):
    # the load-balancing hook sees the same tokens, so every checkpoint must match stock's.
    import tomllib

    from titan_phases.config.toml_writer import dumps

    tables = tomllib.loads(MOE_JOB.read_text())
    del tables["phases"]  # a stock model with [phases] settings is refused: they would be ignored
    without_phases = tmp_path / "stock.toml"
    without_phases.write_text(dumps(tables))
    tables["phases"] = {"schedule": {"0": {"params": [".+"]}}}
    one_phase = tmp_path / "one_phase.toml"
    one_phase.write_text(dumps(tables))
    stock = run_job(tmp_path / "stock", *EP2, "--model.name", "deepseek_v3", config=without_phases)
    phased = run_job(tmp_path / "phased", *EP2, config=one_phase)
    for run in (stock, phased):
        assert run.returncode == 0, run.failure()
    for step in (2, 4, 6):
        got, expected = (
            model_tensors(run.dump / "checkpoint" / f"step-{step}", tmp_path / f"{n}{step}.pt")
            for n, run in (("phased", phased), ("stock", stock))
        )
        biases = [n for n in expected if n.endswith("moe.expert_bias")]
        assert len(biases) == 5 and all(expected[n].abs().sum() > 0 for n in biases)
        assert sorted(got) == sorted(expected)
        for n in expected:
            assert torch.equal(got[n], expected[n]), (step, n)
