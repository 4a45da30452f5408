"""Converting FTS YAML schedules, checked against the llama3 debug model."""

from __future__ import annotations

import re

import pytest
import yaml

from titan_phases.schedule import load_and_validate
from titan_phases.schedule.errors import Problems
from titan_phases.schedule.fts_import import convert_fts_schedule, strip_prefix, to_fullmatch

from .conftest import NUM_DEBUGMODEL_PARAMS, make_job

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
    assert any("pl_lrs_cfg name dropped" in n for n in result.notes)

    resolved = load_and_validate(make_job(result.schedule, steps=400))
    assert sum(map(len, resolved.phase_params)) == NUM_DEBUGMODEL_PARAMS
    assert resolved.phase_params[1] == tuple(
        f"layers.5.{n}" for n in ("attention.wq.weight", "attention.wk.weight",
                                  "attention.wv.weight", "attention.wo.weight",
                                  "feed_forward.w1.weight", "feed_forward.w2.weight",
                                  "feed_forward.w3.weight", "attention_norm.weight",
                                  "ffn_norm.weight"))


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


def test_exponential_gamma_keeps_the_per_epoch_decay():
    text = ("0: {params: [a]}\n1: {params: [b], new_lr_scheduler: {lr_scheduler_init: "
            "{class_path: torch.optim.lr_scheduler.ExponentialLR, init_args: {gamma: 0.5}}}}")
    result, errors = convert(text, steps_per_epoch=4)
    gamma = result.schedule["1"]["new_lr_scheduler"]["init_args"]["gamma"]
    assert errors == [] and gamma ** 4 == pytest.approx(0.5)


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
