"""HF parameter names from a state_dict_adapter's name map, and schedules rewritten with them."""

from __future__ import annotations

import dataclasses

import pytest
from torchtitan.protocols.train_spec import get_train_spec, register_train_spec

from titan_phases.config import parse_job_config
from titan_phases.interop.hf_names import hf_to_titan_names, job_hf_names, to_titan_names
from titan_phases.schedule import ScheduleError
from titan_phases.schedule.errors import Problems

FROM_HF = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",
    "model.layers.{}.self_attn.rotary_emb.inv_freq": None,
    "lm_head.weight": "output.weight",
}
TITAN = ["tok_embeddings.weight", "layers.0.attention.wq.weight",
         "layers.11.attention.wq.weight", "output.weight"]


def test_every_parameter_gets_its_hf_name_in_model_order():
    assert hf_to_titan_names(FROM_HF, TITAN) == {
        "model.embed_tokens.weight": "tok_embeddings.weight",
        "model.layers.0.self_attn.q_proj.weight": "layers.0.attention.wq.weight",
        "model.layers.11.self_attn.q_proj.weight": "layers.11.attention.wq.weight",
        "lm_head.weight": "output.weight",
    }


def test_a_parameter_the_map_does_not_cover_is_an_error():
    with pytest.raises(ValueError, match="no entry for layers.0.attention.wk.weight"):
        hf_to_titan_names(FROM_HF, [*TITAN, "layers.0.attention.wk.weight"])


def test_patterns_become_exact_torchtitan_names_and_misses_are_reported():
    schedule = {
        "0": {"params": ["lm_head.weight", r"model\.layers\.1\d\..*"]},
        "1": {"params": ["model.layers.0.self_attn.q_proj.weight", "model.embed.weight"]},
    }
    problems = Problems()
    to_titan_names(schedule, hf_to_titan_names(FROM_HF, TITAN), "fts.yaml", problems)
    assert schedule["0"]["params"] == ["layers.11.attention.wq.weight", "output.weight"]
    assert schedule["1"]["params"] == ["layers.0.attention.wq.weight"]
    assert problems.has(1, "params") and not problems.has(0, "params")


def test_a_model_without_an_hf_name_map_is_a_problem_naming_the_model():
    register_train_spec(
        "llama3_without_hf_map",
        dataclasses.replace(get_train_spec("llama3"), state_dict_adapter=None),
    )
    with pytest.raises(ScheduleError, match="'llama3_without_hf_map' has no state_dict_adapter"):
        job_hf_names(parse_job_config(["--model.name", "llama3_without_hf_map"]), "fts.yaml")
    assert len(job_hf_names(parse_job_config(["--model.name", "llama3"]))) == 57
