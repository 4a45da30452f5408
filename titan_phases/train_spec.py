"""TrainSpecs that titan_phases registers with torchtitan.

``phased(spec)`` derives a phase-aware spec from any torchtitan TrainSpec with
``dataclasses.replace``. It swaps only what phases need:

* ``parallelize_fn`` is wrapped to freeze the parallelised model to phase 0 of the job's
  schedule (:func:`titan_phases.schedule.load_and_validate`), so torchtitan's Trainer builds
  the optimizer over phase 0's params only;
* ``build_optimizers_fn``: the phase-aware container, built through the spec's own builder
  (:func:`titan_phases.components.optimizer.phased_optimizer_builder`), so hooks that builder
  adds, like the MoE load-balancing update, keep working;
* ``build_lr_schedulers_fn``: the phase-aware LR schedulers;
* ``build_metrics_processor_fn``: metrics.jsonl, per-group lrs, trainable params;
* ``build_validator_fn`` is wrapped so every validation measures the same batches (plateau
  detection compares them, exact resume needs them).

Run such a spec with :class:`titan_phases.trainer.PhasedTrainer`. :func:`register_train_specs`
registers ``<family>_phases`` for the model families below (importing ``titan_phases.train``
does it), so ``[model] name = "llama3_phases"`` works.
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
from titan_phases.components.optimizer import builds_phased_optimizers, phased_optimizer_builder
from titan_phases.components.thaw import limit_backward_all_gathers, set_trainable
from titan_phases.components.validate import repeatable
from titan_phases.data.datasets import register_datasets
from titan_phases.schedule import load_and_validate

SPEC_SUFFIX = "_phases"
PHASED_MODEL_FAMILIES = ("llama3", "llama4", "qwen3", "deepseek_v3", "gpt_oss")


def _freezing_to_phase0(parallelize_fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    @functools.wraps(parallelize_fn)
    def parallelize(model: nn.Module, parallel_dims: Any, job_config: JobConfig) -> nn.Module:
        model = parallelize_fn(model, parallel_dims, job_config)
        set_trainable([model], load_and_validate(job_config).trainable_params(0))
        limit_backward_all_gathers([model])
        return model

    return parallelize


def phased(spec: TrainSpec) -> TrainSpec:
    """Return a copy of ``spec`` that runs phase schedules (with PhasedTrainer)."""
    return dataclasses.replace(
        spec,
        parallelize_fn=_freezing_to_phase0(spec.parallelize_fn),
        build_optimizers_fn=phased_optimizer_builder(spec.build_optimizers_fn),
        build_lr_schedulers_fn=build_phased_lr_schedulers,
        build_metrics_processor_fn=build_phase_metrics_processor,
        build_validator_fn=(
            repeatable(spec.build_validator_fn) if spec.build_validator_fn is not None else None
        ),
    )


def is_phased(spec: TrainSpec) -> bool:
    return builds_phased_optimizers(spec.build_optimizers_fn)


@functools.cache
def register_train_specs() -> None:
    register_datasets()
    for family in PHASED_MODEL_FAMILIES:
        register_train_spec(f"{family}{SPEC_SUFFIX}", phased(get_train_spec(family)))
