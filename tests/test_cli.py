"""The titan-phases CLI, run in-process through main(argv)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from titan_phases.cli import main

REPO = Path(__file__).resolve().parents[1]
JOB = """
[job]
custom_config_module = "titan_phases.config.job_config"

[model]
name = "llama3_phases"
flavor = "debugmodel"
hf_assets_path = "{tokenizer}"

[training]
steps = 400
dataset = "titan_recipes"
"""

FTS = """
0:
  params: [model.output.weight, model.norm.weight]
  max_transition_epoch: 1
1:
  params: ['model.layers.[3-5].*']
  max_transition_epoch: 3
  new_lr_scheduler:
    lr_scheduler_init:
      class_path: torch.optim.lr_scheduler.StepLR
      init_args: {step_size: 1, gamma: 0.7}
    init_pg_lrs: [2.0e-06]
2:
  params: ['model.layers.[0-2].*', model.tok_embeddings.weight]
"""


def tokenizer_folder(folder: Path) -> Path:
    """A folder that holds a tokenizer as far as the input check looks: its tokenizer.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.fixture
def job(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(JOB.format(tokenizer=tokenizer_folder(tmp_path / "tokenizer")))
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_generated_schedule(capsys, job):
    code, out, _ = run(capsys, "validate", "--job.config_file", job)
    assert code == 0
    assert out.splitlines()[0].split() == ["phase", "tensors", "elements", "%", "model", "lr",
                                           "optimizer", "scheduler", "transition"]
    assert "OK: 8 phase(s), generated schedule" in out


def test_validate_reports_all_errors_with_exit_2(capsys, job, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[0]\nparams = ['nope']\nlr = 1.0\n")
    code, out, err = run(capsys, "validate", "--job.config_file", job,
                         "--phases.schedule_file", str(bad))
    assert code == 2 and out == ""
    assert "phase 0: lr:" in err and "phase 0: params[0]:" in err


def test_generate_validate_show_round_trip(capsys, job, tmp_path):
    out_file = tmp_path / "gen" / "schedule.toml"
    code, _, err = run(capsys, "generate", "--job.config_file", job, "--out", str(out_file),
                       "--phases.blocks_per_phase", "2")
    assert code == 0 and "wrote" in err
    written = tomllib.loads(out_file.read_text())
    assert list(written) == ["0", "1", "2", "3", "4"]
    assert "# phase 1: 18 tensors" in out_file.read_text()

    code, out, _ = run(capsys, "validate", "--job.config_file", job,
                       "--phases.schedule_file", str(out_file))
    assert code == 0 and "OK: 5 phase(s), explicit schedule" in out

    code, out, _ = run(capsys, "show", "--json", "--job.config_file", job,
                       "--phases.schedule_file", str(out_file))
    rows = json.loads(out)["phases"]
    assert [r["tensors"] for r in rows] == [2, 18, 18, 18, 1]
    assert sum(r["% model"] for r in rows) == pytest.approx(100, abs=0.1)
    assert rows[1]["transition"] == "after step 160"


def test_generate_refuses_to_overwrite(capsys, job, tmp_path):
    out_file = tmp_path / "s.toml"
    out_file.write_text("keep me")
    code, _, err = run(capsys, "generate", "--job.config_file", job, "--out", str(out_file))
    assert code == 2 and "--force" in err and out_file.read_text() == "keep me"
    assert run(capsys, "generate", "--job.config_file", job, "--out", str(out_file),
               "--force")[0] == 0


def test_show_params_and_lr_scale(capsys, job):
    code, out, _ = run(capsys, "show", "--params", "--job.config_file", job,
                       "--phases.lr_scale", "0.5", "--phases.max_depth", "1")
    assert code == 0
    assert "    layers.5.attention.wq.weight" in out
    assert "0.0004" in out  # 8e-4 * 0.5
    lines = out.splitlines()
    frozen_row = next(i for i, line in enumerate(lines) if line.startswith("frozen"))
    assert "    tok_embeddings.weight" in lines[frozen_row:]
    assert len(lines) - frozen_row - 1 == 57 - 2 - 9  # never-thawed params under "frozen"


def test_import_fts_then_validate_against_job(capsys, job, tmp_path):
    fts = tmp_path / "fts.yaml"
    fts.write_text(FTS)
    out_file = tmp_path / "schedule.toml"
    code, out, err = run(capsys, "import-fts", str(fts), "--out", str(out_file),
                         "--steps-per-epoch", "100", "--strip-prefix",
                         "--job.config_file", job)
    assert code == 0, err
    assert "OK: 3 phase(s), explicit schedule" in out
    assert "note: phase 1: StepLR.step_size 1 -> 100" in err
    converted = tomllib.loads(out_file.read_text())
    assert converted["1"]["new_lr_scheduler"]["init_pg_lrs"] == [2e-6, 1e-5]
    assert converted["1"]["max_transition_step"] == 300


# An FTS schedule for a Hugging Face Llama held by a LightningModule as ``self.model``.
FTS_HF = """
0:
  params: [model.lm_head.weight, model.model.norm.weight, 'model.model.layers.5.*']
  max_transition_epoch: 1
1:
  params: ['model.model.layers.[34].(self_attn|mlp).*', 'model.model.layers.[34].*layernorm.*']
  max_transition_epoch: 3
  lr: 1.0e-5
2:
  params: ['model.model.layers.[0-2].*', model.model.embed_tokens.weight]
  lr: 1.0e-6
"""


def test_import_fts_translates_hf_names_through_the_state_dict_adapter(capsys, job, tmp_path):
    fts = tmp_path / "fts.yaml"
    fts.write_text(FTS_HF)
    out_file = tmp_path / "schedule.toml"
    code, out, err = run(capsys, "import-fts", str(fts), "--out", str(out_file),
                         "--steps-per-epoch", "100", "--strip-prefix", "--hf-names",
                         "--job.config_file", job)
    assert code == 0, err
    assert "OK: 3 phase(s), explicit schedule" in out
    converted = tomllib.loads(out_file.read_text())
    assert converted["0"]["params"] == [
        "layers.5.attention.wq.weight", "layers.5.attention.wk.weight",
        "layers.5.attention.wv.weight", "layers.5.attention.wo.weight",
        "layers.5.feed_forward.w1.weight", "layers.5.feed_forward.w2.weight",
        "layers.5.feed_forward.w3.weight", "layers.5.attention_norm.weight",
        "layers.5.ffn_norm.weight", "norm.weight", "output.weight",
    ]
    assert len(converted["1"]["params"]) == 18
    assert converted["2"]["params"][0] == "tok_embeddings.weight"
    assert len(converted["2"]["params"]) == 1 + 27


def test_import_fts_hf_name_matching_nothing_names_phase_and_key(capsys, job, tmp_path):
    fts = tmp_path / "fts.yaml"
    fts.write_text(FTS_HF.replace("model.model.embed_tokens.weight", "model.model.embed.weight"))
    out_file = tmp_path / "schedule.toml"
    code, _, err = run(capsys, "import-fts", str(fts), "--out", str(out_file),
                       "--steps-per-epoch", "100", "--strip-prefix", "--hf-names",
                       "--job.config_file", job)
    assert code == 2
    assert "phase 2: params" in err and "'model.embed.weight' matches no HF parameter name" in err
    assert not out_file.exists()


def test_import_fts_hf_names_needs_the_job(capsys, tmp_path):
    fts = tmp_path / "fts.yaml"
    fts.write_text(FTS_HF)
    code, _, err = run(capsys, "import-fts", str(fts), "--out", str(tmp_path / "s.toml"),
                       "--steps-per-epoch", "100", "--hf-names")
    assert code == 2 and "--hf-names needs the job's flags" in err


def test_import_fts_needs_steps_per_epoch(capsys, tmp_path):
    fts = tmp_path / "fts.yaml"
    fts.write_text(FTS)
    code, _, err = run(capsys, "import-fts", str(fts), "--out", str(tmp_path / "s.toml"))
    assert code == 2 and "--steps-per-epoch" in err
    assert not (tmp_path / "s.toml").exists()


def test_import_fts_to_stdout(capsys, tmp_path):
    fts = tmp_path / "fts.yaml"
    fts.write_text(FTS)
    code, out, _ = run(capsys, "import-fts", str(fts), "--out", "-", "--steps-per-epoch", "10",
                       "--strip-prefix", "model.")
    assert code == 0 and tomllib.loads(out)["0"]["params"] == ["output.weight", "norm.weight"]


@pytest.mark.parametrize("argv", [[], ["validate", "--help"], ["import-fts", "--help"]])
def test_help_and_usage(capsys, argv):
    code, out, err = run(capsys, *argv)
    if argv:
        assert code == 0 and "exit codes:" in out
    else:
        assert code == 2 and "usage:" in err


SUBCOMMANDS = ("validate", "show", "generate", "import-fts", "plan", "plot")

# Calls main with each argv in one fresh process, as the console script does, and lists after
# each the torch and torchtitan modules loaded so far (the first five).
_HELP_IMPORTS = """
import contextlib, io, json, sys
from titan_phases.cli import main
report = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    heavy = sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "torchtitan"))
    report.append({"argv": argv, "code": code, "help": out.getvalue(), "heavy": heavy[:5]})
print(json.dumps(report))
"""


def test_help_imports_neither_torch_nor_torchtitan():
    # Help must print at once: importing torchtitan takes seconds.
    argvs = [["--help"], *([name, "--help"] for name in SUBCOMMANDS)]
    result = subprocess.run([sys.executable, "-c", _HELP_IMPORTS, json.dumps(argvs)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["argv"] for r in report] == argvs
    for r in report:
        assert r["code"] == 0 and "exit codes:" in r["help"], r
        assert r["heavy"] == [], f"titan-phases {' '.join(r['argv'])} imports {r['heavy']}"


def test_import_fts_parser_default_lr_is_the_converters():
    from titan_phases.cli import import_fts
    from titan_phases.interop.fts_import import FTS_BASE_MAX_LR

    assert import_fts.FTS_BASE_MAX_LR == FTS_BASE_MAX_LR


def test_bad_torchtitan_flag_exits_2(capsys, job):
    code, _, _ = run(capsys, "validate", "--job.config_file", job, "--phases.no_such_field", "1")
    assert code == 2


def test_missing_job_file_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "validate", "--job.config_file", str(tmp_path / "none.toml"))
    assert code == 2 and "cannot read the job config" in err


def test_torchtitan_flags_may_come_first(capsys, job, tmp_path):
    fts = tmp_path / "fts.yaml"
    fts.write_text(FTS)
    code, out, err = run(capsys, "import-fts", "--job.config_file", job, "--training.steps=500",
                         str(fts), "--out", str(tmp_path / "s.toml"), "--steps-per-epoch", "100",
                         "--strip-prefix")
    assert code == 0, err
    assert "end of training (step 500)" in out


def test_unknown_own_option_exits_2(capsys, job):
    code, _, err = run(capsys, "show", "--parms", "--job.config_file", job)
    assert code == 2 and "--parms" in err


@pytest.fixture
def hub_unreachable(monkeypatch):
    """The Hugging Face Hub cannot be reached and caches nothing, whatever this machine's
    network and caches."""
    from titan_phases.data import availability

    monkeypatch.setattr(availability, "_resolves", lambda host: False)
    monkeypatch.setattr(availability, "_hub_offline", lambda: False)
    monkeypatch.setattr(availability, "_in_hub_cache", lambda repo_id: False)


@pytest.mark.parametrize("config", sorted(
    str(p) for p in (REPO / "train_configs").glob("*.toml")))
@pytest.mark.usefixtures("hub_unreachable")
def test_shipped_job_configs_validate(capsys, config, tmp_path, monkeypatch):
    # As ./run_train.sh runs them: from the repository, the embedded assets in their default
    # place (./.cache/titan_phases, built by the job when missing).
    monkeypatch.delenv("TITAN_PHASES_CACHE", raising=False)
    monkeypatch.chdir(REPO)
    extra = []
    if "8b" in Path(config).name or "70b" in Path(config).name:
        # They read what a user downloads first: the model's tokenizer and weights, and C4 from
        # the Hub. Refused, and named, until they exist: the input first, then the weights.
        code, _, err = run(capsys, "validate", "--job.config_file", config)
        assert code == 2 and "(3 problems)" in err
        for key in ("model.hf_assets_path: './assets/hf/Llama-3.1-",
                    "training.dataset: 'c4' reads 'allenai/c4' from the Hugging Face Hub",
                    "validation.dataset: 'c4_validation' reads 'allenai/c4'"):
            assert key in err
        data = tmp_path / "c4"
        data.mkdir()
        extra = ["--model.hf_assets_path", str(tokenizer_folder(tmp_path / "tokenizer")),
                 "--training.dataset_path", str(data), "--validation.dataset_path", str(data)]
        code, _, err = run(capsys, "validate", "--job.config_file", config, *extra)
        assert code == 2 and "initial_load_path = './assets/hf/Llama-3.1-" in err
        extra += ["--checkpoint.initial_load_path", str(tmp_path)]
    code, _, err = run(capsys, "validate", "--job.config_file", config, *extra)
    assert code == 0, err


def test_validate_reports_unknown_keys_with_the_schedule_problems_at_once(capsys, tmp_path):
    job = tmp_path / "job.toml"
    text = JOB.format(tokenizer=tokenizer_folder(tmp_path / "tokenizer"))
    job.write_text(text.replace("[job]\n", '[job]\ndescripton = "typo"\n')
                   + "\n[phases]\nrestore_bset = true\nlr_scale = -1.0\n")
    lines = job.read_text().splitlines()
    code, _, err = run(capsys, "validate", "--job.config_file", str(job))
    assert code == 2
    typo = lines.index('descripton = "typo"') + 1
    assert f"{job}:{typo}: job.descripton: no config section has this key" in err
    assert "did you mean job.description?" in err
    restore = lines.index("restore_bset = true") + 1
    assert f"{job}:{restore}: phases.restore_bset" in err
    assert "did you mean phases.restore_best?" in err
    assert "phases.lr_scale: must be > 0" in err and "(3 problems)" in err
    assert "Traceback" not in err


def test_a_job_toml_syntax_error_names_the_file(capsys, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text("[job\ndump_folder = 1\n")
    code, _, err = run(capsys, "validate", "--job.config_file", str(job))
    assert code == 2 and f"{job}: not valid TOML" in err and "Traceback" not in err


def _save_phase_state(
    folder: Path, model_shapes: dict, phase_params: list[list[str]], phase: int
) -> None:
    """A checkpoint as the trainer saves it, as far as validate reads it: the model's tensors
    (zeros) and the phase controller's state."""
    import torch
    import torch.distributed.checkpoint as dcp

    from titan_phases.components.phase_controller import PhaseController, Transition

    controller = PhaseController([None] * len(phase_params), phase_params)
    for k in range(phase):
        controller.commit(Transition(k, k + 1, 5, "max_transition_step"))
    model = {name: torch.zeros(shape) for name, shape in model_shapes.items()}
    dcp.save({**model, "phases": controller}, checkpoint_id=folder, no_dist=True)


def test_validate_says_what_the_job_would_resume_and_refuses_what_it_cannot(
    capsys, tmp_path, monkeypatch
):
    from titan_phases.schedule import load_and_validate

    monkeypatch.delenv("TITAN_PHASES_CACHE", raising=False)  # the default job's assets
    monkeypatch.chdir(REPO)

    dump = tmp_path / "dump"
    job_args = ["--job.config_file", "train_configs/debug_model.toml",
                "--job.dump_folder", str(dump)]
    code, out, _ = run(capsys, "validate", *job_args)
    assert code == 0 and "resumes" not in out  # nothing saved yet: a fresh start

    from titan_phases.config import parse_job_config
    from titan_phases.schedule.model_info import meta_model
    from titan_phases.train_spec import register_train_specs

    register_train_specs()
    job_config = parse_job_config(job_args)
    resolved = load_and_validate(job_config)
    shapes = {name: t.shape for name, t in meta_model(job_config).state_dict().items()}
    phase_params = [list(p) for p in resolved.phase_params]
    _save_phase_state(dump / "checkpoint" / "step-5", shapes, phase_params, 1)
    code, out, _ = run(capsys, "validate", *job_args)
    assert code == 0 and f"resumes {dump / 'checkpoint' / 'step-5'}: phase 1 after step 5" in out

    other = [["output.weight"], ["norm.weight"], ["tok_embeddings.weight"]]
    _save_phase_state(dump / "checkpoint" / "step-6", shapes, other, 1)
    code, _, err = run(capsys, "validate", *job_args)
    assert code == 2 and "step-6" in err and "the checkpoint is in phase 1" in err

    wider = {**shapes, "output.weight": (shapes["output.weight"][0], 512)}
    _save_phase_state(dump / "checkpoint" / "step-7", wider, phase_params, 1)
    code, _, err = run(capsys, "validate", *job_args)
    assert code == 2 and "step-7 holds another model than this job's" in err
    assert "output.weight is [2048, 512] there and [2048, 256]" in err


def test_validate_takes_a_schedule_file_in_place_of_the_inline_schedule(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.delenv("TITAN_PHASES_CACHE", raising=False)  # the default job's assets
    monkeypatch.chdir(REPO)
    schedule = tmp_path / "schedule.toml"
    schedule.write_text("[0]\nparams = ['output.weight', 'norm.weight']\nmax_transition_step = 10"
                        "\n\n[1]\nparams = ['layers\\.5\\..+']\n")
    code, out, err = run(capsys, "validate", "--job.config_file", "train_configs/debug_model.toml",
                         "--phases.schedule_file", str(schedule))
    assert code == 0, err
    assert (f"warning: train_configs/debug_model.toml: phases.schedule: the inline "
            f"[phases.schedule] is replaced by --phases.schedule_file {str(schedule)!r}, given "
            "on the command line") in err
    assert f"OK: 2 phase(s), explicit schedule ({schedule})" in out


def test_validate_says_a_model_without_phases_runs_as_stock_torchtitan(capsys, monkeypatch):
    monkeypatch.delenv("TITAN_PHASES_CACHE", raising=False)
    monkeypatch.chdir(REPO)
    code, out, err = run(capsys, "validate", "--job.config_file",
                         "train_configs/pretrain_debug_model.toml")
    assert code == 0, err
    assert out == ("OK: model.name = 'llama3' has no phases: the job runs torchtitan's stock "
                   "Trainer, every parameter trains\n")
