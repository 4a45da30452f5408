"""Converting FTS YAML schedules, checked against the llama3 debug model."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.schedule.conftest import make_job, NUM_DEBUGMODEL_PARAMS
from titan_phases.cli import main
from titan_phases.interop.fts_import import (
    convert_fts_schedule,
    load_fts_yaml,
    strip_prefix,
    to_fullmatch,
)
from titan_phases.schedule import load_and_validate
from titan_phases.schedule.errors import Problems

# Shaped like the explicit reinit example of FTS's docs (optimizer and scheduler reinit, two
# param groups per phase in init_pg_lrs, Lightning's "model." prefix), with llama3 names.
EXPLICIT = """
0:
  params:
  - model.output.weight
  - model.norm.weight
  max_transition_epoch: 2
1:
  params:
  - model.layers.5.attention.wq.weight
  - model.layers.5.(attention|feed_forward).*
  - model.layers.5.attention_norm.weight
  - model.layers.5.ffn_norm.weight
  max_transition_epoch: 4
  new_optimizer:
    optimizer_init:
      class_path: torch.optim.SGD
      init_args:
        lr: 2.0e-03
        momentum: 0.9
        weight_decay: 2.0e-06
  new_lr_scheduler:
    lr_scheduler_init:
      class_path: torch.optim.lr_scheduler.StepLR
      init_args:
        step_size: 1
        gamma: 0.7
    pl_lrs_cfg:
      interval: epoch
      frequency: 1
      name: Explicit_Reinit_LR_Scheduler
    init_pg_lrs: [2.0e-06, 2.0e-06]
2:
  params:
  - model.layers.[0-4].(feed_forward|ffn_norm|attention.w.*|attention_norm).*
  - model.tok_embeddings.weight
  new_optimizer:
    optimizer_init:
      class_path: torch.optim.AdamW
      init_args:
        weight_decay: 1.0e-05
        eps: 1.0e-07
        lr: 1e-5
  new_lr_scheduler:
    lr_scheduler_init:
      class_path: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts
      init_args:
        T_0: 3
        T_mult: 2
        eta_min: 1.0e-07
    pl_lrs_cfg:
      interval: epoch
      frequency: 1
      name: Explicit_Reinit_LR_Scheduler
    init_pg_lrs: [1.0e-06, 1.0e-06, 2.0e-06, 2.0e-06]
"""


def convert(text: str, **kwargs):
    problems = Problems()
    result = convert_fts_schedule(yaml.safe_load(text), source="fts.yaml", problems=problems,
                                  **kwargs)
    return result, problems.errors


def test_docs_style_schedule_converts_and_validates():
    result, errors = convert(EXPLICIT, steps_per_epoch=50, prefix="model.")
    assert errors == []
    s = result.schedule
    assert s["0"] == {"params": ["output.weight", "norm.weight"], "max_transition_step": 100}
    assert s["1"]["max_transition_step"] == 200
    assert s["1"]["lr"] == 1e-5  # FTS's base_max_lr default
    assert s["1"]["params"][1] == "layers.5.(attention|feed_forward).*"
    assert s["1"]["new_optimizer"] == {"class_path": "torch.optim.SGD", "init_args": {
        "lr": 2e-3, "momentum": 0.9, "weight_decay": 2e-6}}
    assert s["1"]["new_lr_scheduler"] == {
        "class_path": "torch.optim.lr_scheduler.StepLR",
        "init_args": {"step_size": 50, "gamma": 0.7},  # 1 epoch -> 50 steps
        "init_pg_lrs": [2e-6, 1e-5],  # phase 0's pair merged, phase 1's lr appended
    }
    assert s["2"]["new_optimizer"]["init_args"]["lr"] == 1e-5  # "1e-5" read as a string by YAML
    assert s["2"]["new_lr_scheduler"]["init_args"]["T_0"] == 150
    assert s["2"]["new_lr_scheduler"]["init_pg_lrs"] == [1e-6, 2e-6, 1e-5]
    # name is Lightning's logging label, not a monitored metric.
    assert any("pl_lrs_cfg.name 'Explicit_Reinit_LR_Scheduler' dropped (a Lightning logging "
               "label" in n for n in result.notes)
    assert not any("monitored metric" in n for n in result.notes)

    resolved = load_and_validate(make_job(result.schedule, steps=400))
    assert sum(map(len, resolved.phase_params)) == NUM_DEBUGMODEL_PARAMS
    assert resolved.phase_params[1] == tuple(
        f"layers.5.{n}" for n in ("attention.wq.weight", "attention.wk.weight",
                                  "attention.wv.weight", "attention.wo.weight",
                                  "feed_forward.w1.weight", "feed_forward.w2.weight",
                                  "feed_forward.w3.weight", "attention_norm.weight",
                                  "ffn_norm.weight"))


def test_a_no_decay_split_is_named_with_the_weight_decay_it_loses():
    result, _ = convert(EXPLICIT, steps_per_epoch=50, prefix="model.")
    (note,) = [n for n in result.notes if "no_decay" in n]
    assert "FTS gives the no_decay group" in note and "weight_decay = 0" in note
    assert "decay with the optimizer's weight_decay" in note
    one_group, _ = convert(EXPLICIT.replace("[1.0e-06, 1.0e-06, 2.0e-06, 2.0e-06]",
                                            "[1.0e-06, 2.0e-06]").replace(
        "[2.0e-06, 2.0e-06]", "[2.0e-06]"), steps_per_epoch=50, prefix="model.")
    assert not any("no_decay" in n for n in one_group.notes)


def test_groups_per_phase_can_be_forced():
    result, errors = convert(EXPLICIT, steps_per_epoch=50, prefix="model.", groups_per_phase=1)
    assert any(p.phase == 2 and p.key == "new_lr_scheduler.init_pg_lrs" for p in errors)


def test_one_group_per_phase_lists():
    text = """
0: {params: [a]}
1: {params: [b], lr: 3.0e-4, new_lr_scheduler: {lr_scheduler_init: {class_path: StepLR,
    init_args: {step_size: 100}}, pl_lrs_cfg: {interval: step}, init_pg_lrs: [1.0e-4]}}
2: {params: [c], new_lr_scheduler: {lr_scheduler_init: {class_path: StepLR,
    init_args: {step_size: 100}}, pl_lrs_cfg: {interval: step},
    init_pg_lrs: [1.0e-4, 2.0e-4, 5.0e-4]}}
"""
    result, errors = convert(text)
    assert errors == []
    assert result.schedule["1"]["new_lr_scheduler"]["init_pg_lrs"] == [1e-4, 3e-4]
    assert result.schedule["2"]["new_lr_scheduler"]["init_pg_lrs"] == [1e-4, 2e-4, 5e-4]
    assert result.schedule["2"]["new_lr_scheduler"]["init_args"] == {"step_size": 100}


@pytest.mark.parametrize("text, phase, key", [
    ("0: {params: [a], max_transition_epoch: 1}\n1: {params: [b]}", 0, "max_transition_epoch"),
    ("0: {params: [a]}\n1: {params: [b], new_lr_scheduler: {lr_scheduler_init: "
     "{class_path: StepLR, init_args: {step_size: 1}}}}", 1, "new_lr_scheduler.init_args"),
    ("0: {params: [a], new_optimizer: {optimizer_init: {class_path: SGD}}}", 0, "new_optimizer"),
    ("0: {params: [a], epochs: 3}", 0, "epochs"),
    ("0: {params: [a]}\n1: {params: [b], new_lr_scheduler: {lr_scheduler_init: "
     "{class_path: StepLR}, pl_lrs_cfg: {interval: step}, init_pg_lrs: [1.0e-4, 2.0e-4]}}\n",
     None, None),
], ids=["epochs-need-steps-per-epoch", "epoch-scheduler-needs-steps-per-epoch",
        "reinit-in-phase-0", "unknown-key", "unequal-pairs-ok-as-one-per-phase"])
def test_conversion_problems(text, phase, key):
    _, errors = convert(text)
    if key is None:
        assert errors == []
    else:
        assert any(p.phase == phase and p.key == key for p in errors), errors


def test_unequal_no_decay_pairs_rejected():
    text = ("0: {params: [a]}\n1: {params: [b]}\n2: {params: [c], new_lr_scheduler: "
            "{lr_scheduler_init: {class_path: StepLR}, pl_lrs_cfg: {interval: step}, "
            "init_pg_lrs: [1.0e-4, 1.0e-5, 2.0e-4, 2.0e-4]}}")
    _, errors = convert(text)
    assert [(p.phase, p.key) for p in errors] == [(2, "new_lr_scheduler.init_pg_lrs")]


def test_exponential_per_epoch_becomes_the_same_staircase():
    # Stepped once per epoch, ExponentialLR holds each lr for an epoch: a StepLR of one epoch.
    text = ("0: {params: [a]}\n1: {params: [b], new_lr_scheduler: {lr_scheduler_init: "
            "{class_path: torch.optim.lr_scheduler.ExponentialLR, init_args: {gamma: 0.5}}}}")
    result, errors = convert(text, steps_per_epoch=4)
    assert errors == []
    assert result.schedule["1"]["new_lr_scheduler"] == {
        "class_path": "torch.optim.lr_scheduler.StepLR",
        "init_args": {"step_size": 4, "gamma": 0.5}}
    assert any("ExponentialLR -> StepLR(step_size=4, gamma=0.5)" in n for n in result.notes)


@pytest.mark.parametrize("pattern, prefix, expected", [
    ("model.norm.weight", "model.", "norm.weight"),
    (r"model\.layers\..*", "model.", r"layers\..*"),
    ("^model.layers.*", "model.", "^layers.*"),
    ("net.x", "model.", None),
])
def test_strip_prefix(pattern, prefix, expected):
    assert strip_prefix(pattern, prefix) == expected


@pytest.mark.parametrize("pattern", [
    "layers.1.attention.wq.weight", r"layers\.1", "layers.[0-2].(ffn|attention)", "a|layers.2",
    r"layers\.1\..*$", "layers.(1|2)",
])
def test_to_fullmatch_selects_what_fts_match_selected(pattern):
    names = ["layers.1.attention.wq.weight", "layers.10.ffn.w", "layers.2.ffn_norm.weight",
             "layers.0.attention.wk.weight", "a.b", "norm.weight"]
    converted = re.compile(to_fullmatch(pattern))
    if pattern in names:  # exact names stay exact
        assert to_fullmatch(pattern) == pattern
        return
    assert [n for n in names if converted.fullmatch(n)] == \
        [n for n in names if re.match(pattern, n)]


# --- FTS's semantics ------------------------------------------------------------------------

LLAMA_NAMES = [f"layers.{i}.{leaf}" for i in range(12) for leaf in (
    "attention.wq.weight", "attention_norm.weight", "feed_forward.w1.weight")]
LLAMA_NAMES += ["norm.weight", "output.weight"]


def test_module_names_keep_ftss_prefix_meaning_and_looser_matches_are_reported():
    text = "0: {params: [model.output.weight, model.layers.1]}\n1: {params: ['model.layers.2.*']}"
    result, errors = convert(text, prefix="model.", param_names=LLAMA_NAMES)
    assert errors == []
    assert result.schedule["0"]["params"] == ["output.weight", "layers.1.*"]
    assert result.schedule["1"]["params"] == ["layers.2.*"]
    selected = [n for n in LLAMA_NAMES if re.fullmatch("layers.1.*", n)]
    assert len(selected) == 3 * 3  # layers.1, layers.10 and layers.11, as FTS selects them
    (note,) = [n for n in result.notes if "params[1]" in n]
    assert "also selects 6 parameter(s)" in note and "layers.10.attention.wq.weight" in note
    assert "write 'layers\\.1(?:\\..*)?' to leave them out" in note  # block 1 only
    # 'layers.2.*' selects what it probably means (there is no layers.2x): no note.
    assert not any(n.startswith("phase 1: params") for n in result.notes)
    # A block number then .* is read as that block: 'layers.1.*' also gets the note.
    result, _ = convert("0: {params: ['model.layers.1.*']}", prefix="model.",
                        param_names=LLAMA_NAMES)
    assert any("also selects 6 parameter(s)" in n for n in result.notes)


def test_without_names_module_names_become_prefix_patterns_with_a_note():
    result, errors = convert("0: {params: [model.norm.weight, model.layers.5]}", prefix="model.")
    assert errors == []
    assert result.schedule["0"]["params"] == ["norm.weight", "layers.5.*"]
    assert any("'layers.5'" in n and "--job.config_file" in n for n in result.notes)
    resolved = load_and_validate(make_job({"0": result.schedule["0"]}))
    assert len(resolved.phase_params[0]) == 1 + 9  # FTS: block 5's 9 parameters


def test_init_pg_lrs_covering_the_new_group_wins_over_its_lr():
    text = """
0: {params: [model.output.weight, model.norm.weight], max_transition_epoch: 1}
1:
  params: ['model.layers.5.*']
  lr: 2.0e-3
  new_lr_scheduler:
    lr_scheduler_init: {class_path: torch.optim.lr_scheduler.StepLR, init_args: {step_size: 2}}
    pl_lrs_cfg: {interval: step}
    init_pg_lrs: [5.0e-3, 6.0e-3]
"""
    result, errors = convert(text, steps_per_epoch=10, prefix="model.")
    assert errors == []
    phase = result.schedule["1"]
    assert "lr" not in phase and phase["new_lr_scheduler"]["init_pg_lrs"] == [5e-3, 6e-3]
    assert any("lr 0.002 dropped: init_pg_lrs gives the new group 0.006" in n
               for n in result.notes)
    resolved = load_and_validate(make_job(result.schedule, steps=100))
    assert resolved.group_lr(1) == 6e-3


def test_duplicate_keys_are_refused_as_fts_does(tmp_path):
    path = tmp_path / "fts.yaml"
    path.write_text("0: {params: [a]}\n1: {params: [b]}\n1: {params: [c]}\n")
    problems = Problems()
    assert load_fts_yaml(path, problems) is None
    (problem,) = problems.errors
    assert "duplicate key 1 (first on line 2) on line 3: FTS refuses such a file" in str(problem)
    path.write_text("0:\n  params: [a]\n  params: [b]\n")
    problems = Problems()
    load_fts_yaml(path, problems)
    assert "duplicate key 'params'" in str(problems.errors[0])


def _scheduler_yaml(class_path: str, init_args: str, interval: str, frequency: int) -> str:
    return f"""
0: {{params: [a], max_transition_epoch: 3}}
1:
  params: [b]
  new_lr_scheduler:
    lr_scheduler_init: {{class_path: torch.optim.lr_scheduler.{class_path}, init_args: {init_args}}}
    pl_lrs_cfg: {{interval: {interval}, frequency: {frequency}, name: my_lr}}
"""


@pytest.mark.parametrize("class_path, init_args, interval, frequency, steps, expected, exact", [
    # Every 2 of 4 steps: Lightning's count within each epoch divides it.
    ("StepLR", "{step_size: 3}", "step", 2, 4, {"step_size": 6}, True),
    # Every 2 of 5 steps: the count restarts each epoch, decays after steps 4, 9, 14 (not 6).
    ("StepLR", "{step_size: 2}", "step", 2, 5, {"step_size": 4}, False),
    ("MultiStepLR", "{milestones: [1, 2, 3]}", "step", 2, 5, {"milestones": [2, 4, 7]}, True),
    # Every 2nd epoch of training, phase 1 starting at epoch 3: after 1, 3, 5 epochs.
    ("MultiStepLR", "{milestones: [1, 2, 3]}", "epoch", 2, 4, {"milestones": [4, 12, 20]}, True),
    ("ConstantLR", "{factor: 0.5, total_iters: 2}", "epoch", 2, 4,
     {"factor": 0.5, "total_iters": 12}, True),
    ("StepLR", "{step_size: 1}", "epoch", 2, 4, {"step_size": 8}, False),
    ("CosineAnnealingLR", "{T_max: 3}", "epoch", 1, 4, {"T_max": 12}, False),
])
def test_scheduler_counts_convert_exactly_or_say_how_they_differ(
    class_path, init_args, interval, frequency, steps, expected, exact
):
    result, errors = convert(_scheduler_yaml(class_path, init_args, interval, frequency),
                             steps_per_epoch=steps)
    assert errors == []
    assert result.schedule["1"]["new_lr_scheduler"]["init_args"] == expected
    (note,) = [n for n in result.notes if n.startswith(f"phase 1: {class_path}.")]
    assert ("not exact" in note) != exact
    if class_path == "StepLR" and interval == "step" and not exact:
        assert "decays came after steps 4, 9, 14" in note


def test_a_frequency_above_the_epoch_length_never_steps_in_lightning():
    _, errors = convert(_scheduler_yaml("StepLR", "{step_size: 1}", "step", 5),
                        steps_per_epoch=4)
    assert [(p.phase, p.key) for p in errors] == [(1, "new_lr_scheduler.pl_lrs_cfg.frequency")]


def test_a_lightning_cli_config_names_what_to_import_instead():
    text = """
trainer:
  callbacks:
  - class_path: finetuning_scheduler.FinetuningScheduler
    init_args: {base_max_lr: 2.0e-05, reinit_lr_cfg: {lr_scheduler_init: {class_path: StepLR}}}
"""
    _, errors = convert(text)
    (problem,) = errors
    assert "a Lightning CLI config" in problem.message
    assert "base_max_lr = 2e-05" in problem.hint
    _, errors = convert("trainer: {callbacks: [{class_path: finetuning_scheduler."
                        "FinetuningScheduler, init_args: {ft_schedule: sched.yaml}}]}")
    assert "import its ft_schedule file instead: sched.yaml" in errors[0].hint


def test_offset_decays_in_a_phase_of_known_length_become_milestones():
    # Every 2nd epoch of training; the phase runs epochs 3-8, so FTS decays after 1, 3, 5 of
    # its epochs: not every N steps from its start, but listable.
    text = """
0: {params: [a], max_transition_epoch: 3}
1:
  params: [b]
  max_transition_epoch: 9
  new_lr_scheduler:
    lr_scheduler_init: {class_path: torch.optim.lr_scheduler.StepLR,
                        init_args: {step_size: 1, gamma: 0.5}}
    pl_lrs_cfg: {interval: epoch, frequency: 2}
2: {params: [c]}
"""
    result, errors = convert(text, steps_per_epoch=4)
    assert errors == []
    assert result.schedule["1"]["new_lr_scheduler"] == {
        "class_path": "torch.optim.lr_scheduler.MultiStepLR",
        "init_args": {"milestones": [4, 12, 20], "gamma": 0.5}}
    assert any("StepLR -> MultiStepLR(milestones=[4, 12, 20])" in n and "exact" in n
               for n in result.notes)


def _import_against_debug_job(fts: Path, out: Path) -> int:
    """``titan-phases import-fts`` of ``fts`` into ``out``, validated against a llama3
    debugmodel job of 400 steps at 10 steps per epoch; returns the exit code."""
    job = fts.parent / "job.toml"
    job.write_text('[model]\nname = "llama3"\nflavor = "debugmodel"\n[training]\nsteps = 400\n')
    return main(["import-fts", str(fts), "--out", str(out), "--steps-per-epoch", "10",
                 "--strip-prefix", "--job.config_file", str(job)])


def test_cli_converts_against_the_jobs_names_and_lists_looser_matches(tmp_path, capsys):
    fts = tmp_path / "fts.yaml"
    fts.write_text("0: {params: [model.output.weight, model.norm.weight, model.layers.5.attention],"
                   " max_transition_epoch: 1}\n1: {params: [model.layers.4]}\n")
    out = tmp_path / "schedule.toml"
    assert _import_against_debug_job(fts, out) == 0
    _, err = capsys.readouterr()
    # FTS's 'layers.5.attention' also selects layers.5.attention_norm.weight.
    assert ("params[2] 'layers.5.attention': FTS matches it at the start of names, so it also "
            "selects 1 parameter(s)") in err and "layers.5.attention_norm.weight" in err
    converted = tomllib.loads(out.read_text())
    assert converted["0"]["params"] == ["output.weight", "norm.weight", "layers.5.attention.*"]
    assert converted["1"]["params"] == ["layers.4.*"]


def test_cli_writes_nothing_when_the_converted_schedule_fails_against_the_job(tmp_path, capsys):
    fts = tmp_path / "fts.yaml"
    fts.write_text("0: {params: [model.output.weight], max_transition_epoch: 1}\n"
                   "1: {params: ['model.layers.9.*']}\n")
    out = tmp_path / "schedule.toml"
    assert _import_against_debug_job(fts, out) == 2
    _, err = capsys.readouterr()
    assert f"invalid imported schedule, {out} not written (1 problem)" in err
    assert f"{out}: phase 1: params[0]: 'layers.9.*' matches no parameter" in err
    assert not out.exists()
    # Fixed, it is written and validated in one go.
    fts.write_text(fts.read_text().replace("layers.9", "layers.5"))
    assert _import_against_debug_job(fts, out) == 0
    out_text, err = capsys.readouterr()
    assert f"OK: 2 phase(s), explicit schedule ({out})" in out_text
    assert tomllib.loads(out.read_text())["1"]["params"] == ["layers.5.*"]
