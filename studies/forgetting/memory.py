"""Bytes per rank of each strategy: measured by the job, predicted by ``titan-phases plan``.

A fine-tuning job's ``metrics.jsonl`` reports, per rank and with every logged step, the bytes of
params, fp32 master weights, grads and optimizer state that rank holds (measured once per phase,
after its first step). ``titan-phases plan --json`` predicts the same four quantities per phase
and per rank before anything runs. The study reads the first, runs the second on the job's own
arguments, and stops (:class:`BytesMismatch`) unless they are equal in every phase on every rank.
A strategy's "bytes per rank" is then the peak over its phases of the four added up, per rank.

**Limitations**
Only what plan counts: activations, the params FSDP2 all-gathers for forward and backward,
communication buffers and the allocator's slack are in neither number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from studies.forgetting.jobs import NPROC
from titan_phases.schedule import ResolvedSchedule

KINDS = ("params", "masters", "grads", "optimizer_state")
"""The quantities, as ``plan --json`` names them."""
METRICS_KEYS = {"params": "param_bytes", "masters": "master_bytes", "grads": "grad_bytes",
                "optimizer_state": "optimizer_state_bytes"}
"""Each quantity's list (one entry per rank) in a metrics.jsonl train record."""

Held = dict[int, list[dict[str, int]]]
"""``{phase: [per rank {kind: bytes}]}``."""


class BytesMismatch(AssertionError):
    """What a job measured differs from what ``titan-phases plan`` predicts for it."""


def measured(records: Mapping[int, Mapping[str, Any]]) -> Held:
    """The bytes each phase's first train record reports, per rank.

    Args:
        records: ``{step: train record}`` of one job (every record has ``phase``).

    Raises:
        ValueError: a record has no ``phase`` or lacks one of the quantities.
    """
    held: Held = {}
    for step, record in sorted(records.items()):
        missing = [key for key in ("phase", *METRICS_KEYS.values()) if key not in record]
        if missing:
            raise ValueError(f"metrics.jsonl step {step} has no {', '.join(missing)}")
        if record["phase"] not in held:
            ranks = len(record["param_bytes"])
            held[record["phase"]] = [{kind: record[key][rank] for kind, key in METRICS_KEYS.items()}
                                     for rank in range(ranks)]
    return held


def plan(job_config: Any, resolved: ResolvedSchedule, json_path: Path) -> dict[str, Any]:
    """What ``titan-phases plan --json --world-size 2`` prints for the job (kept in
    ``json_path``): the same plan, built in this process from the job config and schedule
    ``titan_phases.cli.common.resolve_job`` gives, as the command does."""
    from titan_phases.plan import build_plan

    text = json.dumps(build_plan(job_config, resolved, NPROC).as_json(), indent=2)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(text + "\n")
    return json.loads(text)


def planned(plan_json: Mapping[str, Any]) -> Held:
    """The plan's ``{phase: [per rank {kind: bytes}]}``."""
    return {int(phase["label"]): [{kind: memory[kind] for kind in KINDS}
                                  for memory in phase["memory"]]
            for phase in plan_json["phases"]}


def totals(held: Held) -> dict[int, list[int]]:
    """``{phase: [per rank total bytes]}``."""
    return {phase: [sum(rank.values()) for rank in ranks] for phase, ranks in held.items()}


def peak(held: Held) -> list[dict[str, int]]:
    """Per rank, the phase holding the most in total: ``{"phase", kinds..., "total"}`` (the
    earliest such phase on a tie)."""
    ranks = len(next(iter(held.values())))
    peaks = []
    for rank in range(ranks):
        rank_totals = {phase: sum(held[phase][rank].values()) for phase in sorted(held)}
        phase = max(rank_totals, key=rank_totals.__getitem__)
        peaks.append({"phase": phase, **held[phase][rank], "total": rank_totals[phase]})
    return peaks


def check(measured_bytes: Held, plan_json: Mapping[str, Any], where: str) -> int:
    """Raise :class:`BytesMismatch` naming every difference between what a job measured and
    its plan: a phase only one of them has, any quantity of any phase on any rank, and the
    peak total per rank (plan's ``peak_total``). Returns the phase-rank entries compared."""
    expected = planned(plan_json)
    problems = []
    for phase in sorted(set(expected) | set(measured_bytes)):
        if phase not in measured_bytes or phase not in expected:
            problems.append(f"phase {phase} is only in the "
                            f"{'plan' if phase in expected else 'job'}")
            continue
        if len(measured_bytes[phase]) != len(expected[phase]):
            problems.append(f"phase {phase}: {len(measured_bytes[phase])} ranks measured, "
                            f"{len(expected[phase])} planned")
            continue
        for rank, (got, want) in enumerate(zip(measured_bytes[phase], expected[phase])):
            for kind in KINDS:
                if got[kind] != want[kind]:
                    problems.append(f"phase {phase} rank {rank} {kind}: measured {got[kind]:,}, "
                                    f"plan {want[kind]:,}")
    if not problems:
        peak_totals = [p["total"] for p in peak(measured_bytes)]
        if peak_totals != list(plan_json["peak_total"]):
            problems.append(f"peak total per rank: measured {peak_totals}, "
                            f"plan {plan_json['peak_total']}")
    if problems:
        raise BytesMismatch(f"{where}: bytes per rank differ from titan-phases plan:\n  "
                            + "\n  ".join(problems))
    return sum(len(ranks) for ranks in measured_bytes.values())
