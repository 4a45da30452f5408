"""run_train.sh's set-up step: which recipe produces a missing initial checkpoint."""

from pathlib import Path

import pytest

from titan_phases.config.job_config import PretrainedStage
from titan_phases.prepare import pending_recipe


def test_recipe_runs_only_when_the_initial_checkpoint_is_missing(tmp_path: Path):
    recipe = tmp_path / "pretrain.toml"
    recipe.write_text("")
    stage = PretrainedStage(recipe=str(recipe))
    assert pending_recipe(str(tmp_path / "missing"), stage) == str(recipe)
    assert pending_recipe(str(tmp_path), stage) is None
    assert pending_recipe(None, stage) is None
    assert pending_recipe(str(tmp_path / "missing"), PretrainedStage()) is None


def test_missing_recipe_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="initial_load_path"):
        pending_recipe(str(tmp_path / "missing"), PretrainedStage(recipe="nope.toml"))


def test_prepare_prints_the_recipe_of_the_default_job(embedded_assets: Path, tmp_path, capsys):
    from titan_phases.prepare import main

    repo = Path(__file__).resolve().parents[1]
    missing = tmp_path / "no-checkpoint-here"
    code = main(["--job.config_file", str(repo / "train_configs/debug_model.toml"),
                 "--checkpoint.initial_load_path", str(missing)])
    assert code == 0
    assert capsys.readouterr().out.strip() == "./train_configs/pretrain_debug_model.toml"
    bad = tmp_path / "bad.toml"
    bad.write_text("[trainig]\nsteps = 1\n")
    assert main(["--job.config_file", str(bad)]) == 2


def test_run_train_reports_bad_input_once_with_exit_2_before_torchrun_starts(
    embedded_assets: Path, tmp_path: Path
):
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    job = tmp_path / "job.toml"
    job.write_text(
        (repo / "tests/trainer/tiny_job.toml").read_text().replace("lr = 2e-3", "lr = -2e-3")
    )
    env = {**os.environ, "CONFIG_FILE": str(job)}
    result = subprocess.run(
        ["./run_train.sh", "--job.dump_folder", str(tmp_path / "run")],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("invalid job or schedule, nothing was run") == 1
    assert "phase 1: lr" in result.stderr
    assert "torch.distributed" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
