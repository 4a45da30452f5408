"""run_train.sh's set-up step: which recipe produces a missing initial checkpoint."""

from pathlib import Path

import pytest

from titan_phases.pretrained import PretrainedStage, pending_recipe


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
