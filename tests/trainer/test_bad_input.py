"""Bad input stops every rank before any training step, with the full list of problems; a
command-line error is found by the same input check, tested here in-process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.trainer.jobs import run_job, TINY_JOB


def _with_slow_rank1(job_toml: str) -> str:
    """``job_toml`` whose rank 1 finishes its input check 3 s after rank 0 (rank1_skew.py)."""
    slow = job_toml.replace('"tests.trainer.tiny_spec"', '"tests.trainer.rank1_skew"')
    assert slow != job_toml
    return slow


@pytest.mark.e2e
@pytest.mark.usefixtures("embedded_assets")
def test_invalid_input_is_reported_by_every_rank_at_once_before_anything_runs(tmp_path: Path):
    # Schedule problems and an unknown section of the job TOML, all in one report.
    job = tmp_path / "job.toml"
    job.write_text(
        _with_slow_rank1(TINY_JOB.read_text())
        .replace("params = ['layers\\.2\\..+']", "params = ['layer\\.2\\..+']")
        .replace("lr = 2e-3", "lr = -2e-3\nmax_tranistion_step = 3")
        + "\n[trainig]\nsteps = 3\n"
    )
    started = time.monotonic()
    assert job.read_text().count("layer\\.2") == 1 and "lr = -2e-3" in job.read_text()
    result = run_job(tmp_path / "run", config=job)
    assert result.returncode != 0
    assert time.monotonic() - started < 120
    assert result.output.count("invalid job or schedule, nothing was run") == 2  # both ranks
    for expected in (
        "phase 1: params", "phase 1: lr", "phase 1: max_tranistion_step", "trainig",
        "4 problems",
    ):
        assert expected in result.output, expected
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert "Training starts" not in result.output


def test_unknown_command_line_flag_is_refused_by_the_input_check_every_rank_runs():
    # What each rank runs first (the invalid input above shows every rank reporting it).
    from titan_phases.prepare import check_input
    from titan_phases.train_spec import register_train_specs

    register_train_specs()
    job_config, _, problem = check_input(
        ["--job.config_file", str(TINY_JOB), "--trainig.steps", "3"]
    )
    assert job_config is None
    assert problem.startswith("titan_phases: invalid command line, nothing was run")
    assert "--training.steps" in problem  # tyro's suggestion


def test_a_job_torchtitans_own_parsing_would_stop_on_is_refused_by_the_ranks_check(
    tmp_path: Path,
):
    # Each rank hands its arguments to torchtitan.train.main, whose ConfigManager parses them
    # again without the custom config module that titan_phases' own parsing adds.
    from torchtitan.config import ConfigManager

    from titan_phases.prepare import check_input
    from titan_phases.train_spec import register_train_specs

    job = tmp_path / "job.toml"
    job.write_text("".join(line for line in TINY_JOB.read_text().splitlines(keepends=True)
                           if not line.startswith("custom_config_module")))
    argv = ["--job.config_file", str(job)]
    with pytest.raises(ValueError, match="Invalid field names.*'phases'"):
        ConfigManager().parse_args(argv)
    register_train_specs()
    job_config, _, problem = check_input(argv)
    assert job_config is None
    assert problem.startswith("titan_phases: invalid job config, nothing was run")
    assert f"{job}: job.custom_config_module: not set" in problem
    assert "stop on its [phases] and [pretrained] keys (phases.schedule)" in problem


@pytest.mark.e2e
@pytest.mark.usefixtures("embedded_assets")
def test_ranks_that_find_different_problems_all_report_every_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Rank 0's input is fine and it would go on to train; rank 1 cannot import the model code.
    monkeypatch.setenv("TITAN_PHASES_TEST_RANK1_IMPORT_ERROR", "1")
    job = tmp_path / "job.toml"
    job.write_text(_with_slow_rank1(TINY_JOB.read_text()))
    result = run_job(tmp_path / "run", config=job)
    assert result.returncode != 0
    assert result.output.count("ranks found different problems") == 2
    assert result.output.count("rank 0: no problem") == 2
    assert result.output.count("rank 1: titan_phases: invalid job config") == 2
    assert "rank 1 cannot import its model code" in result.output
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert "Training starts" not in result.output
