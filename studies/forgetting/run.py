"""``python -m studies.forgetting``: the retention/adaptation study (see STUDIES.md).

1. Pretrain the llama3 debug model on corpus A (``titan_python_docs``) into the output folder.
2. Fine-tune it on corpus B (``titan_recipes``) with every strategy of :mod:`.strategies` and
   every seed's data order (:mod:`.corpus`), same budget, checkpointing at every validation.
3. Evaluate every checkpoint (and the pretrained model, step 0) on both validation splits in this
   process (:mod:`.evaluate`), cross-checking B's loss against the job's own logged one, and
   delete the checkpoints. Read the bytes per rank the job measured and check them against
   ``titan-phases plan`` of the same job (:mod:`.memory`).
4. Add cumulative FLOPs and step time (:mod:`.accounting`), summarise over seeds
   (:mod:`.aggregate`), write ``results.json`` and the plots (:mod:`.plots`); the full run also
   copies the plots to ``docs/images/study_*.png`` and rewrites STUDIES.md's generated section
   (:mod:`.report`). ``--quick`` (tests, development) writes into the output folder only.

**Limitations**
One pretrained model, whatever the seeds: a seed changes B's data order only. Jobs run one after
another on a machine that may be shared; step times carry its load (the report gives the load
average before and after).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torchtitan.protocols.train_spec import get_train_spec

from bench import machine
from studies.forgetting import accounting, aggregate, corpus, jobs, memory, plots, report
from studies.forgetting.evaluate import cross_check, Evaluator
from studies.forgetting.settings import QUICK, Settings
from studies.forgetting.strategies import strategies, Strategy
from titan_phases.cli.common import resolve_job
from titan_phases.config import parse_job_config
from titan_phases.data.assets import ensure_assets, tokenizer_dir
from titan_phases.schedule import ResolvedSchedule
from titan_phases.train_spec import register_train_specs

RESULTS_FILE = "results.json"
VALIDATION = {"A": "titan_python_docs_validation", "B": "titan_recipes_validation"}
PUBLISHED_IMAGES = jobs.REPO / "docs" / "images"
MARKDOWN = jobs.REPO / "STUDIES.md"
DEFAULT_OUT = jobs.REPO / "outputs" / "studies" / "forgetting"


def log(message: str) -> None:
    print(f"[study] {message}", file=sys.stderr, flush=True)


def step_costs(job_config: Any, resolved: ResolvedSchedule) -> accounting.StepCosts:
    """FLOPs per step of each phase of the job, from the schedule the job itself resolves."""
    model_args = copy.deepcopy(get_train_spec(job_config.model.name)
                               .model_args[job_config.model.flavor])
    model_args.update_from_config(job_config)
    training = job_config.training
    return accounting.step_costs(
        resolved.param_numels,
        [resolved.trainable_params(k) for k in range(resolved.num_phases)],
        tokens_per_step=training.local_batch_size * training.seq_len * jobs.NPROC,
        dim=model_args.dim, seq_len=training.seq_len,
    )


class Study:
    """One run of the study into ``out`` (see the module docstring)."""

    def __init__(self, settings: Settings, out: Path) -> None:
        self.settings = settings
        self.out = out
        self.assets = ensure_assets().resolve()
        self.tokenizer = tokenizer_dir(self.assets)
        self.config = jobs.write_finetune_config(out)
        self.strategies = strategies(settings.steps)
        self.costs: dict[str, accounting.StepCosts] = {}
        self.plans: dict[str, dict[str, Any]] = {}
        self.evaluator = Evaluator(jobs.shared_args(settings, self.config, self.tokenizer),
                                   VALIDATION, jobs.NPROC)

    def pretrain(self) -> dict[str, Any]:
        dump = self.out / "pretrain"
        log(f"pretraining {self.settings.pretrain_steps} steps on corpus A")
        wall = jobs.run(jobs.pretrain_args(self.settings, dump, self.tokenizer),
                        dump.with_suffix(".log"))
        return {"steps": self.settings.pretrain_steps, "wall_s": wall,
                "checkpoint": str(jobs.pretrained_checkpoint(self.settings, dump))}

    def job_args(self, strategy: Strategy, seed: int, dump: Path, debug_seed: int) -> list[str]:
        schedule_file = self.out / "schedules" / f"{strategy.name}.toml"
        strategy.write(schedule_file)
        train_file = corpus.shuffled_split(self.assets, seed, self.out / "data")
        initial = jobs.pretrained_checkpoint(self.settings, self.out / "pretrain")
        return jobs.finetune_args(self.settings, self.config, self.tokenizer, dump, initial,
                                  train_file, debug_seed, strategy.job_args(schedule_file))

    def finetune(self, strategy: Strategy, seed: int, step0: dict[str, float],
                 debug_seed: int | None = None) -> dict[str, Any]:
        """Run, evaluate and account one fine-tuning job; its checkpoints are deleted."""
        debug_seed = seed if debug_seed is None else debug_seed
        label = f"{strategy.name}-seed{seed}" + (
            f"-debugseed{debug_seed}" if debug_seed != seed else "")
        dump = self.out / "runs" / label
        args = self.job_args(strategy, seed, dump, debug_seed)
        wall = jobs.run(args, dump.with_suffix(".log"))
        metrics = jobs.read_metrics(dump)
        logged = {step: r["loss"] for step, r in metrics.validation.items()}
        records = metrics.train
        if strategy.name not in self.costs:
            register_train_specs()
            job_config, resolved = resolve_job(args)
            self.costs[strategy.name] = step_costs(job_config, resolved)
            self.plans[strategy.name] = memory.plan(
                job_config, resolved, self.out / "plans" / f"{strategy.name}.json")
        held = memory.measured(records)
        checked = memory.check(held, self.plans[strategy.name], label)
        storage = getattr(torch, strategy.storage_dtype)
        steps = self.settings.points()
        flops = accounting.cumulative_flops(records, self.costs[strategy.name], steps)
        times = accounting.cumulative_time(records, steps)
        points = []
        for i, step in enumerate(steps):
            saved = None
            if step == 0:
                losses, logged_b, phase = step0, None, 0
            else:
                checkpoint = dump / "checkpoint" / f"step-{step}"
                losses = self.evaluator.evaluate(checkpoint, storage)
                logged_b, phase = logged[step], records[step]["phase"]
                cross_check(losses["B"], logged_b, f"{label} step {step}")
                if storage != torch.float32:
                    saved = self.evaluator.evaluate(checkpoint)
            points.append({"step": step, "b_loss": losses["B"], "a_loss": losses["A"],
                           "b_loss_logged": logged_b, "flops": flops[i], "time_s": times[i],
                           "phase": phase})
            if saved is not None:
                points[-1]["saved"] = {"b_loss": saved["B"], "a_loss": saved["A"]}
        shutil.rmtree(dump / "checkpoint")
        final = points[-1]
        log(f"{label}: {wall:.0f} s wall; final B {final['b_loss']:.4f}, A {final['a_loss']:.4f}")
        return {
            "strategy": strategy.name, "seed": seed, "debug_seed": debug_seed, "wall_s": wall,
            "points": points,
            "bytes": {"per_phase": {str(k): v for k, v in held.items()},
                      "peak": memory.peak(held), "checked": checked},
            "train_loss": {str(s): r["loss"] for s, r in sorted(records.items())},
            "validation_logged": {str(s): v for s, v in sorted(logged.items())},
            "transitions": [{k: r[k] for k in ("step", "from_phase", "to_phase", "reason")}
                            for r in metrics.transitions.values()],
        }

    def run(self) -> dict[str, Any]:
        start = time.monotonic()
        host = machine.machine()
        torch.set_num_threads(self.settings.eval_threads)
        pretrain = self.pretrain()
        step0 = self.evaluator.evaluate(Path(pretrain["checkpoint"]))
        pretrain.update(a_loss=step0["A"], b_loss=step0["B"])
        runs: list[dict[str, Any]] = []
        seed_check = None
        for seed in self.settings.seeds:
            for strategy in self.strategies:
                runs.append(self.finetune(strategy, seed, step0))
                if self.settings.seed_check and seed_check is None and strategy.name == "head_only":
                    seed_check = self.check_debug_seed(strategy, runs[-1], step0)
        host["load_after"] = os.getloadavg()[0]
        summary = {}
        for strategy in self.strategies:
            mine = [r["points"] for r in runs if r["strategy"] == strategy.name]
            points = aggregate.summarize_points(mine)
            summary[strategy.name] = {"points": points,
                                      "final": aggregate.final_numbers(points, mine),
                                      # Every run's bytes equal the strategy's plan.
                                      "bytes_peak": next(r["bytes"]["peak"] for r in runs
                                                         if r["strategy"] == strategy.name)}
        return {
            "generated": datetime.now().isoformat(timespec="seconds"),
            "command": "python -m studies.forgetting" + ("" if self.settings.publish
                                                         else " --quick"),
            "wall_s": time.monotonic() - start,
            "machine": host,
            "versions": machine.versions(jobs.REPO),
            "settings": dataclasses.asdict(self.settings),
            "budget": self.budget(),
            "pretrain": pretrain,
            "strategies": {
                s.name: {"description": s.description,
                         "storage_dtype": s.storage_dtype, "variant_of": s.variant_of,
                         "phase_step_flops": list(self.costs[s.name].per_phase),
                         "phase_ratios": list(self.costs[s.name].ratios),
                         "plan": {"peak": self.plans[s.name]["peak"],
                                  "peak_total": self.plans[s.name]["peak_total"]}}
                for s in self.strategies
            },
            "runs": runs,
            "summary": summary,
            "seed_check": seed_check,
        }

    def budget(self) -> dict[str, Any]:
        job = parse_job_config(jobs.shared_args(self.settings, self.config, self.tokenizer))
        tokens = job.training.local_batch_size * job.training.seq_len * jobs.NPROC
        return {"steps": self.settings.steps, "ranks": jobs.NPROC,
                "local_batch_size": job.training.local_batch_size,
                "seq_len": job.training.seq_len, "tokens_per_step": tokens,
                "tokens": tokens * self.settings.steps}

    def check_debug_seed(self, strategy: Strategy, reference: dict[str, Any],
                         step0: dict[str, float]) -> dict[str, Any]:
        """Rerun ``reference`` with only ``--debug.seed`` changed; compare every logged loss."""
        other = reference["seed"] + 1000
        rerun = self.finetune(strategy, reference["seed"], step0, debug_seed=other)
        diffs = [abs(rerun[key][s] - reference[key][s])
                 for key in ("train_loss", "validation_logged") for s in reference[key]]
        return {"strategy": strategy.name, "data_seed": reference["seed"],
                "debug_seeds": [reference["seed"], other], "losses_compared": len(diffs),
                "max_abs_loss_diff": max(diffs), "identical": max(diffs) == 0.0,
                "wall_s": rerun["wall_s"]}


def publish(out: Path, results: dict[str, Any], images: dict[str, Path]) -> None:
    """Copy the plots into docs/images and rewrite STUDIES.md's generated section."""
    PUBLISHED_IMAGES.mkdir(parents=True, exist_ok=True)
    for path in images.values():
        shutil.copyfile(path, PUBLISHED_IMAGES / path.name)
    report.update_markdown(MARKDOWN, results, PUBLISHED_IMAGES.relative_to(jobs.REPO))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run into --out only (tests, development)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="parent folder of the run's output folder <time>/")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    plots.pyplot()  # fail now, not after the jobs, when matplotlib is missing
    out = args.out / datetime.now().strftime("%Y%m%d-%H%M%S")
    results = Study(settings, out).run()
    images = plots.write_plots(results, out)
    results["images"] = {k: str(p) for k, p in images.items()}
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n")
    if settings.publish:
        publish(out, results, images)
    log(f"{results['wall_s'] / 60:.1f} min; wrote {out / RESULTS_FILE}"
        + (f" and {MARKDOWN}" if settings.publish else ""))


if __name__ == "__main__":
    main()
