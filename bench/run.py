"""``python -m bench.run``: the benchmark suite of titan_phases against stock torchtitan.

Writes every figure and every job's per-step records to ``results.json`` in the run's output
folder (``outputs/bench/<time>/`` by default; not tracked by git) and the summary tables to the
generated section of BENCHMARKS.md (between :data:`bench.report.BEGIN` and ``END``).

For each model size it runs, on 2 CPU ranks (FSDP2 over gloo), back to back in every repeat:

* ``stock``: torchtitan's own Trainer and builders (model ``llama3``), all params trainable;
* ``phased``: PhasedTrainer with the three-phase schedule of :mod:`bench.schedules`;
* ``all`` (6 blocks only): PhasedTrainer with one phase training everything (overhead).

The 6-block ``debugmodel`` is the main subject; 3 and 12 blocks (``bench.spec``) show scaling
with fewer repeats. Job order alternates between repeats. ``--quick`` runs one short repeat of
everything and writes its BENCHMARKS.md into the output folder too, leaving the repository's
alone (for development; its numbers mean little).

**Limitations**
Timings are wall-clock on whatever else the machine runs; the report states the load average
before and after. Only CPU/gloo was measured: GPU step-time ratios will differ.
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

from bench import jobs, machine, report, schedules, summary
from bench.analysis import ModelFacts, Stat
from bench.expectations import expect
from bench.micro import controller_due_seconds
from bench.spec import PHASED_SPEC, STOCK_SPEC
from titan_phases.data.assets import ensure_assets, tokenizer_dir

RESULTS_FILE = "results.json"  # in the run's output folder, beside the jobs' dumps and logs
MARKDOWN = jobs.REPO / "BENCHMARKS.md"


@dataclass(frozen=True)
class Settings:
    repeats: int = 5
    scaling_repeats: int = 2
    steps_per_phase: int = 7
    scaling_steps_per_phase: int = 5
    # Steps at the start of every phase (and job) left out of its steady median: the first
    # holds the transition (or process warm-up), the second may still pay lazy allocations.
    skip: int = 2
    nproc: int = 2
    # Before each job, wait (up to max_wait_s) until other work uses at most this share of the
    # CPUs: the machine is shared, and a job that starts under load measures the load.
    quiet_threshold: float = 0.15
    max_wait_s: float = 45.0
    max_total_wait_s: float = 240.0  # bounds the suite's wall time on a machine that stays busy


QUICK = Settings(repeats=1, scaling_repeats=1, steps_per_phase=4, scaling_steps_per_phase=4,
                 max_wait_s=0.0, max_total_wait_s=0.0)


@dataclass(frozen=True)
class ModelSpec:
    depth: int
    flavor: str
    stock_model: str
    phased_model: str
    custom_import: str | None = None


MAIN = ModelSpec(6, "debugmodel", "llama3", "llama3_phases")
SCALING = (
    ModelSpec(3, "depth3", STOCK_SPEC, PHASED_SPEC, "bench.spec"),
    ModelSpec(12, "depth12", STOCK_SPEC, PHASED_SPEC, "bench.spec"),
)


def model_jobs(model: ModelSpec, steps_per_phase: int, with_all: bool) -> dict[str, jobs.Job]:
    """The jobs of one model size in one repeat, by kind (stock, phased, all)."""
    name = f"d{model.depth}"
    found = {
        "stock": jobs.Job(f"stock-{name}", model.stock_model, model.flavor,
                          2 * steps_per_phase, None, model.custom_import),
        "phased": jobs.Job(f"phased-{name}", model.phased_model, model.flavor,
                           3 * steps_per_phase,
                           schedules.three_phase(model.depth, steps_per_phase),
                           model.custom_import),
    }
    if with_all:
        found["all"] = jobs.Job(f"all-{name}", model.phased_model, model.flavor,
                                2 * steps_per_phase, schedules.all_params(), model.custom_import)
    return found


def plan(settings: Settings) -> list[tuple[int, ModelSpec, str, jobs.Job]]:
    """Every job in run order as ``(repeat, model, kind, job)``."""
    order = []
    for repeat in range(settings.repeats):
        batch = [(MAIN, kind, job) for kind, job in
                 model_jobs(MAIN, settings.steps_per_phase, with_all=True).items()]
        if repeat < settings.scaling_repeats:
            for model in SCALING:
                batch += [(model, kind, job) for kind, job in
                          model_jobs(model, settings.scaling_steps_per_phase, False).items()]
        if repeat % 2:
            batch.reverse()
        order += [(repeat, model, kind, job) for model, kind, job in batch]
    return order


def _config(settings: Settings) -> dict[str, Any]:
    base = tomllib.loads(jobs.BASE_CONFIG.read_text())
    training, optimizer = base["training"], base["optimizer"]
    job = (f"`{jobs.BASE_CONFIG.relative_to(jobs.REPO)}`: local batch "
           f"{training['local_batch_size']} x seq {training['seq_len']} per rank, "
           f"{settings.nproc} ranks (FSDP2, gloo, 1 thread each), fp32, {optimizer['name']} "
           f"lr {optimizer['lr']:g}, no checkpoints, no validation, random init, log every step")
    spp, sspp = settings.steps_per_phase, settings.scaling_steps_per_phase
    steps = (f"6 blocks: stock and one-phase jobs {2 * spp} steps, phased {3 * spp} "
             f"({spp} per phase); 3 and 12 blocks: stock {2 * sspp}, phased {3 * sspp}. "
             f"Steady step time = median over a phase's steps after its first {settings.skip}")
    return {"settings": dataclasses.asdict(settings), "job": job, "steps": steps,
            "repeats": settings.repeats, "scaling_repeats": settings.scaling_repeats}


def _record_dicts(output: jobs.JobOutput) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in output.records]


def run_suite(settings: Settings, out: Path) -> dict[str, Any]:
    """Run every job of ``plan(settings)`` into ``out`` and summarise them."""
    start = time.monotonic()
    host = machine.machine()
    tokenizer = tokenizer_dir(ensure_assets()).resolve()
    outputs: dict[tuple[int, str], dict[str, list[jobs.JobOutput]]] = {}
    raw_runs: list[dict[str, Any]] = []
    facts: dict[int, ModelFacts] = {}
    wait_left = settings.max_total_wait_s
    for repeat, model, kind, job in plan(settings):
        dump = out / f"r{repeat}-{job.label}"
        busy, waited = machine.wait_until_quiet(
            settings.quiet_threshold, min(settings.max_wait_s, wait_left)
        )
        wait_left = max(0.0, wait_left - waited)
        output = jobs.run(job, dump, tokenizer, settings.nproc)
        outputs.setdefault((model.depth, model.flavor), {}).setdefault(kind, []).append(output)
        raw_runs.append({"repeat": repeat, "label": job.label, "wall_s": output.wall_s,
                         "cpu_busy_before": busy, "waited_s": waited,
                         "records": _record_dicts(output)})
        if kind == "phased" and model.depth not in facts:
            facts[model.depth] = expect(jobs.job_args(job, dump, tokenizer), settings.nproc)
        median = statistics.median(r.time_s for r in output.records[settings.skip:])
        print(f"[bench] r{repeat} {job.label}: {output.wall_s:.0f} s wall, "
              f"median step {median:.3f} s (machine {busy:.0%} busy before, waited "
              f"{waited:.0f} s)", file=sys.stderr, flush=True)

    models = {}
    for model in (MAIN, *SCALING):
        kinds = outputs[(model.depth, model.flavor)]
        runs = summary.ModelRuns(
            depth=model.depth, flavor=model.flavor, stock_model=model.stock_model,
            phased_model=model.phased_model, facts=facts[model.depth], stock=kinds["stock"],
            phased=kinds["phased"], all_params=kinds.get("all", ()),
        )
        models[str(model.depth)] = summary.summarize(runs, settings.skip)
    host["load_after"] = os.getloadavg()[0]
    host["cpu_busy_before_jobs"] = dataclasses.asdict(
        Stat.of([run["cpu_busy_before"] for run in raw_runs])
    )
    main = models[str(MAIN.depth)]
    main["overhead"]["controller_due_us"] = 1e6 * controller_due_seconds()
    return {
        "generated": datetime.now().isoformat(timespec="seconds"),
        "command": "python -m bench.run",
        "wall_s": time.monotonic() - start,
        "machine": host,
        "versions": machine.versions(jobs.REPO),
        "config": _config(settings),
        "main": str(MAIN.depth),
        "targets": summary.targets(main),
        "models": models,
        "runs": raw_runs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="one short repeat; its BENCHMARKS.md under --out too (development)")
    parser.add_argument("--out", type=Path, default=jobs.REPO / "outputs" / "bench",
                        help="folder for the jobs' dumps and logs and results.json")
    args = parser.parse_args(argv)
    out = args.out / datetime.now().strftime("%Y%m%d-%H%M%S")
    results = run_suite(QUICK if args.quick else Settings(), out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS_FILE
    markdown_path = out / "BENCHMARKS.md" if args.quick else MARKDOWN
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    report.update_markdown(markdown_path, results)
    print(f"[bench] {results['wall_s'] / 60:.1f} min; wrote {results_path} and {markdown_path}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
