"""bf16 storage with fp32 masters for the trainable params (``[phases] fp32_master_weights``),
end to end on the block-cyclic job (``cycle_job.toml``): what every rank holds, against plan
and the fp32 run; frozen weights; a kill; and every layout.

On CPU the jobs keep ``training.mixed_precision_param = "float32"``: FSDP2 upcasts the bf16
weights for compute, so the runs differ from the fp32 one only by bf16 storage.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.dist import REPO
from tests.trainer.jobs import (
    CYCLE_JOB,
    from_initial,
    JobResult,
    model_tensors,
    run_job,
)
from titan_phases.config import parse_job_config
from titan_phases.plan import build_plan
from titan_phases.schedule import load_and_validate
from titan_phases.train_spec import register_train_specs

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_assets")]

BF16 = ("--training.dtype", "bfloat16", "--phases.fp32_master_weights")
KINDS = ("param_bytes", "master_bytes", "grad_bytes", "optimizer_state_bytes")
MOE_JOB = REPO / "tests" / "trainer" / "moe_job.toml"


def _measured(run: JobResult) -> dict[int, dict[str, list[int]]]:
    """Phase -> kind -> bytes per rank, as metrics.jsonl reports them (once per phase)."""
    measured: dict[int, dict[str, list[int]]] = {}
    for record in run.records():
        seen = measured.setdefault(record["phase"], {k: record[k] for k in KINDS})
        assert seen == {k: record[k] for k in KINDS}, record["step"]
    return measured


def _planned(world_size: int, config: Path, *overrides: str) -> dict[int, dict[str, list[int]]]:
    register_train_specs()
    job_config = parse_job_config(["--job.config_file", str(config), *overrides])
    plan = build_plan(job_config, load_and_validate(job_config), world_size)
    return {
        k: {
            "param_bytes": [m.params for m in phase.memory],
            "master_bytes": [m.masters for m in phase.memory],
            "grad_bytes": [m.grads for m in phase.memory],
            "optimizer_state_bytes": [m.optimizer_state for m in phase.memory],
        }
        for k, phase in enumerate(plan.phases)
    }


def _trains(step: int, config: Path = CYCLE_JOB, *overrides: str) -> set[str]:
    job_config = parse_job_config(["--job.config_file", str(config), *overrides])
    return set(load_and_validate(job_config).trainable_params((step - 1) // 2))


@pytest.fixture(scope="module")
def bf16_run(initial_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> JobResult:
    result = run_job(tmp_path_factory.mktemp("bf16") / "run", *from_initial(initial_weights),
                     *BF16, config=CYCLE_JOB)
    assert result.returncode == 0, result.failure()
    return result


def test_every_rank_holds_what_plan_says_in_every_phase(bf16_run: JobResult, cycle_run: JobResult):
    measured = _measured(bf16_run)
    assert measured == _planned(2, CYCLE_JOB, *BF16)
    fp32 = {r["phase"]: r for r in cycle_run.records()}
    for phase, held in measured.items():
        reference = fp32[phase]
        # bf16 weights and grads, half the fp32 run's; fp32 masters and optimizer state for
        # the trainable params only, as much as the fp32 run's grads and state.
        assert held["param_bytes"] == [b // 2 for b in reference["param_bytes"]]
        assert held["grad_bytes"] == [b // 2 for b in reference["grad_bytes"]]
        assert held["master_bytes"] == reference["grad_bytes"]
        assert held["optimizer_state_bytes"] == reference["optimizer_state_bytes"]


def test_masters_follow_the_fp32_run_and_frozen_bf16_weights_stay_put(
    bf16_run: JobResult, cycle_run: JobResult, initial_weights: Path, tmp_path: Path
):
    initial = model_tensors(initial_weights, tmp_path / "0.pt")
    before = initial
    worst = 0.0
    for step in range(1, 13):
        after = model_tensors(bf16_run.dump / "checkpoint" / f"step-{step}", tmp_path / "b.pt")
        fp32 = model_tensors(cycle_run.dump / "checkpoint" / f"step-{step}", tmp_path / "f.pt")
        trains = _trains(step)
        for name, tensor in after.items():
            if name in trains:
                # A trainable param's entry is its fp32 master.
                assert tensor.dtype == torch.float32, (name, step)
                update = fp32[name] - initial[name]
                worst = max(worst, float((tensor - fp32[name]).norm() / update.norm()))
            else:
                # A frozen param's is its bf16 weight, unchanged since it froze (a param that
                # just left holds its master's rounded value).
                assert tensor.dtype == torch.bfloat16, (name, step)
                assert torch.equal(tensor, before[name].to(torch.bfloat16)), (name, step)
        before = after
    print(f"largest master error relative to the fp32 run's update since step 0: {worst:.3e}")
    assert worst < 0.05
