"""The TOML writer round-trips through tomllib."""

from __future__ import annotations

import tomllib

import pytest

from titan_phases.config.toml_writer import dumps, value_to_toml


def test_round_trip_of_schedule_like_data():
    data = {
        "0": {"params": ["output.weight", "norm.weight", r"layers\.5\..+", "it's", "a\\b\"c"],
              "max_transition_step": 10},
        "1": {
            "params": ["x"], "lr": 1e-05, "max_norm": 0.5,
            "new_optimizer": {"class_path": "torch.optim.AdamW",
                              "init_args": {"betas": [0.9, 0.99], "nested": {"k": "v\n\t"},
                                            "empty": {}, "flag": False}},
            "new_lr_scheduler": {"class_path": "StepLR", "init_args": {},
                                 "init_pg_lrs": [1e-06, 2.0]},
        },
        "odd key": {"inf": float("inf"), "neg": -3, "lists": [[1, 2], [{"a": 1}]], "ctl": "\x01"},
    }
    text = dumps(data, header="header line\nsecond", comments={"1": "phase one"})
    assert tomllib.loads(text) == data
    assert text.startswith("# header line\n# second\n")
    assert "# phase one\n[1]" in text
    assert r"'layers\.5\..+'" in text  # regexes as literal strings
    assert "[1.new_optimizer]" in text


def test_long_param_lists_are_wrapped():
    names = [f"layers.{i}.attention.wq.weight" for i in range(4)]
    text = dumps({"0": {"params": names}})
    assert text.count("\n    ") == 4
    assert tomllib.loads(text) == {"0": {"params": names}}


@pytest.mark.parametrize("value", [None, object()])
def test_unsupported_values_raise(value):
    with pytest.raises(ValueError):
        value_to_toml(value)


def test_nan_is_written():
    assert value_to_toml(float("nan")) == "nan"
