"""The reference run of the tiny job, shared by every test that compares against it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.jobs import JobResult, run_job


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, embedded_assets: Path) -> JobResult:
    """The tiny job (``tiny_job.toml``) run once from start to end, never stopped."""
    result = run_job(tmp_path_factory.mktemp("reference") / "run")
    assert result.returncode == 0, result.failure()
    return result
