"""The [phases] section through torchtitan's ConfigManager, TOML and CLI overrides."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest
from torchtitan.config import ConfigManager

from titan_phases.config import CUSTOM_CONFIG_MODULE, parse_job_config, Phases
from titan_phases.config import job_config as job_config_module

JOB = """
[job]
custom_config_module = "titan_phases.config.job_config"

[model]
name = "llama3"
flavor = "debugmodel"

[phases]
lr_scale = 0.5
transition_mode = "step"

[phases.schedule.0]
params = ["output.weight", "norm.weight"]
max_transition_step = 10

[phases.schedule.1]
params = ['layers\\..+', "tok_embeddings.weight"]
lr = 1.0e-4

[phases.schedule.1.new_optimizer]
class_path = "torch.optim.AdamW"
init_args = { lr = 1.0e-4, betas = [0.9, 0.99] }
"""


def write(tmp_path, text: str, name: str = "job.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_toml_section_and_cli_overrides(tmp_path):
    # torchtitan's own ConfigManager, as torchtitan.train.main uses it.
    job = ConfigManager().parse_args([
        "--job.config_file", write(tmp_path, JOB),
        "--phases.lr_scale", "0.25",
        "--phases.transition_mode", "both",
        "--phases.max_depth", "3",
        "--phases.schedule.1.lr", "2e-4",
        "--phases.schedule.0.max_transition_step", "7",
        "--phases.schedule.1.new_optimizer.init_args.lr", "3e-4",
    ])
    assert isinstance(job.phases, Phases)
    assert job.phases.lr_scale == 0.25
    assert job.phases.transition_mode == "both"
    assert job.phases.max_depth == 3
    schedule = job.phases.schedule
    assert schedule["0"] == {"params": ["output.weight", "norm.weight"], "max_transition_step": 7}
    assert schedule["1"]["lr"] == 2e-4
    assert schedule["1"]["params"] == ["layers\\..+", "tok_embeddings.weight"]
    assert schedule["1"]["new_optimizer"]["init_args"] == {"lr": 3e-4, "betas": [0.9, 0.99]}


def test_custom_config_module_added_when_missing(tmp_path):
    path = write(tmp_path, '[phases]\nschedule_file = "s.toml"\n'
                           'reinit_optimizer = {class_path = "SGD"}\n')
    job = parse_job_config(["--job.config_file", path, "--phases.allow_untested"])
    assert job.job.custom_config_module == CUSTOM_CONFIG_MODULE
    assert job.phases.schedule_file == "s.toml"
    assert job.phases.reinit_optimizer == {"class_path": "SGD"}
    assert job.phases.allow_untested is True


def test_defaults_without_a_job_file():
    job = parse_job_config(["--phases.blocks_per_phase", "2"])
    assert job.phases.blocks_per_phase == 2
    assert job.phases.schedule == {} and job.phases.transition_mode == "auto"
    assert job.phases.effective_transition_mode(validation_enabled=False) == "step"
    assert job.phases.effective_transition_mode(validation_enabled=True) == "both"


def test_custom_module_without_phases_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no 'phases' section"):
        parse_job_config(["--job.custom_config_module", "torchtitan.config.job_config"])


def test_every_phases_field_has_a_docstring():
    tree = ast.parse(inspect.getsource(job_config_module))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Phases").body
    documented = {
        stmt.target.id for stmt, nxt in zip(body, body[1:])
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr)
        and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)
    }
    assert documented == {f for f in Phases.__dataclass_fields__}


def test_only_a_missing_embedded_tokenizer_goes_unwarned(tmp_path, monkeypatch, caplog):
    # A fresh clone has no embedded tokenizer yet: titan_phases builds it after parsing.
    monkeypatch.setenv("TITAN_PHASES_CACHE", str(tmp_path / "cache"))
    job = ["--job.config_file", "train_configs/debug_model.toml"]
    with caplog.at_level("WARNING"):
        parse_job_config([*job, "--model.hf_assets_path", str(tmp_path / "cache/tokenizer")])
        assert not [r for r in caplog.records if "does not exist" in r.getMessage()]
        parse_job_config([*job, "--model.hf_assets_path", str(tmp_path / "typo")])
    assert any(f"{tmp_path / 'typo'} does not exist" in r.getMessage() for r in caplog.records)
