"""run_train.sh's set-up step: which recipe produces a missing initial checkpoint."""

from pathlib import Path

import pytest

from titan_phases.config.job_config import PretrainedStage
from titan_phases.prepare import pending_recipe, RecipeError


def _recipe(tmp_path: Path, steps: int = 7) -> tuple[Path, Path]:
    """A recipe job config and the checkpoint it writes."""
    recipe = tmp_path / "pretrain.toml"
    recipe.write_text(
        f'[job]\ndump_folder = "{tmp_path / "pre"}"\n[training]\nsteps = {steps}\n'
        '[checkpoint]\nenable = true\nfolder = "ckpt"\n'
    )
    return recipe, tmp_path / "pre" / "ckpt" / f"step-{steps}"


def test_recipe_runs_only_when_it_writes_the_missing_initial_checkpoint(tmp_path: Path):
    recipe, output = _recipe(tmp_path)
    stage = PretrainedStage(recipe=str(recipe))
    assert pending_recipe(str(output), stage) == str(recipe)
    assert pending_recipe(str(tmp_path), stage) is None  # exists
    assert pending_recipe(None, stage) is None
    assert pending_recipe(str(output), PretrainedStage()) is None
    typo = tmp_path / "pre" / "ckpt" / "step-70"
    with pytest.raises(RecipeError) as refused:
        pending_recipe(str(typo), stage)
    assert f"initial_load_path = {str(typo)!r} does not exist" in str(refused.value)
    assert f"writes {str(output)!r}, not that path, so it is not run" in str(refused.value)


def test_missing_recipe_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(RecipeError, match="initial_load_path"):
        pending_recipe(str(tmp_path / "missing"), PretrainedStage(recipe="nope.toml"))


def test_prepare_prints_the_recipe_only_for_the_path_it_writes(
    embedded_assets: Path, tmp_path, capsys
):
    from titan_phases.prepare import main

    repo = Path(__file__).resolve().parents[1]
    recipe, output = _recipe(tmp_path)
    job = ["--job.config_file", str(repo / "train_configs/debug_model.toml"),
           "--job.dump_folder", str(tmp_path / "run"), "--pretrained.recipe", str(recipe)]
    assert main([*job, "--checkpoint.initial_load_path", str(output)]) == 0
    assert capsys.readouterr().out.strip() == str(recipe)

    typo = str(tmp_path / "no-checkpoint-here")
    assert main([*job, "--checkpoint.initial_load_path", typo]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and repr(typo) in captured.err

    no_recipe = [*job, "--pretrained.recipe", "", "--checkpoint.initial_load_path", typo]
    assert main(no_recipe) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"initial_load_path = {typo!r} does not exist" in captured.err
    assert not (tmp_path / "run").exists()

    bad = tmp_path / "bad.toml"
    bad.write_text("[trainig]\nsteps = 1\n")
    assert main(["--job.config_file", str(bad)]) == 2
