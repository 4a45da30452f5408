"""BAdam 1.4 in its bf16 mode side by side with titan_phases' bf16 storage and fp32 masters
(``--training.dtype bfloat16 --phases.fp32_master_weights``), on 1 rank.

The fixtures ``tests/fixtures/badam/<order>_bf16.json`` were recorded by
``scripts/record_badam_losses.py``: torchtitan's Trainer on ``job.toml`` with every weight in
bf16 and BAdam's BlockOptimizer over torchtitan's AdamW. On 1 rank there is no FSDP, so
``mixed_precision_param`` does not apply: both sides compute forward and backward in bf16 and
step fp32 masters of the active block with fp32 state. Both start from the seed-0 initial
weights rounded to bf16 and kept in fp32 (:func:`bf16_valued_initial_weights`): BAdam clones
its masters from the bf16 weights, titan_phases loads an fp32 checkpoint into the masters of
phase 0 in full precision, and from bf16-valued weights both get the same values.

Both sides run the same operations in the same order: torchtitan's bf16 forward and backward
and gradient clipping (the recording checks that it never scales a gradient), the bf16
gradients upcast, the job's AdamW stepping fp32 masters, the masters rounded back into the bf16
weights, the state dropped at each switch and a block that comes back starting from its bf16
weights. So the test asks for bitwise equal losses and gradient norms, and the same block
training at every step; it measured exactly that on this machine (relative loss difference 0.0
at all 12 steps of both orders, gradient norms equal). For scale: started from the unrounded
fp32 initial weights instead, titan_phases' losses differ by up to 3.1e-5 (relative) from step
2 on, because its phase-0 masters then start in full precision; bf16 storage itself moves
BAdam's losses by up to 3.2e-4 from its fp32 run. Another CPU or torch release may change the
last bits of bf16 kernels: then both sides differ from the recording, and
``scripts/record_badam_losses.py`` records the fixtures again on that machine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from tests.trainer.jobs import from_initial, model_tensors, run_job
from tests.trainer.test_block_cyclic import _blocks, BADAM, badam_cycle, badam_fixture

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("embedded_assets")]

BF16 = ("--training.dtype", "bfloat16", "--phases.fp32_master_weights")


def _weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """The fixtures' ``initial_weights_sha256``: sha256 over the tensors in name order, each as
    its name, then its bytes (contiguous)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def bf16_valued_initial_weights(
    initial_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The trainer tests' ``initial_weights`` rounded to bf16 (to nearest, ties to even) and
    saved in fp32 with DCP, and their sha256."""
    import torch.distributed.checkpoint as dcp

    folder = tmp_path_factory.mktemp("tiny_initial_bf16")
    state = {
        name: tensor.to(torch.bfloat16).to(torch.float32)
        for name, tensor in model_tensors(initial_weights, folder / "fp32.pt").items()
    }
    path = folder / "step-0"
    dcp.save(state, checkpoint_id=str(path))
    return path, _weights_sha256(state)


@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_bf16_masters_reproduce_badam_1_4_bf16_step_by_step(
    order: str, bf16_valued_initial_weights: tuple[Path, str], embedded_assets: Path,
    tmp_path: Path
):
    fixture = badam_fixture(f"{order}_bf16.json", embedded_assets)
    initial, initial_sha256 = bf16_valued_initial_weights
    assert initial_sha256 == fixture["initial_weights_sha256"], (
        "other initial weights than the recording's; rerun scripts/record_badam_losses.py"
    )
    assert "--training.dtype bfloat16" in fixture["job_args"]
    assert fixture["block_optimizer"]["active_modules"] == []
    schedule_file, schedule = badam_cycle(order, fixture, tmp_path)
    run = run_job(tmp_path / "run", *from_initial(initial),
                  "--phases.schedule_file", str(schedule_file), *BF16,
                  config=BADAM / "job.toml", nproc=1)
    assert run.returncode == 0, run.failure()
    records = {r["step"]: r for r in run.records()}
    assert sorted(records) == [s["step"] for s in fixture["steps"]]
    for expected in fixture["steps"]:
        got = records[expected["step"]]
        trained = _blocks(schedule.trainable_params(got["phase"]))
        assert trained == {expected["active_block"].rstrip(".")}, expected["step"]
        # One group trains (the active block's); BAdam's second group is empty.
        assert got["lr"] == [expected["param_groups"][0]["lr"]], expected["step"]
        # bf16 weights of the whole model, fp32 masters and state of one block.
        for key in ("param_bytes", "master_bytes", "optimizer_state_bytes"):
            assert got[key] == [expected[key]], (expected["step"], key)
    got = {s: (r["loss"], r["grad_norm"]) for s, r in records.items()}
    expected = {s["step"]: (s["loss"], s["grad_norm"]) for s in fixture["steps"]}
    assert got == expected, "losses and gradient norms (step: titan_phases, BAdam): " + ", ".join(
        f"{s}: {got[s]}, {expected[s]}" for s in expected if got[s] != expected[s]
    )
