"""Parameter names and sizes of the job's model, from a model built on the meta device.

Needs neither an accelerator nor a process group, and allocates no parameter memory, so every
rank can run it before ``torch.distributed`` is initialised. The model is built the way
torchtitan's Trainer builds it (TrainSpec ``model_cls`` with ``model_args[flavor]`` updated from
the job config); model converters (float8, MX) are not applied, as they keep parameter names.
"""

from __future__ import annotations

import copy
import importlib
import logging
from dataclasses import dataclass

import torch
from torchtitan.config import JobConfig
from torchtitan.protocols.train_spec import get_train_spec, TrainSpec

from .errors import Problem, ScheduleError
from .matching import canonical_param_name

logger = logging.getLogger(__name__)


def train_spec_of(job_config: JobConfig, source: str = "job config") -> TrainSpec:
    """The job's TrainSpec, as torchtitan's Trainer finds it: ``[experimental] custom_import``
    is imported first, so that TrainSpecs it registers are found.

    The one place that imports the job's custom module and reports its failure. Raises
    ScheduleError for a custom import that fails or an unknown model name.
    """
    custom_import = job_config.experimental.custom_import
    if custom_import:
        try:
            importlib.import_module(custom_import)
        except Exception as e:  # importing runs the module's code: report whatever it raises
            raise ScheduleError([Problem(
                source, None, "experimental.custom_import",
                f"cannot import {custom_import!r}: {type(e).__name__}: {e}",
                "name an importable module (a dotted name, relative to the working directory "
                "or installed), or leave it empty",
            )]) from None
    try:
        return get_train_spec(job_config.model.name)
    except ValueError as e:
        raise ScheduleError([Problem(
            source, None, "model.name", str(e),
            "use a registered model, or register it first (experimental.custom_import; "
            "titan_phases.train_spec.register_train_specs() for the *_phases models)",
        )]) from None


def meta_model(job_config: JobConfig, source: str = "job config") -> torch.nn.Module:
    """The job's model built on the meta device, as torchtitan's Trainer would build it.

    Raises ScheduleError as :func:`train_spec_of` does, or for an unknown flavor.
    """
    train_spec = train_spec_of(job_config, source)
    name, flavor = job_config.model.name, job_config.model.flavor
    if flavor not in train_spec.model_args:
        raise ScheduleError([Problem(
            source, None, "model.flavor", f"{name} has no flavor {flavor!r}",
            f"choose one of {', '.join(train_spec.model_args)}",
        )])
    # The Trainer mutates the shared args object itself; validation must not do it first.
    model_args = copy.deepcopy(train_spec.model_args[flavor])
    model_args.update_from_config(job_config)
    with torch.device("meta"):
        return train_spec.model_cls(model_args)


@dataclass(frozen=True)
class ModelParams:
    """The names and sizes of a model's parameters."""

    numels: dict[str, int]
    """``{canonical name: number of elements}`` in ``named_parameters()`` order, each parameter
    once, by the name it was registered under first."""
    all_names: list[str]
    """Every canonical name of every parameter in registration order, a tied parameter under
    each of its names (``named_parameters(remove_duplicate=False)``)."""
    tied: dict[str, str]
    """``{another name of a tied parameter: the name numels lists it by}``, such as a head tied
    to the embeddings (``output.weight`` -> ``tok_embeddings.weight``)."""


def model_params(job_config: JobConfig, source: str = "job config") -> ModelParams:
    """The parameters of the job's model, from the model built on the meta device.

    Raises ScheduleError as :func:`meta_model` does.
    """
    model = meta_model(job_config, source)
    numels: dict[str, int] = {}
    listed_as: dict[int, str] = {}
    all_names: list[str] = []
    tied: dict[str, str] = {}
    for raw_name, param in model.named_parameters(remove_duplicate=False):
        name = canonical_param_name(raw_name)
        all_names.append(name)
        if id(param) in listed_as:
            tied[name] = listed_as[id(param)]
        else:
            listed_as[id(param)] = name
            numels[name] = param.numel()
    logger.debug("%s %s on meta: %d parameter tensors", job_config.model.name,
                 job_config.model.flavor, len(numels))
    return ModelParams(numels, all_names, tied)


def model_param_numels(job_config: JobConfig, source: str = "job config") -> dict[str, int]:
    """``{canonical parameter name: number of elements}`` in ``named_parameters()`` order.

    Raises ScheduleError as :func:`meta_model` does.
    """
    return model_params(job_config, source).numels
