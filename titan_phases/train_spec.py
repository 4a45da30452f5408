"""TrainSpecs that titan_phases registers with torchtitan.

``phased(spec)`` derives a titan_phases spec from any torchtitan TrainSpec with
``dataclasses.replace`` (only the builders titan_phases owns are swapped), and
:func:`register_train_specs` registers ``<model>_phases`` for the model families below.
Importing ``titan_phases.train`` registers them, so ``[model] name = "llama3_phases"`` works.
"""

from __future__ import annotations

import dataclasses
import functools

from torchtitan.protocols.train_spec import TrainSpec, get_train_spec, register_train_spec

from titan_phases.components.metrics import build_phase_metrics_processor
from titan_phases.data.datasets import register_datasets

SPEC_SUFFIX = "_phases"
PHASED_MODEL_FAMILIES = ("llama3", "qwen3")


def phased(spec: TrainSpec) -> TrainSpec:
    """Return a copy of ``spec`` that uses titan_phases' builders."""
    return dataclasses.replace(spec, build_metrics_processor_fn=build_phase_metrics_processor)


@functools.cache
def register_train_specs() -> None:
    register_datasets()
    for family in PHASED_MODEL_FAMILIES:
        register_train_spec(f"{family}{SPEC_SUFFIX}", phased(get_train_spec(family)))
