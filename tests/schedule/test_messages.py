"""Schedule messages quote names, regexes and values as the user wrote them in TOML (or on the
command line): a regex's backslashes single, never Python's doubled ``repr``."""

from __future__ import annotations

import pytest

from titan_phases.config.job_config import Cycle
from titan_phases.schedule.matching import as_written

from .conftest import find_problem, make_job, problems_of, two_phases

BLOCKS_3_4 = r"layers\.[34]\..+"


@pytest.mark.parametrize("value, written", [
    (BLOCKS_3_4, r"'layers\.[34]\..+'"),
    ("output.weight", "'output.weight'"),
    ("it's", '"it\'s"'),
    ("it's\\.", '"it\'s\\\\."'),  # a TOML basic string: there the backslash is doubled
    ([BLOCKS_3_4, 1], r"['layers\.[34]\..+', 1]"),
    (0.5, "0.5"),
])
def test_as_written(value, written):
    assert as_written(value) == written


def _rendered(job) -> str:
    return "\n".join(str(p) for p in problems_of(job))


@pytest.mark.parametrize("phase1, key, expected", [
    ({"params": [r"layers\.[34]\.x.+"]}, "params[0]",
     r"'layers\.[34]\.x.+' matches no parameter of the model"),
    ({"params": r"layers\.5\..+"}, "params",
     r"expected a list, got the string 'layers\.5\..+' -> write params = ['layers\.5\..+']"),
    ({"params": [r"layers\.5\..+", r"layers\.5\..+"]}, "params[1]",
     r"'layers\.5\..+' is listed twice"),
    ({"params": [r"layers\.(5\..+"]}, "params[0]", r"invalid regex 'layers\.(5\..+'"),
    ({"params": [r"(norm|layers\.5)\..+"]}, "params[0]",
     r"'(norm|layers\.5)\..+' also selects 1 parameter(s) already in phase 0"),
    ({"params": [r"layers\.4\..+"], "freeze": [r"layers\.3\..+"]}, "freeze[0]",
     r"'layers\.3\..+' selects 9 parameter(s) that do not train before phase 1"),
])
def test_phase_messages_quote_regexes_as_written(phase1, key, expected):
    message = str(find_problem(problems_of(make_job(two_phases(**phase1))), 1, key))
    assert expected in message
    assert "\\\\" not in message


def test_settings_messages_quote_regexes_as_written():
    job = make_job(steps=60, cycle=Cycle(enable=True, steps_per_phase=5,
                                         always_train=[r"layers\.9\..+"]))
    text = _rendered(job)
    assert r"'layers\.9\..+' matches no parameter of the model" in text
    assert "\\\\" not in text
    job = make_job(two_phases(), lr_scale=r"1e\-3")
    message = str(find_problem(problems_of(job), None, "phases.lr_scale"))
    assert r"got '1e\-3'" in message and "\\\\" not in message
