"""titan-phases plot draws exactly the series the metrics file holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.test_timeline import write_logged_every_5_steps, write_resumed_run
from titan_phases.cli import main
from titan_phases.interop.plot import DPI, FIGURE_INCHES, plot_timeline
from titan_phases.interop.timeline import read_timeline

pytest.importorskip("matplotlib")


def lines_by_label(figure) -> dict[str, tuple[list, list]]:
    """``{label: (x, y)}`` of every line drawn in the figure."""
    return {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for ax in figure.axes for line in ax.get_lines()
    }


def test_every_line_is_a_series_of_the_file(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    write_resumed_run(path)
    figure = plot_timeline(read_timeline(path), "run")
    drawn = lines_by_label(figure)
    assert drawn["training loss"][0] == [1, 2, 3, 4, 5]
    assert drawn["training loss"][1][:4] == [4.0, 3.5, 3.2, 3.0]
    assert drawn["validation loss"] == ([2], [3.6])
    assert drawn["group 0 (phase 0)"] == ([1, 2, 3, 4, 5], [1e-3, 9e-4, 8e-4, 7e-4, 6e-4])
    assert drawn["group 1 (phase 1)"] == ([4, 5], [5e-4, 4e-4])
    # Each phase's count across its band (phase 0: steps 1-3, phase 1: 4-5).
    assert drawn["trainable params"] == ([0.5, 3.5, 3.5, 5.5], [10, 10, 30, 30])
    assert "2 process starts" in figure.get_suptitle()
    assert "ended early: diverged" in figure.get_suptitle()
    labels = [t.get_text() for t in figure.axes[0].texts]
    assert labels == ["phase 0", "phase 1\nmax_transition_step"]


def test_trainable_params_step_up_where_the_phase_bands_begin(tmp_path: Path):
    # log_freq 5, phases 0 -> 1 after step 20 and 1 -> 2 after step 40: the bands begin at 20.5
    # and 40.5, and so must the steps of the trainable-params line (not at the first steps
    # logged in phases 1 and 2, 25 and 45).
    path = tmp_path / "metrics.jsonl"
    write_logged_every_5_steps(path)
    figure = plot_timeline(read_timeline(path), "run")
    xs, counts = lines_by_label(figure)["trainable params"]
    spans = [patch.get_x() for patch in figure.axes[2].patches]
    assert spans == [4.5, 20.5, 40.5]
    assert xs == [4.5, 20.5, 20.5, 40.5, 40.5, 60.5]
    assert counts == [10, 10, 20, 20, 30, 30]


def test_the_command_writes_a_png_of_the_figure_size(tmp_path: Path, capsys):
    import matplotlib.image

    write_resumed_run(tmp_path / "metrics.jsonl")
    assert main(["plot", str(tmp_path)]) == 0
    image = matplotlib.image.imread(tmp_path / "timeline.png")
    width, height = FIGURE_INCHES
    assert image.shape[:2] == (round(height * DPI), round(width * DPI))
    assert "steps 1-5, 2 phase(s), 2 process start(s)" in capsys.readouterr().out


def test_a_missing_or_empty_file_is_a_clear_error(tmp_path: Path, capsys):
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "does not exist: give a run's metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"type": "run_start"}\n')
    assert main(["plot", str(tmp_path)]) == 2
    assert "holds no training step yet" in capsys.readouterr().err
