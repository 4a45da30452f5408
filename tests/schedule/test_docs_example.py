"""The examples in docs/schedule.md validate against the llama3 debug model."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from titan_phases.schedule import load_and_validate

from .conftest import make_job, NUM_DEBUGMODEL_PARAMS

DOC = Path(__file__).resolve().parents[2] / "docs" / "schedule.md"


def toml_block(containing: str) -> str:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S)
    return next(b for b in blocks if containing in b)


def test_full_example_schedule_file_validates(tmp_path):
    path = tmp_path / "schedule.toml"
    path.write_text(toml_block("[2.new_lr_scheduler]"))
    resolved = load_and_validate(make_job(schedule_file=str(path), steps=1000))
    assert resolved.num_phases == 3
    assert sum(map(len, resolved.phase_params)) == NUM_DEBUGMODEL_PARAMS
    assert resolved.group_lr(2) == 5e-5


def test_inline_example_validates():
    inline = tomllib.loads(toml_block("[phases.schedule.0]"))["phases"]["schedule"]
    resolved = load_and_validate(make_job(inline, steps=1000))
    assert sum(map(len, resolved.phase_params)) == NUM_DEBUGMODEL_PARAMS
