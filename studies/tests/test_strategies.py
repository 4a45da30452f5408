"""The strategies' schedules and the default schedule's scaling to a budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from studies.forgetting.strategies import (
    cycle_steps_per_phase,
    default_job,
    model_blocks,
    scale_schedule,
    strategies,
)


def test_default_schedule_unchanged_at_the_default_budget() -> None:
    job = default_job()
    schedule = job["phases"]["schedule"]
    assert scale_schedule(schedule, job["training"]["steps"], job["training"]["steps"]) == schedule


def test_scaling_moves_transitions_and_cosine_length() -> None:
    schedule = {
        "0": {"params": ["a"], "max_transition_step": 20},
        "1": {"params": ["b"], "max_transition_step": 40},
        "2": {"params": ["c"], "new_lr_scheduler": {"class_path": "CosineAnnealingLR",
                                                     "init_args": {"T_max": 20, "eta_min": 0.1}}},
    }
    scaled = scale_schedule(schedule, 60, 6)
    assert [scaled[k].get("max_transition_step") for k in "012"] == [2, 4, None]
    assert scaled["2"]["new_lr_scheduler"]["init_args"] == {"T_max": 2, "eta_min": 0.1}
    assert schedule["0"]["max_transition_step"] == 20  # the input is left alone


def test_too_few_steps_for_the_phases() -> None:
    schedule = {"0": {"params": ["a"], "max_transition_step": 20},
                "1": {"params": ["b"], "max_transition_step": 40}, "2": {"params": ["c"]}}
    with pytest.raises(ValueError, match="too few"):
        scale_schedule(schedule, 60, 2)


def test_strategy_job_arguments(tmp_path: Path) -> None:
    by_name = {s.name: s for s in strategies(60, blocks=6)}
    assert list(by_name) == ["full", "head_only", "default", "generated", "badam", "badam_bf16",
                             "lisa"]
    path = tmp_path / "s.toml"
    assert by_name["full"].job_args(path) == ["--phases.schedule_file", str(path)]
    assert "--phases.schedule_file" not in by_name["generated"].job_args(path)
    by_name["generated"].write(path)
    assert not path.exists()
    by_name["head_only"].write(path)
    assert "layers\\.5\\..+" in path.read_text()


def _flags(args: list[str]) -> dict[str, str | None]:
    """``{flag: its value, or None for a bare flag}``."""
    flags: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            value = args[i + 1] if i + 1 < len(args) else None
            flags[arg] = None if value is None or value.startswith("--") else value
    return flags


def test_block_cyclic_strategies(tmp_path: Path) -> None:
    by_name = {s.name: s for s in strategies(60, blocks=6)}
    badam = _flags(by_name["badam"].job_args(tmp_path / "s.toml"))
    # Two passes over 6 blocks in 60 steps; the head, final norm and embeddings never train.
    assert badam == {"--phases.cycle.enable": None, "--phases.cycle.order": "descending",
                     "--phases.cycle.blocks_per_phase": "1",
                     "--phases.cycle.steps_per_phase": "5", "--phases.cycle.passes": "0"}
    bf16 = by_name["badam_bf16"]
    assert (bf16.storage_dtype, bf16.variant_of) == ("bfloat16", "badam")
    assert _flags(bf16.job_args(tmp_path / "s.toml")) == {
        **badam, "--training.dtype": "bfloat16", "--phases.fp32_master_weights": None}
    lisa = _flags(by_name["lisa"].job_args(tmp_path / "s.toml"))
    assert lisa["--phases.cycle.order"] == "sampled"
    assert lisa["--phases.cycle.blocks_per_phase"] == "2"
    assert lisa["--phases.cycle.always_train"] == "tok_embeddings.weight,output.weight,norm.weight"
    bf16.write(tmp_path / "s.toml")
    assert not (tmp_path / "s.toml").exists()


def test_cycle_phases_fit_the_budget() -> None:
    assert cycle_steps_per_phase(60, 6) == 5
    assert cycle_steps_per_phase(61, 6) == 5
    assert cycle_steps_per_phase(6, 6) == 1  # the quick run: one step per phase
    assert model_blocks() == 6  # the debug model
