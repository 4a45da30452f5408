"""The run record: what each start of a job writes into its dump folder."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.schedule.conftest import make_job
from titan_phases.cli import main
from titan_phases.components import run_record
from titan_phases.components.run_record import startup_summary, write_run_record
from titan_phases.schedule import load_and_validate

SCHEDULE = {
    "0": {"params": ["output.weight", "norm.weight", r"layers\.5\..+"], "max_transition_step": 20},
    "1": {"params": [r"layers\.[34]\..+"], "lr": 5e-4, "max_transition_step": 40,
          "max_norm": 0.5},
    "2": {"params": [r"layers\.[0-2]\..+", "tok_embeddings.weight"], "lr": 2e-4,
          "new_optimizer": {"class_path": "torch.optim.AdamW",
                            "init_args": {"lr": 2e-4, "weight_decay": 0.01}},
          "new_lr_scheduler": {"class_path": "CosineAnnealingLR",
                               "init_args": {"T_max": 20, "eta_min": 1e-5},
                               "use_current_optimizer_pg_lrs": True}},
}
JOB = """
[job]
custom_config_module = "titan_phases.config.job_config"

[model]
name = "llama3_phases"
flavor = "debugmodel"
hf_assets_path = "{tokenizer}"

[training]
steps = 60
dataset = "titan_recipes"
"""


def _plans(resolved):
    return [resolved.plan(k) for k in range(resolved.num_phases)]


def test_written_schedule_validates_to_the_same_plans(tmp_path, capsys):
    job = make_job(SCHEDULE, steps=60, lr_scale=0.5, apply_lambdas_new_pgs=False)
    resolved = load_and_validate(job)
    start = write_run_record(tmp_path / "dump", resolved, job)
    assert start == tmp_path / "dump" / "run" / "start-1"
    assert sorted(p.name for p in start.iterdir()) == [
        "phases.txt", "schedule.toml", "versions.json"]
    schedule_file = start / "schedule.toml"
    header = schedule_file.read_text()
    assert "apply_lambdas_new_pgs = false" in header and "lr_scale = 0.5" in header

    rerun = make_job(steps=60, lr_scale=0.5, apply_lambdas_new_pgs=False,
                     schedule_file=str(schedule_file))
    again = load_and_validate(rerun)
    assert again.phase_params == resolved.phase_params
    assert _plans(again) == _plans(resolved)

    # `titan-phases validate` accepts it, and phases.txt is what `show --params` prints.
    job_file = tmp_path / "job.toml"
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")  # all validate looks for
    job_file.write_text(JOB.format(tokenizer=tokenizer))
    flags = ["--job.config_file", str(job_file), "--phases.schedule_file", str(schedule_file)]
    assert main(["validate", *flags]) == 0
    assert "OK: 3 phase(s), explicit schedule" in capsys.readouterr().out
    assert main(["show", "--params", *flags, "--phases.lr_scale", "0.5"]) == 0
    shown = capsys.readouterr().out
    assert (start / "phases.txt").read_text().startswith(shown)


def test_generated_schedule_is_written_with_its_reinits(tmp_path):
    reinit = {"class_path": "SGD", "init_args": {"lr": 1e-3, "momentum": 0.9}}
    job = make_job(steps=80, blocks_per_phase=2, base_max_lr=1e-5, max_depth=2,
                   reinit_optimizer=reinit)
    resolved = load_and_validate(job)
    start = write_run_record(tmp_path, resolved, job)
    text = (start / "schedule.toml").read_text()
    assert "without reinit_optimizer / reinit_lr_scheduler" in text
    assert "beyond max_depth, not run" in text
    rerun = make_job(steps=80, max_depth=2, schedule_file=str(start / "schedule.toml"))
    again = load_and_validate(rerun)
    assert again.phase_params == resolved.phase_params
    assert _plans(again) == _plans(resolved)
    assert again.plan(1).lr == 1e-5


def test_a_resumed_start_adds_a_record_naming_its_checkpoint(tmp_path):
    job = make_job(SCHEDULE, steps=60)
    resolved = load_and_validate(job)
    first = write_run_record(tmp_path, resolved, job)
    before = {p.name: p.read_text() for p in first.iterdir()}
    second = write_run_record(tmp_path, resolved, job,
                              resumed_from=str(tmp_path / "checkpoint" / "step-20"))
    assert second.name == "start-2"
    assert {p.name: p.read_text() for p in first.iterdir()} == before
    starts = [json.loads(line) for line in
              (tmp_path / "run" / "starts.jsonl").read_text().splitlines()]
    assert [(s["start"], s["dir"], s["resumed_from"]) for s in starts] == [
        (1, "start-1", None), (2, "start-2", str(tmp_path / "checkpoint" / "step-20"))]
    assert starts[1]["settings"]["apply_lambdas_new_pgs"] is True
    assert starts[1]["phases"] == 3


def test_versions(tmp_path):
    job = make_job(SCHEDULE, steps=60)
    start = write_run_record(tmp_path, load_and_validate(job), job)
    versions = json.loads((start / "versions.json").read_text())
    assert versions["torch"] == torch.__version__
    assert versions["torchtitan"] == "0.2.2"
    assert versions["titan_phases"]["version"]
    git = versions["titan_phases"]["git"]
    assert git is None or re.fullmatch(r"[0-9a-f]{40}", git["commit"])


def test_only_rank0_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(run_record, "is_rank0", lambda: False)
    job = make_job(SCHEDULE, steps=60)
    assert write_run_record(tmp_path, load_and_validate(job), job) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("validation", [False, True])
def test_startup_summary_says_what_each_phase_trains_and_how(validation):
    job = make_job(SCHEDULE, steps=60, validation=validation)
    summary = startup_summary(load_and_validate(job), job)
    lines = summary.splitlines()
    assert lines[0].startswith("Phase schedule: 3 phase(s), explicit")
    assert ("transitions: both" if validation else "transitions: step") in lines[0]
    assert lines[1].startswith("  phase 0: trains 11 tensor(s)")
    assert lines[2].startswith("  phase 1: thaws 18 tensor(s)")
    assert "output.weight, norm.weight" in lines[1] and "ends: after step 20" in lines[1]
    assert "lr 0.0005" in lines[2] and "AdamW [optimizer]" in lines[2]
    assert "new optimizer AdamW(lr=0.0002, weight_decay=0.01)" in lines[3]
    assert "new scheduler CosineAnnealingLR(T_max=20, eta_min=1e-05) from current lrs" in lines[3]
    assert "ends: end of training (step 60)" in lines[3]
    assert len(lines) == 4  # every parameter is thawed: no "never thawed" line
