"""The run plan: every repeat's jobs back to back, order alternating, scaling, the layout rows
(FSDP2 x TP2, PP2) and the cyclic row in early repeats; row selection; each layout's rank
count; the cyclic row's jobs."""

from __future__ import annotations

from bench import cyclic
from bench.jobs import job_args
from bench.run import CYCLIC, FSDP2_TP2, MAIN, plan, PP2, Settings

CYCLIC_LABELS = ["stock-d6-cyclic", "fp32-d6-cyclic", "bf16_storage-d6-cyclic",
                 "bf16_compute-d6-cyclic", "bf16_storage_compute-d6-cyclic"]


def test_plan() -> None:
    order = plan(Settings(repeats=3, scaling_repeats=2, layout_repeats=1, cyclic_repeats=1))
    labels = [(repeat, job.label) for repeat, _, _, job in order]
    assert len(labels) == 3 * 3 + 2 * 4 + 1 * 4 + 1 * 5
    assert len({label for label in labels}) == len(labels)  # every job its own dump folder
    assert labels[:3] == [(0, "stock-d6"), (0, "phased-d6"), (0, "all-d6")]
    assert [label for repeat, label in labels if repeat == 0][-9:] == [
        "stock-d6-tp2", "phased-d6-tp2", "stock-d6-pp2", "phased-d6-pp2", *CYCLIC_LABELS
    ]
    assert [label for repeat, label in labels if repeat == 1][-3:] == [
        "all-d6", "phased-d6", "stock-d6"
    ]
    assert [label for repeat, label in labels if repeat == 2] == ["stock-d6", "phased-d6", "all-d6"]


def test_phased_jobs_carry_their_schedule() -> None:
    settings = Settings(repeats=1, scaling_repeats=1, layout_repeats=1, cyclic_repeats=1)
    for _, model, kind, job in plan(settings):
        if model.row == "cyclic":
            continue
        assert (job.schedule is None) == (kind == "stock")
        per_phase = {"main": settings.steps_per_phase,
                     "scaling": settings.scaling_steps_per_phase,
                     "fsdp2_tp2": settings.layout_steps_per_phase,
                     "pp2": settings.layout_steps_per_phase}[model.row]
        assert job.steps == (3 if kind == "phased" else 2) * per_phase
        assert not job.log_every_rank


def test_cyclic_jobs(tmp_path) -> None:
    settings = Settings(cyclic_repeats=2, cyclic_steps_per_phase=7, rows=("cyclic",))
    order = plan(settings)
    assert [(repeat, job.label) for repeat, _, _, job in order] == [
        *[(0, label) for label in CYCLIC_LABELS], *[(1, label) for label in CYCLIC_LABELS[::-1]]
    ]
    jobs = {kind: job for repeat, _, kind, job in order if repeat == 0}
    assert all(job.log_every_rank and job.schedule is None for job in jobs.values())
    assert jobs["stock"].model == "llama3" and jobs["stock"].steps == 14
    assert jobs["stock"].args == ()
    for variant in cyclic.VARIANTS:
        job = jobs[variant.name]
        # one pass over the 6 blocks, 7 steps each
        assert job.model == "llama3_phases" and job.steps == 6 * 7
        args = job_args(job, tmp_path / "dump", tmp_path)
        assert "--phases.schedule_file" not in args
        cycle = args[args.index("--phases.cycle.enable"):]
        assert cycle[cycle.index("--phases.cycle.steps_per_phase") + 1] == "7"
        assert cycle[cycle.index("--training.mixed_precision_param") + 1] == variant.compute
        assert ("--phases.fp32_master_weights" in args) == (variant.storage == "bfloat16")
    assert CYCLIC.ranks(2) == 2


def test_one_row_alone() -> None:
    settings = Settings(repeats=5, layout_repeats=2, rows=("fsdp2_tp2",))
    order = [(repeat, job.label) for repeat, _, _, job in plan(settings)]
    assert order == [(0, "stock-d6-tp2"), (0, "phased-d6-tp2"),
                     (1, "phased-d6-tp2"), (1, "stock-d6-tp2")]


def test_layout_jobs_pass_their_layout_last(tmp_path) -> None:
    (_, model, _, job), = [e for e in plan(Settings(layout_repeats=1, rows=("fsdp2_tp2",)))
                           if e[2] == "stock"]
    args = job_args(job, tmp_path / "dump", tmp_path)
    assert args[-2:] == ["--parallelism.tensor_parallel_degree", "2"]
    assert model.tp == 2
    main_args = job_args(plan(Settings(rows=("main",)))[0][3], tmp_path / "dump", tmp_path)
    assert "--parallelism.tensor_parallel_degree" not in main_args


def test_layout_rank_counts() -> None:
    assert (MAIN.ranks(2), FSDP2_TP2.ranks(2), PP2.ranks(2)) == (2, 4, 2)
    assert (MAIN.metrics_rank(2), FSDP2_TP2.metrics_rank(2), PP2.metrics_rank(2)) == (0, 0, 1)
    assert PP2.name == "d6-pp2"
    (_, model, _, job), = [e for e in plan(Settings(layout_repeats=1, rows=("pp2",)))
                           if e[2] == "phased"]
    assert model is PP2 and job.args == (
        "--parallelism.pipeline_parallel_degree", "2",
        "--parallelism.data_parallel_shard_degree", "1",
    )
