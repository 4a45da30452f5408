"""The run plan: every repeat's jobs back to back, order alternating, scaling in early repeats."""

from __future__ import annotations

from bench.run import plan, Settings


def test_plan() -> None:
    order = plan(Settings(repeats=3, scaling_repeats=2))
    labels = [(repeat, job.label) for repeat, _, _, job in order]
    assert len(labels) == 3 * 3 + 2 * 4
    assert labels[:3] == [(0, "stock-d6"), (0, "phased-d6"), (0, "all-d6")]
    assert [label for repeat, label in labels if repeat == 1][-3:] == [
        "all-d6", "phased-d6", "stock-d6"
    ]
    assert [label for repeat, label in labels if repeat == 2] == ["stock-d6", "phased-d6", "all-d6"]


def test_phased_jobs_carry_their_schedule() -> None:
    settings = Settings(repeats=1, scaling_repeats=1)
    for _, model, kind, job in plan(settings):
        assert (job.schedule is None) == (kind == "stock")
        per_phase = (
            settings.steps_per_phase if model.depth == 6 else settings.scaling_steps_per_phase
        )
        assert job.steps == (3 if kind == "phased" else 2) * per_phase
