"""Pattern resolution and wrapper-independent parameter names."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torchtitan.models.llama3 import llama3_args, Transformer

from titan_phases.schedule import (
    canonical_param_name,
    Phase,
    PhaseSchedule,
    resolve_phase_params,
    ScheduleError,
)
from titan_phases.schedule.errors import Problems
from titan_phases.schedule.matching import match_phase_params, select_params

from .conftest import qwen3_debug_names, QWEN3_TIED


def debug_model() -> torch.nn.Module:
    with torch.device("meta"):
        return Transformer(copy.deepcopy(llama3_args["debugmodel"]))


def schedule(*phases: list[str]) -> PhaseSchedule:
    return PhaseSchedule(tuple(Phase(i, tuple(p)) for i, p in enumerate(phases)), "test")


@pytest.mark.parametrize("name, canonical", [
    ("output.weight", "output.weight"),
    ("_orig_mod.output.weight", "output.weight"),
    ("layers.0._checkpoint_wrapped_module.attention.wq.weight", "layers.0.attention.wq.weight"),
    ("_fsdp_wrapped_module.layers.1._fsdp_wrapped_module.ffn_norm.weight",
     "layers.1.ffn_norm.weight"),
])
def test_canonical_param_name(name, canonical):
    assert canonical_param_name(name) == canonical


def test_exact_names_and_fullmatch_regexes():
    names = ["layers.1.w", "layers.10.w", "layers.1.w_extra", "norm.weight"]
    resolved = resolve_phase_params(schedule(["norm.weight"], [r"layers\.1\..+"]), names)
    assert resolved == [["norm.weight"], ["layers.1.w", "layers.1.w_extra"]]


def test_exact_name_wins_over_its_regex_reading():
    # "a.b" as a regex would also match "aXb"; as an existing name it selects only itself.
    assert resolve_phase_params(schedule(["a.b"]), ["a.b", "aXb"]) == [["a.b"]]


def test_same_params_before_and_after_wrapping():
    model = debug_model()
    sched = schedule(["output.weight", "norm.weight"], [r"layers\.(4|5)\..+"],
                     [r"layers\.[0-3]\..+", "tok_embeddings.weight"])
    before = resolve_phase_params(sched, [n for n, _ in model.named_parameters()])
    for key, block in list(model.layers.items()):
        model.layers[key] = checkpoint_wrapper(block)
    wrapped = [n for n, _ in model.named_parameters()]
    assert any("_checkpoint_wrapped_module" in n for n in wrapped)
    compiled_names = [f"_orig_mod.{n}" for n in wrapped]
    assert resolve_phase_params(sched, wrapped) == before
    assert resolve_phase_params(sched, compiled_names) == before
    assert sum(map(len, before)) == len(wrapped)


def test_overlap_and_no_match_reported_together():
    with pytest.raises(ScheduleError) as info:
        resolve_phase_params(schedule(["a.x", "b.x"], ["nothing", r"a\..*"]), ["a.x", "b.x"])
    keys = [(p.phase, p.key) for p in info.value.problems]
    assert keys == [(1, "params[0]"), (1, "params[1]")]


def test_naming_a_tied_head_points_to_the_name_the_model_lists():
    listed = [n for n in qwen3_debug_names() if n != "output.weight"]
    problems = Problems()
    match_phase_params(schedule(["output.weight", "norm.weight"], [r"layers\..+"]), listed,
                       problems, QWEN3_TIED)
    (problem,) = problems.errors
    assert (problem.phase, problem.key) == (0, "params[0]")
    assert problem.hint.startswith("output.weight is tied to tok_embeddings.weight (one parameter")
    assert problem.hint.endswith("name 'tok_embeddings.weight'")
    # Without the ties, the nearest names are all there is to say.
    untied = Problems()
    match_phase_params(schedule(["output.weight", "norm.weight"], [r"layers\..+"]), listed,
                       untied)
    assert untied.errors[0].hint == "closest parameter names: norm.weight"
    selected = Problems()
    select_params(["output.weight"], listed, "job.toml", "phases.cycle.always_train", selected,
                  QWEN3_TIED)
    assert "is tied to tok_embeddings.weight" in selected.errors[0].hint
