"""run_train.sh's set-up step: which recipe produces a missing initial checkpoint."""

import sys
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
           "--model.hf_assets_path", str(embedded_assets / "tokenizer"),
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


# --- the input check every rank, run_train.sh and validate run -------------------------------

REPO = Path(__file__).resolve().parents[1]
DEBUG_JOB = REPO / "train_configs" / "debug_model.toml"
PRETRAIN_JOB = REPO / "train_configs" / "pretrain_debug_model.toml"


@pytest.fixture
def tokenizer(tmp_path: Path) -> Path:
    """A tokenizer folder as far as the input check looks (it holds a tokenizer.json)."""
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    return folder


def _check(*args: str):
    from titan_phases.prepare import check_input
    from titan_phases.train_spec import register_train_specs

    register_train_specs()
    return check_input(list(args))


def _refused(*args: str) -> str:
    job_config, resolved, problem = _check(*args)
    assert problem is not None and job_config is None and resolved is None
    assert "Traceback" not in problem
    return problem


def test_phases_settings_with_a_model_without_phases_are_refused(tokenizer: Path):
    job = ["--job.config_file", str(DEBUG_JOB), "--model.hf_assets_path", str(tokenizer)]
    problem = _refused(*job, "--model.name", "llama3")
    assert problem.startswith("titan_phases: invalid job config, nothing was run")
    assert (f"{DEBUG_JOB}: model.name: 'llama3' is not a phased model: it would run "
            "torchtitan's stock Trainer and train every parameter, ignoring the [phases] "
            "settings (phases.lr_scale, phases.schedule)") in problem
    assert "use model.name = 'llama3_phases' (the same model, phased)" in problem
    # One --phases flag is a [phases] setting too.
    problem = _refused("--job.config_file", str(PRETRAIN_JOB), "--model.hf_assets_path",
                       str(tokenizer), "--phases.lr_scale", "0.5")
    assert "ignoring the [phases] settings (phases.lr_scale)" in problem
    # The pretrain recipe: a stock model without [phases] settings runs as stock torchtitan.
    job_config, resolved, problem = _check("--job.config_file", str(PRETRAIN_JOB),
                                           "--model.hf_assets_path", str(tokenizer))
    assert problem is None and resolved is None and job_config.model.name == "llama3"


def test_a_model_without_a_phased_spec_is_told_how_to_make_one(tmp_path: Path, tokenizer: Path,
                                                               monkeypatch):
    (tmp_path / "my_spec.py").write_text(
        "from torchtitan.protocols.train_spec import get_train_spec, register_train_spec\n"
        "register_train_spec('my_llama', get_train_spec('llama3'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    job = tmp_path / "job.toml"
    job.write_text(
        '[job]\ncustom_config_module = "titan_phases.config.job_config"\n'
        '[experimental]\ncustom_import = "my_spec"\n'
        f'[model]\nname = "my_llama"\nflavor = "debugmodel"\nhf_assets_path = "{tokenizer}"\n'
        '[training]\ndataset = "titan_recipes"\n[phases]\n')
    problem = _refused("--job.config_file", str(job))
    assert "'my_llama' is not a phased model" in problem
    assert "settings (phases)" in problem  # an empty [phases] table asks for phases too
    assert ("register_train_spec('my_llama_phases', phased(get_train_spec('my_llama'))) with "
            "titan_phases.train_spec.phased") in problem


def test_a_job_without_custom_config_module_is_refused_where_the_ranks_need_it(
    tmp_path: Path, tokenizer: Path
):
    # The ranks' own parse (torchtitan's) would stop at {'phases', 'pretrained'}.
    job = tmp_path / "job.toml"
    job.write_text("".join(line for line in DEBUG_JOB.read_text().splitlines(keepends=True)
                           if not line.startswith("custom_config_module")))
    problem = _refused("--job.config_file", str(job), "--model.hf_assets_path", str(tokenizer))
    assert (f"{job}: job.custom_config_module: not set: this check adds it, but the training "
            "ranks parse the job as torchtitan does, without it, and stop on its [phases] and "
            "[pretrained] keys (phases.lr_scale, phases.schedule, pretrained.recipe)") in problem
    assert ("add custom_config_module = 'titan_phases.config.job_config' under [job] (or pass "
            "--job.custom_config_module titan_phases.config.job_config)") in problem
    # A phased model without any [phases] key needs the section as much.
    job.write_text(f'[model]\nname = "llama3_phases"\nflavor = "debugmodel"\n'
                   f'hf_assets_path = "{tokenizer}"\n[training]\ndataset = "titan_recipes"\n')
    problem = _refused("--job.config_file", str(job))
    assert ("without it, and model.name = 'llama3_phases', a phased model, finds no [phases]"
            in problem)
    job_config, _, problem = _check("--job.config_file", str(job), "--job.custom_config_module",
                                    "titan_phases.config.job_config")
    assert problem is None and job_config is not None
    # A module of one's own without the [phases] section.
    (tmp_path / "plain_config.py").write_text(
        "from dataclasses import dataclass\n@dataclass\nclass JobConfig:\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        problem = _refused("--job.config_file", str(job), "--job.custom_config_module",
                           "plain_config")
    finally:
        sys.path.remove(str(tmp_path))
    assert ("job.custom_config_module: 'plain_config' defines no [phases] section, which "
            "model.name = 'llama3_phases' (a phased model) needs") in problem


def test_a_tokenizer_or_dataset_that_is_not_there_is_refused(tmp_path: Path, tokenizer: Path,
                                                             monkeypatch):
    from titan_phases.data import availability

    job = ["--job.config_file", str(DEBUG_JOB)]
    missing = tmp_path / "Llama-3.1-8B"
    problem = _refused(*job, "--model.hf_assets_path", str(missing),
                       "--training.dataset_path", str(tmp_path / "recipes.jsonl"),
                       "--validation.dataset", "c4_tset")
    assert f"model.hf_assets_path: {str(missing)!r} does not exist" in problem
    assert f"training.dataset_path: {str(tmp_path / 'recipes.jsonl')!r} does not exist" in problem
    assert "validation.dataset: 'c4_tset' is not a registered dataset -> use one of c4, c4_test," \
        in problem
    assert "(3 problems)" in problem
    (missing / "original").mkdir(parents=True)
    problem = _refused(*job, "--model.hf_assets_path", str(missing))
    assert "holds no tokenizer.json, vocab.json or vocab.txt" in problem
    # torchtitan's own datasets: c4_test is a folder of torchtitan's repository, c4 on the Hub.
    problem = _refused(*job, "--model.hf_assets_path", str(tokenizer),
                       "--training.dataset", "c4_test")
    assert "training.dataset: 'c4_test' reads 'tests/assets/c4_test', which does not exist" \
        in problem
    monkeypatch.setattr(availability, "_resolves", lambda host: False)
    monkeypatch.setattr(availability, "_hub_offline", lambda: False)
    monkeypatch.setattr(availability, "_in_hub_cache", lambda repo_id: False)
    problem = _refused(*job, "--model.hf_assets_path", str(tokenizer),
                       "--validation.dataset", "c4_validation")
    assert ("validation.dataset: 'c4_validation' reads 'allenai/c4' from the Hugging Face Hub, "
            "but huggingface.co cannot be reached from this machine") in problem
    monkeypatch.setattr(availability, "_in_hub_cache", lambda repo_id: repo_id == "allenai/c4")
    assert _check(*job, "--model.hf_assets_path", str(tokenizer),
                  "--validation.dataset", "c4_validation")[2] is None


def test_the_embedded_assets_are_not_refused_before_they_are_built(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TITAN_PHASES_CACHE", str(tmp_path / "cache"))  # nothing built there
    job_config, _, problem = _check("--job.config_file", str(DEBUG_JOB),
                                    "--model.hf_assets_path", str(tmp_path / "cache/tokenizer"))
    assert problem is None and job_config.training.dataset == "titan_recipes"


def test_model_converters_that_do_not_exist_or_cannot_run_here_are_refused(tokenizer: Path):
    import torch

    job = ["--job.config_file", str(DEBUG_JOB), "--model.hf_assets_path", str(tokenizer)]
    problem = _refused(*job, "--model.converters", "float8")
    assert ("model.converters: 'float8' is not a registered model converter -> did you mean "
            "'quantize.linear.float8'?") in problem
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9):
        return  # float8 may run here
    problem = _refused(*job, "--model.converters", "quantize.linear.float8")
    machine = "no CUDA GPU" if not torch.cuda.is_available() else "SM"
    assert f"'quantize.linear.float8' cannot run on this machine ({machine}" in problem
    assert "float8 is only supported on SM89 or later" in problem
    assert "(float8 needs an NVIDIA GPU with SM89 or newer" in problem


def test_initial_weights_that_would_not_be_loaded_are_refused_unless_cleared(tokenizer: Path):
    job = ["--job.config_file", str(DEBUG_JOB), "--model.hf_assets_path", str(tokenizer),
           "--checkpoint.no-enable"]
    problem = _refused(*job)
    assert ("checkpoint.initial_load_path: './.cache/titan_phases/pretrain_debug_model/"
            "checkpoint/step-100' would not be loaded: checkpointing is off") in problem
    assert "train from random weights" in problem
    assert "clear the path (--checkpoint.initial_load_path '')" in problem
    job_config, resolved, problem = _check(*job, "--checkpoint.initial_load_path", "")
    assert problem is None and resolved is not None and not job_config.checkpoint.initial_load_path


def test_a_schedule_file_on_the_command_line_replaces_the_inline_schedule(tmp_path: Path,
                                                                           tokenizer: Path):
    schedule = tmp_path / "schedule.toml"
    schedule.write_text("[0]\nparams = ['output.weight', 'norm.weight']\n")
    job = ["--job.config_file", str(DEBUG_JOB), "--model.hf_assets_path", str(tokenizer)]
    job_config, resolved, problem = _check(*job, "--phases.schedule_file", str(schedule))
    assert problem is None
    assert resolved.source == str(schedule) and resolved.num_phases == 1
    assert job_config.phases.schedule == {}
    assert str(resolved.warnings[0]) == (
        f"{DEBUG_JOB}: phases.schedule: the inline [phases.schedule] is replaced by "
        f"--phases.schedule_file {str(schedule)!r}, given on the command line")
    # Both on the command line, or both in the TOML: which one is meant is not clear.
    problem = _refused(*job, "--phases.schedule_file", str(schedule),
                       "--phases.schedule.1.lr", "1e-4")
    assert "both phases.schedule_file and an inline [phases.schedule] are set" in problem
    both = tmp_path / "both.toml"
    both.write_text(DEBUG_JOB.read_text().replace(
        "[phases]\n", f"[phases]\nschedule_file = '{schedule}'\n"))
    problem = _refused("--job.config_file", str(both), "--model.hf_assets_path", str(tokenizer),
                       "--phases.schedule_file", str(schedule))
    assert "both phases.schedule_file and an inline [phases.schedule] are set" in problem


def test_a_switch_given_a_value_says_how_to_write_it(tokenizer: Path):
    problem = _refused("--job.config_file", str(DEBUG_JOB), "--checkpoint.enable", "false")
    assert problem.startswith("titan_phases: invalid command line, nothing was run")
    assert "Unrecognized options: false" in problem
    assert ("--checkpoint.enable is a switch and takes no value (got 'false'): write "
            "--checkpoint.enable to turn it on, --checkpoint.no-enable to turn it off") in problem
    problem = _refused("--job.config_file", str(DEBUG_JOB), "--phases.cycle.enable=true")
    assert "--phases.cycle.enable is a switch and takes no value (got 'true')" in problem
    assert "--phases.cycle.no-enable to turn it off" in problem


def test_job_config_problems_show_regexes_as_written(tmp_path: Path, tokenizer: Path):
    job = tmp_path / "job.toml"
    job.write_text(DEBUG_JOB.read_text().replace(
        "[phases]\n", "[phases.cycle]\nalways_train = 'layers\\.0\\..+'\n\n[phases]\n"))
    problem = _refused("--job.config_file", str(job), "--model.hf_assets_path", str(tokenizer))
    assert r"phases.cycle.always_train: expected a list of strings, got 'layers\.0\..+'" \
        in problem
    assert "\\\\" not in problem


def test_prepare_exits_2_on_what_the_ranks_would_stop_on(tokenizer: Path, capsys):
    from titan_phases.prepare import main

    code = main(["--job.config_file", str(DEBUG_JOB), "--model.hf_assets_path", str(tokenizer),
                 "--model.name", "llama3"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "model.name: 'llama3' is not a phased model" in captured.err
