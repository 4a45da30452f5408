"""Shared helpers: job configs built directly (no CLI parsing), problem assertions, and the
parameter names of a model with tied weights."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torchtitan.config import ConfigManager
from torchtitan.config import JobConfig as TitanJobConfig
from torchtitan.models.qwen3 import qwen3_args
from torchtitan.protocols.train_spec import get_train_spec

from titan_phases.config.job_config import JobConfig as PhasesJobConfig
from titan_phases.schedule import load_and_validate, Problem, ScheduleError

# The class torchtitan's ConfigManager builds for `custom_config_module = titan_phases...`.
MergedJobConfig = ConfigManager._merge_configs(TitanJobConfig, PhasesJobConfig)

# llama3 debugmodel: 6 blocks of 9 tensors, plus embeddings, final norm and output.
NUM_DEBUGMODEL_PARAMS = 57


def make_job(schedule: dict[str, Any] | None = None, *, steps: int = 1000,
             validation: bool = False, checkpoint: bool = False, **phases: Any) -> Any:
    """A llama3 debugmodel job config with an inline schedule and ``[phases]`` fields."""
    job = MergedJobConfig()
    job.job.config_file = "job.toml"
    job.training.steps = steps
    job.validation.enable = validation
    job.checkpoint.enable = checkpoint
    job.phases.schedule = schedule or {}
    for key, value in phases.items():
        setattr(job.phases, key, value)
    return job


def problems_of(job: Any) -> list[Problem]:
    with pytest.raises(ScheduleError) as info:
        load_and_validate(job)
    return info.value.problems


def find_problem(problems: list[Problem], phase: int | None, key: str) -> Problem:
    """The problem for ``phase`` and ``key``; fails listing all problems when absent. Also checks
    that the rendered message names them."""
    for problem in problems:
        if problem.phase == phase and problem.key == key:
            text = str(problem)
            assert key in text
            if phase is not None:
                assert f"phase {phase}" in text
            return problem
    pytest.fail(f"no problem for phase={phase} key={key!r} in:\n" +
                "\n".join(str(p) for p in problems))


def two_phases(**phase1: Any) -> dict[str, Any]:
    """Phase 0 (head) and a phase 1 (top block) with extra keys."""
    return {
        "0": {"params": ["output.weight", "norm.weight"], "max_transition_step": 100},
        "1": {"params": [r"layers\.5\..+"], **phase1},
    }


def qwen3_debug_names() -> list[str]:
    """Every name of torchtitan's qwen3 debug model's parameters, the tied head's
    ``output.weight`` (the embedding, registered first as ``tok_embeddings.weight``) too."""
    with torch.device("meta"):
        model = get_train_spec("qwen3").model_cls(copy.deepcopy(qwen3_args["debugmodel"]))
    return [n for n, _ in model.named_parameters(remove_duplicate=False)]


QWEN3_TIED = {"output.weight": "tok_embeddings.weight"}
