"""The block-cyclic row: BAdam-style fine-tuning against stock torchtitan, with and without bf16
storage.

Every repeat runs, back to back, stock torchtitan full fine-tuning and one descending pass of a
generated cycle (``[phases.cycle]``) over the model's blocks: one block per phase for
``steps_per_phase`` steps, the final norm and the head trained throughout, the embeddings
frozen, as ``train_configs/debug_block_cyclic.toml`` does, on the benchmark's base job. The
cycle runs in four variants (:data:`VARIANTS`) of storage dtype (``training.dtype``, with fp32
masters for the trainable params when bfloat16) and compute dtype (FSDP2's
``training.mixed_precision_param``: FSDP2 casts the gathered params to it, so bf16 storage with
float32 compute computes in float32).

Figures (:func:`summarize`), each a median [min, max] over repeats of a value taken within one
repeat:

* per phase: steady step time, its ratio to stock's, and that ratio over the phase's FLOP
  ideals: the FLOPs it needs (weight gradients for the trainable params only,
  :attr:`bench.analysis.PhaseExpectation.needed_ratio`) and ``titan-phases plan``'s FLOP ratio
  (weight gradients of the frozen blocks above the active one charged too); a low block needs
  more backward than a high one;
* per switch: thaw + freeze + optimizer rebuild in ms (metrics.jsonl, as
  :func:`bench.jobs.thaw_rebuild_seconds` reads it) and the first step's extra over the
  phase's steady step, in steady steps;
* per variant and phase: params, fp32 masters, grads and optimizer state bytes per rank
  (metrics.jsonl, exact) against ``plan``'s, which must be equal; each rank's peak RSS
  (torchtitan's console line); step time against the fp32 variant's in the same phase.

**Limitations**
One pass, so each block position is measured once per repeat; steady medians over
``steps_per_phase - skip`` steps. On CPU the RSS is the process's, of which the bytes above are
a small part for a model this size: the runtime, activations and allocator caches dominate.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.analysis import by_phase, first_step_extra, HELD_KINDS, ModelFacts, PhaseRun, Stat
from bench.jobs import Job, JobOutput
from bench.summary import MET, MISSED

ALWAYS_TRAIN = ("output.weight", "norm.weight")


@dataclass(frozen=True)
class Variant:
    """A storage and compute dtype of the cyclic job (bfloat16 storage keeps fp32 masters)."""

    name: str
    storage: str
    compute: str

    @property
    def masters(self) -> bool:
        return self.storage == "bfloat16"

    @property
    def args(self) -> tuple[str, ...]:
        """torchtitan arguments on top of the base job and the cycle."""
        storage = (("--training.dtype", "bfloat16", "--phases.fp32_master_weights")
                   if self.masters else ())
        return (*storage, "--training.mixed_precision_param", self.compute)


REFERENCE = "fp32"
VARIANTS = (
    Variant(REFERENCE, "float32", "float32"),
    Variant("bf16_storage", "bfloat16", "float32"),
    Variant("bf16_compute", "float32", "bfloat16"),
    Variant("bf16_storage_compute", "bfloat16", "bfloat16"),
)


def cycle_args(steps_per_phase: int) -> tuple[str, ...]:
    """torchtitan arguments of one descending pass, one block per phase."""
    return (
        "--phases.cycle.enable", "--phases.cycle.order", "descending",
        "--phases.cycle.blocks_per_phase", "1",
        "--phases.cycle.steps_per_phase", str(steps_per_phase), "--phases.cycle.passes", "1",
        "--phases.cycle.always_train", ",".join(ALWAYS_TRAIN),
    )


def cyclic_jobs(
    depth: int, flavor: str, stock_model: str, phased_model: str, steps_per_phase: int
) -> dict[str, Job]:
    """The jobs of one repeat by kind: ``stock`` and every variant's name. Every job logs
    every rank (per-rank peak RSS)."""
    found = {"stock": Job(f"stock-d{depth}-cyclic", stock_model, flavor, 2 * steps_per_phase,
                          log_every_rank=True)}
    for variant in VARIANTS:
        found[variant.name] = Job(
            f"{variant.name}-d{depth}-cyclic", phased_model, flavor, depth * steps_per_phase,
            args=(*cycle_args(steps_per_phase), *variant.args), log_every_rank=True,
        )
    return found


def _stat(values: Sequence[float]) -> dict[str, float]:
    return dataclasses.asdict(Stat.of(values))


def _per_rank(peaks: Sequence[Sequence[float]]) -> list[dict[str, float]]:
    """One Stat per rank over repeats, from each repeat's per-rank values."""
    ranks = min((len(p) for p in peaks), default=0)
    return [_stat([p[r] for p in peaks]) for r in range(ranks)]


def _held(expected: Mapping[str, tuple[int, ...]], runs: Sequence[PhaseRun]) -> dict[str, Any]:
    """Per kind of bytes: plan's per rank, every distinct measured tuple, and whether equal."""
    held = {}
    for kind in HELD_KINDS:
        measured = sorted({tuple(r.held.get(kind, ())) for r in runs})
        held[kind] = {"expected": list(expected.get(kind, ())),
                      "measured": [list(m) for m in measured],
                      "exact": kind in expected and measured == [tuple(expected[kind])]}
    return held


def _variant(
    name: str,
    facts: ModelFacts,
    phased: Sequence[dict[int, PhaseRun]],
    outputs: Sequence[JobOutput],
    stock: Sequence[PhaseRun],
    reference: Sequence[dict[int, PhaseRun]],
) -> dict[str, Any]:
    phases = []
    for k, expected in enumerate(facts.phases):
        runs = [p[k] for p in phased]
        ratios = [r.steady_s / s.steady_s for r, s in zip(runs, stock)]
        transition = None
        if k > 0:
            extras = [first_step_extra(r) for r in runs]
            transition = {
                "switch_ms": _stat([1000 * o.thaw_rebuild_s[k] for o in outputs]),
                "first_step_extra_s": _stat(extras),
                "cost_in_steps": _stat([e / r.steady_s for e, r in zip(extras, runs)]),
            }
        phases.append({
            "phase": k,
            "steady_s": _stat([r.steady_s for r in runs]),
            "steady_steps": min(r.steady_steps for r in runs),
            "ratio": _stat(ratios),
            "over_needed": _stat([x / expected.needed_ratio for x in ratios]
                                 if expected.needed_ratio else []),
            "over_plan": _stat([x / expected.plan_ratio for x in ratios]
                               if expected.plan_ratio else []),
            "ratio_to_reference": _stat([r.steady_s / ref[k].steady_s
                                         for r, ref in zip(runs, reference)]),
            "trainable_measured": sorted({r.trainable for r in runs}),
            "rank_peak_rss_gib": _per_rank([r.rank_peak_rss_gib for r in runs]),
            "held": _held(expected.held, runs),
            "transition": transition,
        })
    steady = [statistics.mean(p[k].steady_s for k in p) for p in phased]
    reference_steady = [statistics.mean(p[k].steady_s for k in p) for p in reference]
    switches = [[1000 * s for s in o.thaw_rebuild_s.values()] for o in outputs]
    job_peaks = [[max(ranks) for ranks in zip(*(run.rank_peak_rss_gib for run in p.values()))]
                 for p in phased]
    return {
        "name": name,
        "mean_steady_s": _stat(steady),
        "ratio_to_reference": _stat([s / r for s, r in zip(steady, reference_steady)]),
        "switch_ms": _stat([statistics.median(s) for s in switches if s]),
        "rank_peak_rss_gib": _per_rank(job_peaks),
        "bytes_exact": all(h["exact"] for p in phases for h in p["held"].values()),
        "phases": phases,
    }


def summarize(
    stock: Sequence[JobOutput],
    variants: Mapping[str, Sequence[JobOutput]],
    facts: Mapping[str, ModelFacts],
    skip: int,
) -> dict[str, Any]:
    """The row's figures from every repeat's jobs (list index = repeat) and each variant's
    :class:`ModelFacts` (see the module docstring)."""
    repeats = len(stock)
    if any(len(outputs) != repeats for outputs in variants.values()):
        raise ValueError("every repeat needs a stock job and a job of every variant")
    stock_runs = [by_phase(o.records, skip)[0] for o in stock]
    phased = {name: [by_phase(o.records, skip) for o in outputs]
              for name, outputs in variants.items()}
    reference = phased[REFERENCE]
    shape = facts[REFERENCE]
    return {
        "repeats": repeats,
        "total_params": shape.total_params,
        "jobs_wall_s": sum(o.wall_s for o in (*stock, *(o for v in variants.values() for o in v))),
        "stock": {
            "steady_s": _stat([s.steady_s for s in stock_runs]),
            "steady_steps": min(s.steady_steps for s in stock_runs),
            "rank_peak_rss_gib": _per_rank([s.rank_peak_rss_gib for s in stock_runs]),
        },
        "phases": [
            {"phase": k, "blocks": list(p.blocks), "params": list(p.params),
             "trainable": p.trainable, "trainable_tensors": p.trainable_tensors,
             "plan_ratio": p.plan_ratio, "needed_ratio": p.needed_ratio}
            for k, p in enumerate(shape.phases)
        ],
        "variants": {
            name: {**_variant(name, facts[name], phased[name], variants[name], stock_runs,
                              reference),
                   **dataclasses.asdict(variant), "masters": variant.masters}
            for variant in VARIANTS if (name := variant.name) in variants
        },
    }


def targets(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's judged targets: every variant's bytes per rank equal to ``plan``'s, in every
    phase, repeat and rank. Step times and switch costs are reported, not judged."""
    return [
        {"target": f"block-cyclic, {name}: params, fp32 masters, grads and optimizer state "
                   "bytes per rank exactly as planned, every phase",
         "value": None, "limit": None, "verdict": MET if variant["bytes_exact"] else MISSED}
        for name, variant in row["variants"].items()
    ]
