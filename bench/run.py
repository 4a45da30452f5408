"""``python -m bench.run``: the benchmark suite of titan_phases against stock torchtitan.

Writes every figure and every job's per-step records to ``results.json`` in the run's output
folder (``outputs/bench/<time>/`` by default; not tracked by git) and the summary tables to the
generated section of BENCHMARKS.md (between :data:`bench.report.BEGIN` and ``END``).

For each model size it runs, on 2 CPU ranks (FSDP2 over gloo), back to back in every repeat:

* ``stock``: torchtitan's own Trainer and builders (model ``llama3``), all params trainable;
* ``phased``: PhasedTrainer with the three-phase schedule of :mod:`bench.schedules`;
* ``all`` (6 blocks only): PhasedTrainer with one phase training everything (overhead).

The 6-block ``debugmodel`` is the main subject (row ``main``); 3 and 12 blocks
(``bench.spec``, row ``scaling``) show scaling with fewer repeats. Row ``fsdp2_tp2`` runs the
6-block stock and phased jobs on FSDP2 x TP2 (:data:`FSDP2_TP2`), row ``pp2`` on 2 pipeline
stages (:data:`PP2`, schedule 1F1B; its ideal ratios are 1F1B makespan ratios from
:mod:`bench.pipeline_ideal`). Row ``cyclic`` runs stock and a block-cyclic pass over the 6
blocks in four storage and compute dtypes (:mod:`bench.cyclic`). Job order alternates between
repeats. ``--quick`` runs one short repeat of everything; ``--rows`` runs some rows only. Both
write their BENCHMARKS.md into the output folder, leaving the repository's alone (for
development; a quick run's numbers mean little). ``--merge`` with layout rows or the cyclic row
replaces only their blocks in the repository's file.

**Limitations**
Timings are wall-clock on whatever else the machine runs; the report states the load average
before and after. Only CPU/gloo was measured: GPU step-time ratios will differ. The FSDP2 x TP2
jobs run 4 ranks on the 2 cores of the machine they were written for: the CPU is
oversubscribed, in stock and phased jobs alike. The PP2 row's ideal is a model (1F1B makespans
of FLOP-counted actions, sends free; see :mod:`bench.pipeline_ideal`), not a measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from bench import cyclic, jobs, machine, report, schedules, summary
from bench.analysis import ModelFacts, Stat
from bench.expectations import expect
from bench.micro import controller_due_seconds, matmul_gflops
from bench.spec import PHASED_SPEC, STOCK_SPEC
from titan_phases.data.assets import ensure_assets, tokenizer_dir

RESULTS_FILE = "results.json"  # in the run's output folder, beside the jobs' dumps and logs
MARKDOWN = jobs.REPO / "BENCHMARKS.md"


ROWS = ("main", "scaling", "fsdp2_tp2", "pp2", "cyclic")
# Rows whose block in BENCHMARKS.md names its own run, so that --merge can replace it alone.
MERGEABLE = ("fsdp2_tp2", "pp2", "cyclic")


@dataclass(frozen=True)
class Settings:
    repeats: int = 5
    scaling_repeats: int = 2
    # Layout rows (FSDP2 x TP2 runs 4 ranks on the 2 cores, each step about twice as long; PP2):
    # fewer repeats and steps.
    layout_repeats: int = 2
    steps_per_phase: int = 7
    scaling_steps_per_phase: int = 5
    layout_steps_per_phase: int = 5
    # The cyclic row: stock and four cycle variants per repeat, one block per phase.
    cyclic_repeats: int = 3
    cyclic_steps_per_phase: int = 7
    # Steps at the start of every phase (and job) left out of its steady median: the first
    # holds the transition (or process warm-up), the second may still pay lazy allocations.
    skip: int = 2
    nproc: int = 2
    # Before each job, wait (up to max_wait_s) until other work uses at most this share of the
    # CPUs: the machine is shared, and a job that starts under load measures the load.
    quiet_threshold: float = 0.15
    max_wait_s: float = 45.0
    max_total_wait_s: float = 240.0  # bounds the suite's wall time on a machine that stays busy
    rows: tuple[str, ...] = ROWS


QUICK = Settings(repeats=1, scaling_repeats=1, layout_repeats=1, cyclic_repeats=1,
                 steps_per_phase=4, scaling_steps_per_phase=4, cyclic_steps_per_phase=4,
                 max_wait_s=0.0, max_total_wait_s=0.0)


@dataclass(frozen=True)
class ModelSpec:
    """A model size on a layout, the row it belongs to and the arguments of its jobs.

    Its jobs run on :meth:`ranks` ranks: ``dp_shard x tp x pp``.

    Attributes:
        dp_shard: FSDP2 degree; None: ``Settings.nproc`` (the data-parallel degree of the 1-D
            FSDP rows).
        tp: tensor-parallel degree.
        pp: pipeline-parallel degree (pipeline stages).
        args: torchtitan arguments of every job of the model, on top of the base job; they set
            the degrees above (the runner does not derive them).
    """

    depth: int
    flavor: str
    stock_model: str
    phased_model: str
    row: str
    custom_import: str | None = None
    dp_shard: int | None = None
    tp: int = 1
    pp: int = 1
    args: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return (f"d{self.depth}" + (f"-tp{self.tp}" if self.tp > 1 else "")
                + (f"-pp{self.pp}" if self.pp > 1 else ""))

    def ranks(self, nproc: int) -> int:
        """Ranks of its jobs when the 1-D rows run on ``nproc``."""
        return (nproc if self.dp_shard is None else self.dp_shard) * self.tp * self.pp

    def metrics_rank(self, nproc: int) -> int:
        """The rank that writes the TensorBoard events the runner reads: torchtitan logs from
        the first rank of the last pipeline stage (rank 0 without PP)."""
        return self.ranks(nproc) // self.pp * (self.pp - 1)


MAIN = ModelSpec(6, "debugmodel", "llama3", "llama3_phases", "main")
SCALING = (
    ModelSpec(3, "depth3", STOCK_SPEC, PHASED_SPEC, "scaling", "bench.spec"),
    ModelSpec(12, "depth12", STOCK_SPEC, PHASED_SPEC, "scaling", "bench.spec"),
)
FSDP2_TP2 = ModelSpec(
    6, "debugmodel", "llama3", "llama3_phases", "fsdp2_tp2", tp=2,
    args=("--parallelism.tensor_parallel_degree", "2"),
)
# 2 pipeline stages, no data parallelism; torchtitan's defaults otherwise: schedule 1F1B,
# microbatches of 1 sample (the local batch gives the number of microbatches).
PP2 = ModelSpec(
    6, "debugmodel", "llama3", "llama3_phases", "pp2", dp_shard=1, pp=2,
    args=("--parallelism.pipeline_parallel_degree", "2",
          "--parallelism.data_parallel_shard_degree", "1"),
)
LAYOUT_TITLES = {"fsdp2_tp2": "FSDP2 x TP2", "pp2": "PP2 (1F1B)"}
CYCLIC = ModelSpec(6, "debugmodel", "llama3", "llama3_phases", "cyclic")


def model_jobs(model: ModelSpec, steps_per_phase: int, with_all: bool) -> dict[str, jobs.Job]:
    """The jobs of one model in one repeat, by kind (stock, phased, all; the cyclic row: stock
    and its variants' names)."""
    if model.row == "cyclic":
        return cyclic.cyclic_jobs(model.depth, model.flavor, model.stock_model,
                                  model.phased_model, steps_per_phase)
    found = {
        "stock": jobs.Job(f"stock-{model.name}", model.stock_model, model.flavor,
                          2 * steps_per_phase, None, model.custom_import, model.args),
        "phased": jobs.Job(f"phased-{model.name}", model.phased_model, model.flavor,
                           3 * steps_per_phase,
                           schedules.three_phase(model.depth, steps_per_phase),
                           model.custom_import, model.args),
    }
    if with_all:
        found["all"] = jobs.Job(f"all-{model.name}", model.phased_model, model.flavor,
                                2 * steps_per_phase, schedules.all_params(), model.custom_import,
                                model.args)
    return found


def row_models(settings: Settings) -> list[tuple[ModelSpec, int, int, bool]]:
    """``(model, repeats, steps per phase, with the one-phase job)`` of every selected row."""
    rows = [(MAIN, settings.repeats, settings.steps_per_phase, True)]
    rows += [(model, settings.scaling_repeats, settings.scaling_steps_per_phase, False)
             for model in SCALING]
    rows += [(model, settings.layout_repeats, settings.layout_steps_per_phase, False)
             for model in (FSDP2_TP2, PP2)]
    rows.append((CYCLIC, settings.cyclic_repeats, settings.cyclic_steps_per_phase, False))
    return [row for row in rows if row[0].row in settings.rows]


def plan(settings: Settings) -> list[tuple[int, ModelSpec, str, jobs.Job]]:
    """Every job in run order as ``(repeat, model, kind, job)``.

    A model's jobs of a repeat are adjacent, so every ratio is between jobs run back to back.
    """
    rows = row_models(settings)
    order = []
    for repeat in range(max((repeats for _, repeats, _, _ in rows), default=0)):
        batch = [
            (model, kind, job)
            for model, repeats, steps_per_phase, with_all in rows if repeat < repeats
            for kind, job in model_jobs(model, steps_per_phase, with_all).items()
        ]
        if repeat % 2:
            batch.reverse()
        order += [(repeat, model, kind, job) for model, kind, job in batch]
    return order


def _row_text(
    model: ModelSpec, repeats: int, steps_per_phase: int, with_all: bool, nproc: int
) -> str:
    spp = steps_per_phase
    if model.row == "cyclic":
        counted = f"{repeats} repeat" + ("s" if repeats != 1 else "")
        return (f"block-cyclic ({model.depth} blocks, one descending pass, one block per phase; "
                f"stock and {len(cyclic.VARIANTS)} dtype variants): {counted}, stock "
                f"{2 * spp} steps, cyclic {model.depth * spp} ({spp} per phase)")
    what = f"{model.depth} blocks"
    if model.row in LAYOUT_TITLES:
        ranks, cores = model.ranks(nproc), os.cpu_count() or 1
        busy = ": oversubscribed" if ranks > cores else ""
        what = (f"{LAYOUT_TITLES[model.row]} ({what}, `{' '.join(model.args)}`, {ranks} ranks "
                f"on {cores} cores{busy})")
    stock = "stock and one-phase jobs" if with_all else "stock"
    counted = f"{repeats} repeat" + ("s" if repeats != 1 else "")
    return f"{what}: {counted}, {stock} {2 * spp} steps, phased {3 * spp} ({spp} per phase)"


def _config(settings: Settings) -> dict[str, Any]:
    base = tomllib.loads(jobs.BASE_CONFIG.read_text())
    training, optimizer = base["training"], base["optimizer"]
    job = (f"`{jobs.BASE_CONFIG.relative_to(jobs.REPO)}`: local batch "
           f"{training['local_batch_size']} x seq {training['seq_len']} per rank, "
           f"{settings.nproc} ranks (FSDP2, gloo, 1 thread each), fp32, {optimizer['name']} "
           f"lr {optimizer['lr']:g}, no checkpoints, no validation, random init, log every step")
    steps = "; ".join(_row_text(*row, settings.nproc) for row in row_models(settings))
    steps += (f". Steady step time = median over a phase's steps after its first {settings.skip};"
              " jobs of a repeat run back to back, order alternating")
    return {"settings": dataclasses.asdict(settings), "job": job, "steps": steps}


def _record_dicts(output: jobs.JobOutput) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in output.records]


def _summaries(
    settings: Settings,
    outputs: dict[ModelSpec, dict[str, list[jobs.JobOutput]]],
    facts: dict[tuple[ModelSpec, str], ModelFacts],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The figures of every model run: ``(1-D FSDP models by depth, layouts by row)``."""
    models, layouts = {}, {}
    for model, kinds in outputs.items():
        if model.row == "cyclic":
            continue
        runs = summary.ModelRuns(
            depth=model.depth, flavor=model.flavor, stock_model=model.stock_model,
            phased_model=model.phased_model, facts=facts[(model, "phased")],
            stock=kinds["stock"],
            phased=kinds["phased"], all_params=kinds.get("all", ()),
        )
        figures = summary.summarize(runs, settings.skip)
        if model.row not in LAYOUT_TITLES:
            models[str(model.depth)] = figures
        else:
            layout = {**figures, "title": LAYOUT_TITLES[model.row],
                      "ranks": model.ranks(settings.nproc),
                      "metrics_rank": model.metrics_rank(settings.nproc),
                      "args": list(model.args)}
            layouts[model.row] = {**layout, "targets": summary.layout_targets(layout)}
    return models, layouts


def run_suite(settings: Settings, out: Path) -> dict[str, Any]:
    """Run every job of ``plan(settings)`` into ``out`` and summarise them."""
    start = time.monotonic()
    host = machine.machine()
    tokenizer = tokenizer_dir(ensure_assets()).resolve()
    outputs: dict[ModelSpec, dict[str, list[jobs.JobOutput]]] = {}
    raw_runs: list[dict[str, Any]] = []
    facts: dict[tuple[ModelSpec, str], ModelFacts] = {}  # by (model, kind) of phased jobs
    wait_left = settings.max_total_wait_s
    for repeat, model, kind, job in plan(settings):
        dump = out / f"r{repeat}-{job.label}"
        nproc = model.ranks(settings.nproc)
        busy, waited = machine.wait_until_quiet(
            settings.quiet_threshold, min(settings.max_wait_s, wait_left)
        )
        wait_left = max(0.0, wait_left - waited)
        output = jobs.run(job, dump, tokenizer, nproc)
        outputs.setdefault(model, {}).setdefault(kind, []).append(output)
        raw_runs.append({"repeat": repeat, "label": job.label, "wall_s": output.wall_s,
                         "cpu_busy_before": busy, "waited_s": waited,
                         "records": _record_dicts(output)})
        if kind not in ("stock", "all") and (model, kind) not in facts:
            facts[(model, kind)] = expect(jobs.job_args(job, dump, tokenizer), nproc)
        median = statistics.median(r.time_s for r in output.records[settings.skip:])
        print(f"[bench] r{repeat} {job.label}: {output.wall_s:.0f} s wall, "
              f"median step {median:.3f} s (machine {busy:.0%} busy before, waited "
              f"{waited:.0f} s)", file=sys.stderr, flush=True)

    models, layouts = _summaries(settings, outputs, facts)
    host["load_after"] = os.getloadavg()[0]
    host["cpu_busy_before_jobs"] = dataclasses.asdict(
        Stat.of([run["cpu_busy_before"] for run in raw_runs])
    )
    main = models.get(str(MAIN.depth)) if "main" in settings.rows else None
    if main is not None:
        main["overhead"]["controller_due_us"] = 1e6 * controller_due_seconds()
    rows = "" if settings.rows == ROWS else " --rows " + " ".join(settings.rows)
    cyclic_row = None
    if CYCLIC in outputs:
        cyclic_row = _cyclic_row(settings, outputs[CYCLIC], facts)
    return {
        "generated": datetime.now().isoformat(timespec="seconds"),
        "command": "python -m bench.run" + rows,
        "wall_s": time.monotonic() - start,
        "machine": host,
        "versions": machine.versions(jobs.REPO),
        "config": _config(settings),
        "main": str(MAIN.depth) if main is not None else None,
        "targets": summary.targets(main) if main is not None else [],
        "models": models,
        "layouts": layouts,
        "cyclic": cyclic_row,
        "runs": raw_runs,
    }


def _cyclic_row(
    settings: Settings,
    kinds: dict[str, list[jobs.JobOutput]],
    facts: dict[tuple[ModelSpec, str], ModelFacts],
) -> dict[str, Any]:
    """The cyclic row's figures, what it ran and this host's matmul rate by dtype."""
    variants = {v.name: kinds[v.name] for v in cyclic.VARIANTS}
    row = cyclic.summarize(kinds["stock"], variants,
                           {name: facts[(CYCLIC, name)] for name in variants}, settings.skip)
    row.update({
        "depth": CYCLIC.depth, "flavor": CYCLIC.flavor, "stock_model": CYCLIC.stock_model,
        "phased_model": CYCLIC.phased_model, "ranks": CYCLIC.ranks(settings.nproc),
        "steps_per_phase": settings.cyclic_steps_per_phase,
        "cycle_args": list(cyclic.cycle_args(settings.cyclic_steps_per_phase)),
        "matmul_gflops": {str(dtype).removeprefix("torch."): matmul_gflops(dtype)
                          for dtype in (torch.float32, torch.bfloat16)},
    })
    row["targets"] = cyclic.targets(row)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="one short repeat; its BENCHMARKS.md under --out too (development)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                        help="rows to run (default all); BENCHMARKS.md under --out unless all")
    parser.add_argument("--merge", action="store_true",
                        help="with --rows of layout rows or the cyclic row only: replace their "
                             "blocks in the repository's BENCHMARKS.md, keeping every other "
                             "figure there")
    parser.add_argument("--out", type=Path, default=jobs.REPO / "outputs" / "bench",
                        help="folder for the jobs' dumps and logs and results.json")
    args = parser.parse_args(argv)
    if args.merge and (args.quick or not set(args.rows) <= set(MERGEABLE)):
        parser.error(f"--merge takes these rows only (--rows {' '.join(MERGEABLE)}) and no "
                     "--quick")
    out = args.out / datetime.now().strftime("%Y%m%d-%H%M%S")
    rows = tuple(row for row in ROWS if row in args.rows)
    settings = dataclasses.replace(QUICK if args.quick else Settings(), rows=rows)
    results = run_suite(settings, out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS_FILE
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    # A full run replaces the repository's figures; --merge only its rows' blocks.
    if args.merge:
        markdown_path = MARKDOWN
        report.merge_blocks(markdown_path, results)
    else:
        markdown_path = out / "BENCHMARKS.md" if args.quick or rows != ROWS else MARKDOWN
        report.update_markdown(markdown_path, results)
    print(f"[bench] {results['wall_s'] / 60:.1f} min; wrote {results_path} and {markdown_path}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
