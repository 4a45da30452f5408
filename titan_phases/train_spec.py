"""TrainSpecs that titan_phases registers with torchtitan.

``phased(spec)`` derives a phase-aware :class:`PhasedTrainSpec` from any torchtitan TrainSpec.
It swaps only what phases need:

* ``parallelize_fn`` is wrapped to freeze the parallelised model to phase 0 of the job's
  schedule, so torchtitan's Trainer builds the optimizer over phase 0's params only. The
  schedule is the one :class:`~titan_phases.trainer.PhasedTrainer` resolved and handed over on
  the job config (:func:`titan_phases.schedule.attached_schedule`): it is not resolved again;
* ``build_optimizers_fn``: the phase-aware container, built through the spec's own builder
  (:func:`titan_phases.components.optimizer.phased_optimizer_builder`), so hooks that builder
  adds, like the MoE load-balancing update, keep working;
* ``build_lr_schedulers_fn``: the phase-aware LR schedulers;
* ``build_metrics_processor_fn``: metrics.jsonl, per-group lrs, trainable params;
* ``build_validator_fn`` is wrapped so every validation measures the same batches (plateau
  detection compares them, exact resume needs them).

A spec is phased when it is a :class:`PhasedTrainSpec` (:func:`is_phased`); it stays one
through ``dataclasses.replace``, so a phased spec can be given other flavors or builders. Run it
with :class:`titan_phases.trainer.PhasedTrainer`. :func:`register_train_specs` registers
``<family>_phases`` for the model families below (``python -m titan_phases.train`` does it), so
``[model] name = "llama3_phases"`` works.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch.nn as nn
from torchtitan.config import JobConfig
from torchtitan.protocols.train_spec import get_train_spec, register_train_spec, TrainSpec

from titan_phases.components.lr_scheduler import build_phased_lr_schedulers
from titan_phases.components.metrics import build_phase_metrics_processor
from titan_phases.components.optimizer import phased_optimizer_builder
from titan_phases.components.thaw import limit_backward_all_gathers, set_trainable
from titan_phases.components.validate import repeatable
from titan_phases.data.datasets import register_datasets
from titan_phases.schedule import attached_schedule

SPEC_SUFFIX = "_phases"
PHASED_MODEL_FAMILIES = ("llama3", "llama4", "qwen3", "deepseek_v3", "gpt_oss")


@dataclasses.dataclass
class PhasedTrainSpec(TrainSpec):
    """A TrainSpec whose builders run phase schedules (made by :func:`phased`)."""


def _freezing_to_phase0(parallelize_fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    @functools.wraps(parallelize_fn)
    def parallelize(model: nn.Module, parallel_dims: Any, job_config: JobConfig) -> nn.Module:
        model = parallelize_fn(model, parallel_dims, job_config)
        set_trainable([model], attached_schedule(job_config).trainable_params(0))
        limit_backward_all_gathers([model])
        return model

    return parallelize


def phased(spec: TrainSpec) -> PhasedTrainSpec:
    """Return a copy of ``spec`` that runs phase schedules (with PhasedTrainer)."""
    fields = {field.name: getattr(spec, field.name) for field in dataclasses.fields(TrainSpec)}
    return PhasedTrainSpec(**{
        **fields,
        "parallelize_fn": _freezing_to_phase0(spec.parallelize_fn),
        "build_optimizers_fn": phased_optimizer_builder(spec.build_optimizers_fn),
        "build_lr_schedulers_fn": build_phased_lr_schedulers,
        "build_metrics_processor_fn": build_phase_metrics_processor,
        "build_validator_fn": (
            repeatable(spec.build_validator_fn) if spec.build_validator_fn is not None else None
        ),
    })


def is_phased(spec: TrainSpec) -> bool:
    """Whether ``spec`` runs phase schedules (it was made by :func:`phased`)."""
    return isinstance(spec, PhasedTrainSpec)


@functools.cache
def register_train_specs() -> None:
    register_datasets()
    for family in PHASED_MODEL_FAMILIES:
        register_train_spec(f"{family}{SPEC_SUFFIX}", phased(get_train_spec(family)))
