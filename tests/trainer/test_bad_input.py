"""Bad input stops every rank before any training step, with the full list of problems."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.trainer.jobs import run_job, TINY_JOB

pytestmark = pytest.mark.usefixtures("embedded_assets")


def test_invalid_schedule_is_reported_by_every_rank_before_anything_runs(tmp_path: Path):
    job = tmp_path / "job.toml"
    job.write_text(
        TINY_JOB.read_text()
        .replace("params = ['layers\\.2\\..+']", "params = ['layer\\.2\\..+']")
        .replace("lr = 2e-3", "lr = -2e-3\nmax_tranistion_step = 3")
    )
    started = time.monotonic()
    assert job.read_text().count("layer\\.2") == 1 and "lr = -2e-3" in job.read_text()
    result = run_job(tmp_path / "run", config=job)
    assert result.returncode != 0
    assert time.monotonic() - started < 120
    assert result.output.count("invalid job or schedule, nothing was run") == 2  # both ranks
    for expected in (
        "phase 1: params", "phase 1: lr", "phase 1: max_tranistion_step", "3 problems",
    ):
        assert expected in result.output, expected
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert "Training starts" not in result.output


def test_unknown_config_section_is_a_clear_error(tmp_path: Path):
    job = tmp_path / "job.toml"
    job.write_text(TINY_JOB.read_text() + "\n[trainig]\nsteps = 3\n")
    result = run_job(tmp_path / "run", config=job)
    assert result.returncode != 0
    assert result.output.count("invalid job config, nothing was run") == 2
    assert "trainig" in result.output
