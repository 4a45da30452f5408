"""What a phased job should cost, from its config alone: ideal FLOP ratio and AdamW state bytes.

Resolves the job's schedule exactly as the job does (``titan_phases.schedule.load_and_validate``,
model on the meta device: no process group, no parameter memory), then applies
:func:`titan_phases.components.flops.ideal_phase_ratio` and
:func:`bench.analysis.expected_adamw_state_bytes` to every phase.
"""

from __future__ import annotations

from torchtitan.config import JobConfig
from torchtitan.protocols.train_spec import get_train_spec

from bench.analysis import expected_adamw_state_bytes, ModelFacts, PhaseExpectation
from titan_phases.components.flops import attention_flops, ideal_phase_ratio
from titan_phases.config import parse_job_config
from titan_phases.schedule import load_and_validate
from titan_phases.schedule.model_info import meta_model
from titan_phases.train_spec import register_train_specs


def _shapes(job_config: JobConfig) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in meta_model(job_config).named_parameters()}


def expect(args: list[str], world_size: int) -> ModelFacts:
    """Expectations for the phased job with torchtitan arguments ``args``."""
    register_train_specs()
    job_config = parse_job_config(args)
    resolved = load_and_validate(job_config)
    shapes = _shapes(job_config)
    model_args = get_train_spec(job_config.model.name).model_args[job_config.model.flavor]
    attention = attention_flops(model_args.dim, job_config.training.seq_len)
    phases = []
    for k in range(resolved.num_phases):
        trainable = resolved.trainable_params(k)
        phases.append(
            PhaseExpectation(
                params=resolved.phase_params[k],
                trainable=sum(resolved.param_numels[n] for n in trainable),
                trainable_tensors=len(trainable),
                ideal_ratio=ideal_phase_ratio(
                    resolved.param_numels, trainable, attention_flops=attention
                ),
                state_bytes=tuple(expected_adamw_state_bytes(shapes, trainable, world_size)),
            )
        )
    return ModelFacts(
        total_params=sum(resolved.param_numels.values()),
        n_layers=model_args.n_layers,
        dim=model_args.dim,
        phases=tuple(phases),
    )
