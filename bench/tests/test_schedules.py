"""Benchmark schedules: the three-phase split at any depth, valid schedule TOML."""

from __future__ import annotations

import re
import tomllib

import pytest

from bench.schedules import all_params, three_phase, three_phase_params


def _matched(patterns: list[str], names: list[str]) -> set[str]:
    return {n for n in names if any(p == n or re.fullmatch(p, n) for p in patterns)}


@pytest.mark.parametrize("n_layers", [3, 6, 12])
def test_three_phases_cover_every_parameter_once(n_layers: int) -> None:
    names = ["tok_embeddings.weight", "norm.weight", "output.weight"] + [
        f"layers.{i}.attention.wq.weight" for i in range(n_layers)
    ]
    phases = [_matched(p, names) for p in three_phase_params(n_layers)]
    assert set().union(*phases) == set(names)
    assert sum(len(p) for p in phases) == len(names)
    assert f"layers.{n_layers - 1}.attention.wq.weight" in phases[0]
    assert "tok_embeddings.weight" in phases[2]


def test_six_blocks_is_the_default_jobs_split() -> None:
    names = [f"layers.{i}.w" for i in range(6)]
    assert [sorted(_matched(p, names)) for p in three_phase_params(6)] == [
        ["layers.5.w"], ["layers.3.w", "layers.4.w"], ["layers.0.w", "layers.1.w", "layers.2.w"]
    ]


def test_block_regex_does_not_match_longer_indices() -> None:
    (middle,) = three_phase_params(12)[1]
    assert not re.fullmatch(middle, "layers.70.w")
    assert re.fullmatch(middle, "layers.7.w")


def test_three_phase_toml() -> None:
    parsed = tomllib.loads(three_phase(6, steps_per_phase=8))
    assert [parsed[k].get("max_transition_step") for k in ("0", "1", "2")] == [8, 16, None]
    assert parsed["1"]["params"] == ["layers\\.(3|4)\\..+"]


def test_all_params_toml() -> None:
    assert tomllib.loads(all_params()) == {"0": {"params": [".*"]}}


def test_too_few_blocks() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        three_phase_params(2)
