"""The strategies' schedules and the default schedule's scaling to a budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from studies.forgetting.strategies import default_job, scale_schedule, strategies


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
    by_name = {s.name: s for s in strategies(60)}
    assert list(by_name) == ["full", "head_only", "default", "generated"]
    path = tmp_path / "s.toml"
    assert by_name["full"].job_args(path) == ["--phases.schedule_file", str(path)]
    assert "--phases.schedule_file" not in by_name["generated"].job_args(path)
    by_name["generated"].write(path)
    assert not path.exists()
    by_name["head_only"].write(path)
    assert "layers\\.5\\..+" in path.read_text()
