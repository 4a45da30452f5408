"""Schedule files and tables -> schema values."""

from __future__ import annotations

import os

from titan_phases.schedule import load_and_validate, parse_schedule, read_schedule_file
from titan_phases.schedule.errors import Problems
from titan_phases.schedule.loading import resolve_schedule_path
from titan_phases.schedule.schema import LRSchedulerInit, OptimizerInit, Phase

from .conftest import make_job

SCHEDULE = r"""
[0]
params = ["output.weight", "norm.weight"]
max_transition_step = 100

[1]
params = ['layers\.5\..+']
lr = 1.0e-4
max_norm = 0.5
max_transition_step = 200

[1.new_optimizer]
class_path = "SGD"
init_args = { lr = 1.0e-3, momentum = 0.9 }

[1.new_lr_scheduler]
class_path = "StepLR"
init_args = { step_size = 10, gamma = 0.5 }
init_pg_lrs = [1.0e-5, 1.0e-4]

[2]
params = ['layers\.[0-4]\..+', "tok_embeddings.weight"]
"""


def test_parse_full_schedule(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SCHEDULE)
    problems = Problems()
    schedule = parse_schedule(read_schedule_file(path), str(path), problems)
    assert problems.errors == []
    assert schedule.phases[0] == Phase(0, ("output.weight", "norm.weight"), 100)
    assert schedule.phases[1] == Phase(
        index=1, params=(r"layers\.5\..+",), max_transition_step=200, lr=1e-4,
        new_optimizer=OptimizerInit("torch.optim.SGD", {"lr": 1e-3, "momentum": 0.9}),
        new_lr_scheduler=LRSchedulerInit("torch.optim.lr_scheduler.StepLR",
                                         {"step_size": 10, "gamma": 0.5}, (1e-5, 1e-4), False),
        max_norm=0.5,
    )
    assert schedule.phases[2].max_transition_step is None


def test_to_raw_round_trips(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SCHEDULE)
    problems = Problems()
    schedule = parse_schedule(read_schedule_file(path), "s", problems)
    assert parse_schedule(schedule.to_raw(), "s", problems) == schedule
    assert problems.errors == []


def test_relative_schedule_file_next_to_job_config_first(tmp_path, monkeypatch):
    job_dir, cwd = tmp_path / "jobs", tmp_path / "cwd"
    job_dir.mkdir(), cwd.mkdir()
    (job_dir / "s.toml").write_text("[0]\n")
    (cwd / "s.toml").write_text("[0]\n")
    (cwd / "only_here.toml").write_text("[0]\n")
    monkeypatch.chdir(cwd)
    config = str(job_dir / "job.toml")
    assert resolve_schedule_path("s.toml", config) == job_dir / "s.toml"
    assert resolve_schedule_path("only_here.toml", config) == cwd / "only_here.toml"
    assert resolve_schedule_path("s.toml", None) == cwd / "s.toml"
    assert resolve_schedule_path(str(cwd / "s.toml"), config) == cwd / "s.toml"


def test_relative_schedule_file_used_by_load_and_validate(tmp_path, monkeypatch):
    (tmp_path / "s.toml").write_text(SCHEDULE)
    monkeypatch.chdir(os.path.dirname(os.path.abspath(__file__)))
    job = make_job(schedule_file="s.toml")
    job.job.config_file = str(tmp_path / "job.toml")
    resolved = load_and_validate(job)
    assert resolved.source == str(tmp_path / "s.toml")
    assert resolved.num_phases == 3 and not resolved.generated


def test_a_schedule_file_that_is_a_directory_or_unreadable_is_a_problem_not_a_traceback(tmp_path):
    import pytest

    from titan_phases.schedule import ScheduleError

    folder = tmp_path / "schedule.toml"
    folder.mkdir()
    with pytest.raises(ScheduleError, match="is a directory, not a file"):
        read_schedule_file(folder)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00[0]")
    with pytest.raises(ScheduleError, match="not UTF-8 text"):
        read_schedule_file(binary)
    unreadable = tmp_path / "secret.toml"
    unreadable.write_text("[0]\nparams = ['.*']\n")
    unreadable.chmod(0)
    if os.access(unreadable, os.R_OK):  # root reads anything: the check cannot apply
        return
    with pytest.raises(ScheduleError, match="cannot be read"):
        read_schedule_file(unreadable)
