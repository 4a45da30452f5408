"""The phase table rows and their rendering."""

from __future__ import annotations

from tests.schedule.conftest import make_job
from titan_phases.schedule import load_and_validate
from titan_phases.schedule.table import COLUMNS, phase_rows, render_table

SCHEDULE = {
    "0": {"params": ["output.weight", "norm.weight"], "max_transition_step": 100},
    "1": {"params": [r"layers\.5\..+"], "lr": 1e-4,
          "new_optimizer": {"class_path": "SGD", "init_args": {"lr": 1e-3}},
          "new_lr_scheduler": {"class_path": "StepLR", "init_args": {"step_size": 10}}},
    "2": {"params": [r"layers\.4\..+"]},
}


def rows_for(**kwargs):
    job = make_job(SCHEDULE, **kwargs)
    return phase_rows(load_and_validate(job), job)


def test_rows_in_both_mode():
    rows = rows_for(transition_mode="both", validation=True, patience=2)
    assert [r["phase"] for r in rows] == [0, 1, 2, "frozen"]
    assert rows[0]["transition"] == "after step 100 or plateau (patience 2)"
    assert rows[1]["transition"] == "plateau (patience 2)"
    assert rows[2]["transition"] == "end of training (step 1000)"
    assert rows[0]["optimizer"] == "AdamW [optimizer]"
    assert rows[1]["optimizer"] == "SGD (new)" and rows[2]["optimizer"] == "SGD"
    assert rows[1]["scheduler"] == "StepLR (new)" and rows[2]["scheduler"] == "StepLR"
    assert rows[2]["lr"] == 1e-3  # the SGD's lr
    assert rows[3]["tensors"] == 57 - 2 - 18
    assert sum(r["elements"] for r in rows) == 6_163_712


def test_rendered_columns_line_up():
    lines = render_table(rows_for(transition_mode="both", validation=True)).splitlines()
    assert lines[0].split()[:3] == list(COLUMNS[:3])
    end = lines[0].index("tensors") + len("tensors")
    for line in lines[2:]:  # numbers are right-aligned under their header
        assert line[end - 1] != " " and line[end] == " ", line
