"""titan-phases plan: steps, FLOPs and memory per rank of every phase, from the job config.

The bytes a real run measures are compared in tests/test_run_train.py (the default job) and
tests/trainer/test_resume.py (the tiny job on 2 and 3 ranks).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from titan_phases.cli import main
from titan_phases.config import parse_job_config
from titan_phases.plan import state_bytes
from titan_phases.plan.flops import attention_flops, ideal_phase_ratio
from titan_phases.schedule import load_and_validate
from titan_phases.train_spec import register_train_specs

REPO = Path(__file__).resolve().parents[2]
DEFAULT_JOB = str(REPO / "train_configs" / "debug_model.toml")
LLAMA3_8B = str(REPO / "train_configs" / "llama3_8b_phases.toml")
F32, BF16 = torch.float32, torch.bfloat16


@pytest.fixture(autouse=True, scope="module")
def _phased_specs() -> None:
    register_train_specs()


def plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code = main(["plan", "--json", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def _real_state_bytes(optimizer_cls: type, kwargs: dict, shape: tuple[int, ...], dtype) -> int:
    param = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
    param.grad = torch.ones_like(param)
    optimizer = optimizer_cls([param], **kwargs)
    optimizer.step()
    return sum(v.numel() * v.element_size() for v in optimizer.state[param].values()
               if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("optimizer_cls, kwargs", [
    (torch.optim.AdamW, {"lr": 1e-3}),
    (torch.optim.AdamW, {"lr": 1e-3, "amsgrad": True}),
    (torch.optim.Adam, {"lr": 1e-3, "fused": True}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (torch.optim.SGD, {"lr": 0.1}),
    (torch.optim.Adagrad, {"lr": 0.1}),
    (torch.optim.RMSprop, {"lr": 0.1, "centered": True, "momentum": 0.5}),
])
def test_state_bytes_on_meta_equal_a_real_step(optimizer_cls, kwargs):
    shapes = [((6, 4), F32), ((0, 4), F32), ((5,), BF16)]
    measured = state_bytes(optimizer_cls, kwargs, shapes)
    assert measured == {
        (shape, dtype): _real_state_bytes(optimizer_cls, kwargs, shape, dtype)
        for shape, dtype in shapes
    }


def test_state_bytes_are_unknown_for_an_optimizer_that_reads_values_on_meta():
    assert state_bytes(torch.optim.Adafactor, {"lr": 0.1}, [((6, 4), F32)]) is None


def test_default_job_plan_phases_ratios_and_wall_time(capsys):
    plan = plan_json(capsys, "--world-size", "2", "--seconds-per-step", "2",
                     "--job.config_file", DEFAULT_JOB)
    job_config = parse_job_config(["--job.config_file", DEFAULT_JOB])
    resolved = load_and_validate(job_config)
    attention = attention_flops(256, job_config.training.seq_len)
    phases = plan["phases"]
    assert [(p["first_step"], p["last_step"]) for p in phases] == [(1, 20), (21, 40), (41, 60)]
    assert all(p["may_end_earlier"] for p in phases)  # validation is on: transition_mode both
    for k, phase in enumerate(phases):
        trainable = resolved.trainable_params(k)
        ratio = ideal_phase_ratio(resolved.param_numels, trainable, attention_flops=attention)
        assert phase["flops_ratio"] == ratio
        assert phase["trainable_params"] == sum(resolved.param_numels[n] for n in trainable)
        assert phase["seconds"] == pytest.approx(20 * ratio * 2)
        # Frozen params are held too, grads only for trainable ones, all fp32.
        assert [m["params"] for m in phase["memory"]] == [6_163_712 * 4 // 2] * 2
        assert sum(m["grads"] for m in phase["memory"]) == 4 * phase["trainable_params"]
    assert plan["total_seconds"] == pytest.approx(sum(p["seconds"] for p in phases))
    assert plan["full"]["flops_ratio"] == 1.0 and plan["full"]["seconds"] == 60 * 2


def _benchmark_ratios() -> dict[int, tuple[float, float]]:
    """Phase -> (ideal, median measured ratio to stock) of BENCHMARKS.md's 1-D FSDP table."""
    text = (REPO / "BENCHMARKS.md").read_text()
    table = text.split("### Step time per phase: llama3 `debugmodel` (6 blocks), 2 ranks FSDP2")[1]
    table = table.split("###")[0]
    rows = re.findall(
        r"^\| phased, phase (\d) \| [^|]+ \| [^|]+ \| ([\d.]+) \[[\d.]+, [\d.]+\] \| ([\d.]+) \|",
        table, flags=re.MULTILINE,
    )
    return {int(k): (float(ideal), float(median)) for k, median, ideal in rows}


def test_plan_ratios_are_the_benchmarks_ideal_and_within_its_target_of_the_measured(capsys):
    # BENCHMARKS.md's phased job splits the 6 blocks as the default job does, at the same
    # batch and sequence length: its per-phase step-time ratios measure what plan predicts,
    # to within the benchmark's own target (measured / ideal <= 1.10), on either side.
    ratios = _benchmark_ratios()
    assert sorted(ratios) == [0, 1, 2]
    plan = plan_json(capsys, "--world-size", "2", "--job.config_file", DEFAULT_JOB)
    for k, phase in enumerate(plan["phases"]):
        ideal, median = ratios[k]
        assert round(phase["flops_ratio"], 3) == ideal
        assert abs(median / phase["flops_ratio"] - 1) <= 0.10, (k, median, ideal)


def test_llama3_8b_plan_for_8_gpus_runs_on_this_cpu_machine(capsys):
    assert main(["plan", "--world-size", "8", "--job.config_file", LLAMA3_8B]) == 0
    text = capsys.readouterr().out
    assert "llama3_phases 8B on 8 ranks (dp_shard 8)" in text
    assert re.search(r"^full fine-tuning\s+1-3000\s+8,030,261,248\s+AdamW\s+1\.000\s+3\.74\s+"
                     r"3\.74\s+7\.48\s+14\.96$", text, flags=re.MULTILINE), text
    plan = plan_json(capsys, "--world-size", "8", "--job.config_file", LLAMA3_8B)
    full = plan["full"]["memory"]
    assert [m["params"] for m in full] == [8_030_261_248 * 4 // 8] * 8
    # AdamW: exp_avg and exp_avg_sq in fp32 per local element, a 4-byte step per tensor.
    assert [m["optimizer_state"] for m in full] == [8_030_261_248 * 8 // 8 + 4 * 291] * 8
    phase0 = plan["phases"][0]
    assert phase0["trainable_params"] == 128_256 * 4096 + 4096 + 218_112_000
    assert phase0["memory"][0]["grads"] == phase0["trainable_params"] * 4 // 8


def test_a_mesh_that_does_not_fit_the_world_size_is_exit_2(capsys):
    code = main(["plan", "--world-size", "3", "--job.config_file", DEFAULT_JOB,
                 "--parallelism.tensor_parallel_degree", "2"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "do not fit 3 ranks" in err and "--world-size 3" in err
    assert "Traceback" not in err


def test_docs_plan_shows_what_plan_prints_for_the_8b_config(capsys):
    doc = (REPO / "docs" / "plan.md").read_text()
    section = doc[doc.index("# Planning a job before launching it"):]
    shown = re.search(r"```\n(.*?)```", section, re.S).group(1)
    assert main(["plan", "--world-size", "8", "--job.config_file", LLAMA3_8B]) == 0
    assert capsys.readouterr().out.startswith(shown)


def test_pipeline_stages_without_a_trainable_param_plan_no_grads_or_state(capsys):
    # The default job's first phases train the top blocks and head only: pipeline rank 0
    # (embedding and blocks 0-2) holds none of them. Real runs measure these bytes in
    # tests/trainer/test_pipeline.py.
    argv = ("--world-size", "2", "--job.config_file", DEFAULT_JOB,
            "--parallelism.pipeline_parallel_degree", "2",
            "--parallelism.data_parallel_shard_degree", "1")
    phases = plan_json(capsys, *argv)["phases"]
    first_stage, last_stage = zip(*(phase["memory"] for phase in phases))
    assert [m["grads"] for m in first_stage[:2]] == [0, 0]
    assert [m["optimizer_state"] for m in first_stage[:2]] == [0, 0]
    assert all(m["optimizer_state"] > 0 for m in (*last_stage, first_stage[2]))
    # Every rank holds its own stage's params, together the whole model once.
    params = [m["params"] for m in phases[0]["memory"]]
    assert all(p > 0 for p in params) and sum(params) == 6_163_712 * 4
    main(["plan", *argv])
    assert "Under pipeline parallelism a step lasts" in capsys.readouterr().out
