"""Rendering results as BENCHMARKS.md's generated section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.report import BEGIN, END, fmt, render, update_markdown
from bench.summary import targets


@pytest.fixture
def results(model_summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "generated": "2026-01-01T00:00:00", "command": "python -m bench.run", "wall_s": 600.0,
        "machine": {"cpu": "CPU", "cores": 2, "ram_gib": 24.0, "load_before": 1.0,
                    "load_after": 2.0,
                    "cpu_busy_before_jobs": {"median": 0.1, "low": 0.0, "high": 0.5, "n": 4}},
        "versions": {"python": "3.11", "torch": "2.13", "torchtitan": "0.2.2",
                     "titan_phases": "git abc"},
        "config": {"job": "job", "steps": "steps", "repeats": 2, "scaling_repeats": 2,
                   "settings": {"nproc": 2}},
        "main": "2", "targets": targets(model_summary),
        "models": {"2": {**model_summary,
                         "overhead": {**model_summary["overhead"], "controller_due_us": 0.3}}},
    }


def test_fmt() -> None:
    stat = {"median": 0.5, "low": 0.25, "high": 1.0, "n": 3}
    assert fmt(stat, 2) == "0.50 [0.25, 1.00]"
    assert fmt(stat, 1, pct=True) == "+50.0% [+25.0%, +100.0%]"
    assert fmt({**stat, "n": 1}, 1, scale=1000) == "500.0"
    assert fmt({**stat, "n": 0}) == "–"


def test_render_has_every_section(results: dict[str, Any]) -> None:
    text = render(results)
    assert text.startswith(BEGIN) and text.rstrip().endswith(END)
    for heading in ("Configuration", "Targets", "Step time per phase", "Transitions",
                    "Optimizer state per rank", "Controller overhead", "Scaling"):
        assert f"### {heading}" in text
    assert "**missed**" in text  # the synthetic transition costs 1.2 steps
    assert "| 0 -> 1 | 20.0 [20.0, 20.0] |" in text


def test_update_markdown_keeps_the_prose(tmp_path: Path, results: dict[str, Any]) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Title\n\nintro\n\n{BEGIN}\nold\n{END}\n\n## After\n")
    update_markdown(path, results)
    text = path.read_text()
    assert text.startswith("# Title\n\nintro\n\n" + BEGIN)
    assert "old" not in text and text.endswith(f"{END}\n\n## After\n")
    update_markdown(path, results)
    assert path.read_text() == text
