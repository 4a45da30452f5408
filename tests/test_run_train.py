"""The README's training command, end to end: ./run_train.sh runs the default phased job."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests import launches
from tests.trainer.jobs import measured_state_bytes, model_tensors, planned_state_bytes
from titan_phases.components.metrics_file import read_metrics

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dump = tmp_path_factory.mktemp("default_job") / "run"
    # --job.dump_folder also shows that run_train.sh hands its arguments to every rank: the
    # tests below read what the ranks wrote there.
    env = {k: v for k, v in os.environ.items() if k != "TITAN_PHASES_CACHE"}
    result = launches.run(
        "./run_train.sh (the default job)", ["./run_train.sh", "--job.dump_folder", str(dump)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return dump


def test_default_job_passes_through_every_phase_and_learns(default_job: Path):
    metrics = read_metrics(default_job)
    assert metrics.starts == 1
    train = list(metrics.train.values())
    assert sorted({r["phase"] for r in train}) == [0, 1, 2]
    assert train[-1]["step"] == 60
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    assert metrics.validation
    assert list((default_job / "tb").rglob("events.out.tfevents.*"))
    assert sorted(p.name for p in (default_job / "checkpoint").iterdir()) == [
        "step-20", "step-40", "step-60",
    ]


def test_plan_predicts_the_default_jobs_optimizer_state_bytes_exactly(default_job: Path):
    measured = measured_state_bytes(list(read_metrics(default_job).train.values()))
    assert sorted(measured) == [0, 1, 2]
    assert measured == planned_state_bytes(
        2, "--job.config_file", str(REPO / "train_configs" / "debug_model.toml")
    )


def test_frozen_params_stay_bitwise_until_their_phase_thaws_them(default_job: Path, tmp_path: Path):
    import tomllib

    config = tomllib.loads((REPO / "train_configs/debug_model.toml").read_text())
    pretrained = model_tensors(
        REPO / config["checkpoint"]["initial_load_path"], tmp_path / "pretrained.pt"
    )
    at = {
        step: model_tensors(default_job / "checkpoint" / f"step-{step}", tmp_path / f"{step}.pt")
        for step in (20, 40, 60)
    }

    def block(name: str) -> int | None:
        parts = name.split(".")
        return int(parts[1]) if parts[0] == "layers" else None

    def thawed_in(name: str) -> int:  # the default schedule
        if name in ("output.weight", "norm.weight") or block(name) == 5:
            return 0
        if block(name) in (3, 4):
            return 1
        return 2

    # Checkpoint at step 20 holds the end of phase 0, at 40 the end of phase 1, at 60 phase 2.
    for phase, step in enumerate((20, 40, 60)):
        for name, tensor in pretrained.items():
            changed = not torch.equal(at[step][name], tensor)
            assert changed == (thawed_in(name) <= phase), (name, step)


def test_plot_draws_the_default_job_from_its_metrics(default_job: Path, tmp_path: Path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from titan_phases.cli import main
    from titan_phases.interop.plot import plot_timeline
    from titan_phases.interop.timeline import read_timeline

    out = tmp_path / "timeline.png"
    assert main(["plot", str(default_job), "--out", str(out)]) == 0
    assert matplotlib.image.imread(out).shape[:2] == (900, 1000)

    metrics = read_metrics(default_job)
    train = metrics.train
    validation = {step: r["loss"] for step, r in metrics.validation.items()}
    figure = plot_timeline(read_timeline(default_job / "metrics.jsonl"), "default job")
    drawn = {line.get_label(): line for ax in figure.axes for line in ax.get_lines()}
    steps = sorted(train)
    assert list(drawn["training loss"].get_xdata()) == steps
    assert list(drawn["training loss"].get_ydata()) == [train[s]["loss"] for s in steps]
    assert list(drawn["validation loss"].get_ydata()) == [validation[s] for s in sorted(validation)]
    for group in range(3):
        lr = drawn[f"group {group} (phase {group})"]
        in_group = [s for s in steps if len(train[s]["lr"]) > group]
        assert list(lr.get_xdata()) == in_group
        assert list(lr.get_ydata()) == [train[s]["lr"][group] for s in in_group]
    # A step line: each phase's count held across its band, the band edges between the steps.
    per_phase = {train[s]["phase"]: train[s]["trainable_params"] for s in steps}
    assert list(drawn["trainable params"].get_ydata()) == [
        per_phase[p] for p in sorted(per_phase) for _ in (0, 1)
    ]
    assert drawn["trainable params"].get_drawstyle() == "steps-post"
