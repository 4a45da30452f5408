"""The ideal step-time ratio of a phase under pipeline parallelism: a 1F1B makespan model.

Under PP the whole-model FLOP ratio (:mod:`titan_phases.plan.flops`) is the wrong ideal:
a pipeline step lasts as long as the last of its stages' forward and backward actions, bubbles
included, and freezing the bottom of the model removes backward work from some stages only.
This module models a step as the makespan of those actions and takes a phase's ideal ratio as
its makespan over the makespan of the same pipeline training everything (stock).

Without pipeline parallelism the same model on one stage and one microbatch
(:func:`single_stage`) is a step's forward plus its backward. That is the FLOP ratio of a phase
with weight gradients for its trainable params only: the ideal of a phase that freezes params
inside its backward span (a block-cyclic phase training a low block, with frozen blocks above
it), where the whole-model FLOP ratio of ``titan-phases plan`` charges those frozen params
their weight gradients too. Where every param in the span trains, the two ratios agree.

**The model, and its assumptions**

- Stages: one per pipeline rank (single-stage schedules), holding the modules torchtitan 0.2.2
  puts there: ``parallelism.module_fqns_per_model_part`` if set, else
  ``generate_llm_fqn_per_model_part`` with ``pipeline_parallel_first_stage_less_layers`` and
  ``pipeline_parallel_last_stage_less_layers``. A parameter belongs to the module whose name
  prefixes it; the stages' modules, in order, are the forward order of the model.
- Cost unit: FLOPs per token, as in :mod:`titan_phases.plan.flops`: 2 per weight element
  (embeddings are lookups: 0), plus ``attention_flops`` per block. Every microbatch has the
  same number of tokens, so a microbatch's cost is proportional to its FLOPs per token.
- Forward of a stage: the forward FLOPs of its modules, in every phase.
- Backward of a stage: input-gradient work of its modules at or above the module of the lowest
  trainable parameter (the same FLOPs as their weights' forward, and twice the attention
  scores' forward: two matmuls of gradients per matmul of the scores), plus weight-gradient
  work of its trainable parameters (the same FLOPs as their forward). Modules below the lowest
  trainable one need no gradient, so a stage wholly below it runs no backward at all: its
  backward actions take no time and wait for nothing. As in ``flops``, the lowest trainable
  module is charged its own input gradient too, which it does not strictly need.
- Order: torch's ``Schedule1F1B``: stage ``s`` of ``S`` runs ``min(N, S - s)`` forwards, then
  alternates one backward and one forward until the ``N`` forwards are done, then the
  remaining backwards. A stage's forward of microbatch ``m`` waits for the previous stage's
  forward of ``m``; its backward of ``m`` for the next stage's backward of ``m``.
- Sends and receives take no time and block nothing; the loss, the optimizer step, gradient
  clipping, data loading and all elementwise work are left out.

Only the 1F1B schedule is modelled; other schedules are refused.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from titan_phases.plan.flops import BACKWARD_FACTOR, FLOPS_PER_WEIGHT
from titan_phases.schedule.blocks import block_of

__all__ = [
    "Pipeline", "StageCost", "ideal_ratio", "makespan_1f1b", "pipeline_of", "single_stage",
    "stage_costs",
]

SCHEDULE = "1F1B"
LOOKUP_PARAMS = ("tok_embeddings.weight",)


@dataclass(frozen=True)
class Pipeline:
    """How a job pipelines its model: schedule, microbatches per step and modules per stage."""

    schedule: str
    microbatches: int
    microbatch_size: int
    stages: tuple[tuple[str, ...], ...]
    """Module names of each stage, input side first."""


@dataclass(frozen=True)
class StageCost:
    """One stage's work per microbatch (FLOPs per token). ``runs_backward``: False for a stage
    wholly below the lowest trainable parameter (its backward is then a no-op)."""

    forward: float
    backward: float
    runs_backward: bool = True


def pipeline_of(job_config: Any, n_layers: int) -> Pipeline:
    """The :class:`Pipeline` of a torchtitan job config whose model has ``n_layers`` blocks.

    Raises:
        ValueError: the schedule is not 1F1B, or the batch does not split into microbatches.
    """
    from torchtitan.distributed.pipeline_parallel import generate_llm_fqn_per_model_part

    parallelism = job_config.parallelism
    if parallelism.pipeline_parallel_schedule != SCHEDULE:
        raise ValueError(f"only the {SCHEDULE} schedule is modelled, not "
                         f"{parallelism.pipeline_parallel_schedule}")
    stages = parallelism.module_fqns_per_model_part or generate_llm_fqn_per_model_part(
        parallelism.pipeline_parallel_degree, n_layers,
        parallelism.pipeline_parallel_first_stage_less_layers,
        parallelism.pipeline_parallel_last_stage_less_layers,
    )
    size = parallelism.pipeline_parallel_microbatch_size
    batch = job_config.training.local_batch_size
    if batch % size:
        raise ValueError(f"local batch {batch} does not split into microbatches of {size}")
    return Pipeline(SCHEDULE, batch // size, size, tuple(tuple(stage) for stage in stages))


def single_stage(n_layers: int, local_batch_size: int) -> Pipeline:
    """A model of ``n_layers`` blocks without pipeline parallelism, as one stage running its
    local batch as one microbatch: its makespan is a step's forward plus backward (see the
    module docstring)."""
    from torchtitan.distributed.pipeline_parallel import generate_llm_fqn_per_model_part

    (modules,) = generate_llm_fqn_per_model_part(1, n_layers)
    return Pipeline(SCHEDULE, 1, local_batch_size, (tuple(modules),))


def _module_of(name: str, modules: Sequence[str]) -> int:
    """Index in ``modules`` of the longest module name that is ``name`` or prefixes it."""
    found = [i for i, m in enumerate(modules) if name == m or name.startswith(m + ".")]
    if not found:
        raise ValueError(f"parameter {name} is in no pipeline stage")
    return max(found, key=lambda i: len(modules[i]))


def stage_costs(
    param_numels: Mapping[str, int],
    stages: Sequence[Sequence[str]],
    trainable: Collection[str],
    attention_flops: float = 0.0,
    lookup_params: Collection[str] = LOOKUP_PARAMS,
) -> list[StageCost]:
    """Per-microbatch :class:`StageCost` of each stage when ``trainable`` is trained (see the
    module docstring). ``param_numels``: every parameter's element count by name."""
    modules = [m for stage in stages for m in stage]
    stage_of = [s for s, stage in enumerate(stages) for _ in stage]
    weights = [0.0] * len(modules)  # forward FLOPs of each module's weights
    trained = [0.0] * len(modules)  # forward FLOPs of its trainable weights
    holds_trainable = [False] * len(modules)
    for name, numel in param_numels.items():
        i = _module_of(name, modules)
        flops = 0.0 if name in lookup_params else FLOPS_PER_WEIGHT * numel
        weights[i] += flops
        if name in trainable:
            trained[i] += flops
            holds_trainable[i] = True
    attention = [attention_flops if block_of(m) is not None else 0.0 for m in modules]
    lowest = next((i for i, held in enumerate(holds_trainable) if held), len(modules))
    costs = []
    for s in range(len(stages)):
        mine = [i for i in range(len(modules)) if stage_of[i] == s]
        forward = sum(weights[i] + attention[i] for i in mine)
        spanned = [i for i in mine if i >= lowest]
        input_grads = sum(weights[i] + BACKWARD_FACTOR * attention[i] for i in spanned)
        costs.append(StageCost(forward, input_grads + sum(trained[i] for i in mine),
                               runs_backward=bool(spanned)))
    return costs


def _order(stage: int, stages: int, microbatches: int) -> list[tuple[str, int]]:
    """Schedule1F1B's actions of ``stage``: ``("F" | "B", microbatch)`` in execution order."""
    warmup = min(microbatches, stages - stage)
    order = [("F", m) for m in range(warmup)]
    forward, backward = warmup, 0
    while backward < microbatches:
        order.append(("B", backward))
        backward += 1
        if forward < microbatches:
            order.append(("F", forward))
            forward += 1
    return order


def makespan_1f1b(costs: Sequence[StageCost], microbatches: int) -> float:
    """Time from the first forward to the last backward of a 1F1B step over ``costs``' stages
    and ``microbatches`` microbatches (see the module docstring for the dependencies)."""
    n_stages = len(costs)
    if microbatches < n_stages:
        raise ValueError(f"1F1B needs at least as many microbatches as stages ({n_stages}), "
                         f"got {microbatches}")
    orders = [_order(s, n_stages, microbatches) for s in range(n_stages)]
    done: dict[tuple[str, int, int], float] = {}  # (kind, stage, microbatch) -> end time
    free = [0.0] * n_stages
    position = [0] * n_stages
    while any(position[s] < len(orders[s]) for s in range(n_stages)):
        progressed = False
        for s, cost in enumerate(costs):
            while position[s] < len(orders[s]):
                kind, m = orders[s][position[s]]
                if kind == "F":
                    after = ("F", s - 1, m) if s > 0 else None
                    duration = cost.forward
                else:
                    waits = cost.runs_backward and s < n_stages - 1
                    after = ("B", s + 1, m) if waits else None
                    duration = cost.backward if cost.runs_backward else 0.0
                if after is not None and after not in done:
                    break
                start = max(free[s], done[after] if after is not None else 0.0)
                free[s] = done[(kind, s, m)] = start + duration
                position[s] += 1
                progressed = True
        if not progressed:
            raise RuntimeError("the 1F1B order deadlocked; the model is inconsistent")
    return max(free)


def ideal_ratio(
    param_numels: Mapping[str, int],
    pipeline: Pipeline,
    trainable: Collection[str],
    attention_flops: float = 0.0,
) -> float:
    """Makespan of a step training ``trainable`` over that of a step training everything."""
    def makespan(names: Collection[str]) -> float:
        costs = stage_costs(param_numels, pipeline.stages, names, attention_flops)
        return makespan_1f1b(costs, pipeline.microbatches)

    return makespan(set(trainable)) / makespan(set(param_numels))
