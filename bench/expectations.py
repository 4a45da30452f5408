"""What a phased job should cost, from its config alone: ideal step ratios and bytes per rank.

Both come from ``titan-phases plan`` (:func:`titan_phases.plan.build_plan`): the job's schedule
resolved exactly as the job resolves it, the model laid out on the meta device over a fake
process group of ``world_size`` ranks (no parameter memory, no communication). Bytes per rank
are the plan's params, fp32 masters, grads and optimizer state. The ideal ratio is the plan's
FLOP ratio, except under pipeline parallelism, where it is the ratio of 1F1B makespans of
:mod:`bench.pipeline_ideal` (the plan's FLOP ratio ignores the stages). Every phase also gets
the ratio of FLOPs it needs (:attr:`bench.analysis.PhaseExpectation.needed_ratio`), which
differs from the plan's where frozen params lie inside the backward span.
"""

from __future__ import annotations

from torchtitan.protocols.train_spec import get_train_spec

from bench import pipeline_ideal
from bench.analysis import HELD_KINDS, ModelFacts, PhaseExpectation
from titan_phases.config import parse_job_config
from titan_phases.plan import build_plan, RankMemory
from titan_phases.plan.flops import attention_flops
from titan_phases.schedule import load_and_validate
from titan_phases.schedule.blocks import block_of
from titan_phases.train_spec import register_train_specs


def _held(memory: tuple[RankMemory, ...]) -> dict[str, tuple[int, ...]]:
    per_kind = ([m.params for m in memory], [m.masters for m in memory],
                [m.grads for m in memory], [m.optimizer_state for m in memory])
    return {kind: tuple(values) for kind, values in zip(HELD_KINDS, per_kind)}


def expect(args: list[str], world_size: int) -> ModelFacts:
    """Expectations for the phased job with torchtitan arguments ``args``."""
    register_train_specs()
    job_config = parse_job_config(args)
    resolved = load_and_validate(job_config)
    plan = build_plan(job_config, resolved, world_size)
    model_args = get_train_spec(job_config.model.name).model_args[job_config.model.flavor]
    attention = attention_flops(model_args.dim, job_config.training.seq_len)
    phases_trainable = [resolved.trainable_params(k) for k in range(len(plan.phases))]
    one_stage = pipeline_ideal.single_stage(model_args.n_layers,
                                            job_config.training.local_batch_size)
    needed = [pipeline_ideal.ideal_ratio(resolved.param_numels, one_stage, trainable, attention)
              for trainable in phases_trainable]
    pipeline = None
    ideal = [phase.flops_ratio for phase in plan.phases]
    if job_config.parallelism.pipeline_parallel_degree > 1:
        pipeline = pipeline_ideal.pipeline_of(job_config, model_args.n_layers)
        ideal = [
            pipeline_ideal.ideal_ratio(resolved.param_numels, pipeline, trainable, attention)
            for trainable in phases_trainable
        ]
    phases = tuple(
        PhaseExpectation(
            params=resolved.phase_params[k],
            trainable=phase.trainable_params,
            trainable_tensors=len(phases_trainable[k]),
            ideal_ratio=ideal[k],
            state_bytes=tuple(m.optimizer_state for m in phase.memory),
            plan_ratio=phase.flops_ratio,
            needed_ratio=needed[k],
            held=_held(phase.memory),
            blocks=tuple(sorted({block[1] for name in phases_trainable[k]
                                 if (block := block_of(name)) is not None})),
        )
        for k, phase in enumerate(plan.phases)
    )
    return ModelFacts(
        total_params=sum(resolved.param_numels.values()),
        n_layers=model_args.n_layers,
        dim=model_args.dim,
        phases=phases,
        pipeline=pipeline,
    )
