"""What titan_phases stores in a DCP checkpoint, and reading it back without loading the model.

Three Stateful objects put titan_phases' own entries into torchtitan's checkpoints:

* the phase controller under :data:`PHASES_KEY` (``phases.phase`` plus a JSON record);
* the optimizer container under torchtitan's ``"optimizer"`` key: DCP's flattened optimizer
  state plus :data:`METADATA_KEY` (phase, optimizer class, every group's hyperparameters) and
  one :data:`PLACEHOLDER_KEY_PREFIX` flag per optimized parameter. The container's
  ``state_dict``, ``load_state_dict`` and ``verify_checkpoint`` are the functions of this
  module that take an :class:`OptimizerLayout` (:func:`optimizer_state_dict`,
  :func:`load_optimizer_state_dict`, :func:`verify_optimizer_checkpoint`);
* the LR scheduler container under ``"lr_scheduler"``: only :data:`METADATA_KEY`.

Metadata is one JSON string per key, so DCP saves it as a single opaque value: its key set never
depends on the optimizer class or the scheduler, every rank writes the same bytes (DCP keeps one
copy), and floats round-trip exactly. JSON has no tuples, non-string keys or Counters (betas,
MultiStepLR milestones), hence the small tagged encoding of :func:`encode_state`.

Before torchtitan loads a checkpoint the trainer needs the saved phase and the optimizer's
metadata to rebuild the live structure to match. Those entries are a few bytes, so every rank
reads them itself (DCP's ``no_dist``) rather than in a collective.

**Limitations** (private torch API this module relies on; check on upgrades)
Readers use ``dcp.FileSystemReader``: checkpoints on other storage (e.g. object stores through a
custom ``StorageReader``) cannot be inspected before loading.
``torch.distributed.checkpoint.state_dict._get_fqns``: DCP's parameter-name canonicalisation
(it strips activation-checkpoint and torch.compile wrapper prefixes), so per-parameter keys
match DCP's optimizer keys (:func:`param_fqns`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator, KeysView, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    _get_fqns,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
    StateDictOptions,
)
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "OPTIMIZER_KEY",
    "PHASES_KEY",
    "PHASE_KEY",
    "PLACEHOLDER_KEY_PREFIX",
    "OptimizerLayout",
    "PhaseMismatchError",
    "check_format_version",
    "check_optimizer_metadata",
    "create_placeholder_state",
    "hyperparameters",
    "load_optimizer_state_dict",
    "optimizer_metadata",
    "optimizer_state_dict",
    "param_fqns",
    "verify_optimizer_checkpoint",
    "decode_metadata",
    "decode_state",
    "drop_placeholder_state",
    "encode_state",
    "entry_names",
    "model_mismatch",
    "read_checkpoint_phase",
    "read_entries",
    "read_optimizer_metadata",
    "read_saved_phase_state",
]

PHASES_KEY = "phases"
"""Checkpoint key of the phase controller's state."""

OPTIMIZER_KEY = "optimizer"
"""torchtitan's CheckpointManager key of the optimizer state."""

METADATA_KEY = "titan_phases.meta"
"""State-dict key of a container's own metadata, a JSON string (see :func:`encode_state`)."""

PHASE_KEY = "phase"
"""Param-group key naming the phase whose params the group holds (group ``i`` has phase ``i``);
saved per parameter as ``param_groups.<fqn>.phase``."""

PLACEHOLDER_KEY_PREFIX = "titan_phases.placeholder."
"""Prefix of the per-parameter flags (``prefix + FQN``) marking placeholder optimizer state."""

FORMAT_VERSION = 1

logger = logging.getLogger(__name__)

_FLAT_OPTIM = StateDictOptions(flatten_optimizer_state_dict=True)


class PhaseMismatchError(ValueError):
    """Saved optimizer / lr-scheduler state does not fit the live phase structure."""


def _to_jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_to_jsonable(v) for v in value]}
    if isinstance(value, list):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Counter):
        return {"__counter__": [[_to_jsonable(k), n] for k, n in value.items()]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _to_jsonable(v) for k, v in value.items()}
        return {"__items__": [[_to_jsonable(k), _to_jsonable(v)] for k, v in value.items()]}
    raise TypeError(
        f"cannot store a {type(value).__name__} in titan_phases metadata: only plain values "
        "(numbers, strings, bools, None, lists, tuples, dicts) are supported; give callables "
        "such as lr lambdas as dotted paths"
    )


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(_from_jsonable(v) for v in value["__tuple__"])
    if "__counter__" in value:
        return Counter({_from_jsonable(k): n for k, n in value["__counter__"]})
    if "__items__" in value:
        return {_from_jsonable(k): _from_jsonable(v) for k, v in value["__items__"]}
    return {k: _from_jsonable(v) for k, v in value.items()}


def encode_state(value: Any) -> str:
    """Encode plain Python state (numbers, strings, lists, tuples, dicts, Counters) as JSON."""
    return json.dumps(_to_jsonable(value))


def decode_state(text: str) -> Any:
    """Inverse of :func:`encode_state`."""
    return _from_jsonable(json.loads(text))


def check_format_version(saved: dict[str, Any], what: str) -> None:
    """Refuse metadata written by a newer, incompatible titan_phases."""
    if saved.get("format_version", 0) > FORMAT_VERSION:
        raise PhaseMismatchError(
            f"{what} state has format version {saved['format_version']}, newer than this "
            f"titan_phases understands ({FORMAT_VERSION}); upgrade titan_phases to load it"
        )


def decode_metadata(
    state_dict: dict[str, Any], what: str, container: str, live_phase: int
) -> dict[str, Any]:
    """The container metadata in ``state_dict``, checked to be ours and not from a newer format."""
    if METADATA_KEY not in state_dict:
        raise PhaseMismatchError(
            f"{what} state has no '{METADATA_KEY}': it was not saved by a {container} "
            f"(live phase {live_phase})"
        )
    saved = decode_state(state_dict[METADATA_KEY])
    check_format_version(saved, what)
    return saved


def entry_names(checkpoint_id: str | os.PathLike) -> KeysView[str]:
    """The checkpoint's flattened state-dict keys (e.g. ``phases.phase``), from its metadata."""
    return dcp.FileSystemReader(checkpoint_id).read_metadata().state_dict_metadata.keys()


def model_mismatch(
    checkpoint_id: str | os.PathLike, model_shapes: Mapping[str, Sequence[int]]
) -> str | None:
    """How the model saved in ``checkpoint_id`` differs from one whose state-dict tensors have
    ``model_shapes`` (global shapes, by FQN); None when every tensor is there with its shape.

    Read from the checkpoint's metadata alone. torchtitan stores the model's tensors at the top
    level of the checkpoint under their FQNs, so a checkpoint of another flavor or family shows
    here, before DCP fails on the first tensor of the wrong size.
    """
    saved = {
        name: tuple(entry.size)
        for name, entry in dcp.FileSystemReader(checkpoint_id).read_metadata()
        .state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
    }
    differences = [
        f"{name} is not in it" if name not in saved
        else f"{name} is {list(saved[name])} there and {list(shape)} in this job's model"
        for name, shape in model_shapes.items()
        if saved.get(name) != tuple(shape)
    ]
    if not differences:
        return None
    shown = "; ".join(differences[:3])
    more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
    return (
        f"{checkpoint_id} holds another model than this job's: {len(differences)} of its "
        f"{len(model_shapes)} tensors differ: {shown}{more}. Load it with the model flavor it "
        "was saved with, or point the job at a checkpoint of this model"
    )


def read_entries(target: dict[str, Any], checkpoint_id: str | os.PathLike) -> None:
    """Fill the (nested, non-tensor) ``target`` state dict in place from the checkpoint.

    Raises DCP's ``CheckpointException`` (a BaseException) for an entry the checkpoint lacks.
    """
    with warnings.catch_warnings():
        # With no_dist DCP warns that it "assumes a single process"; here each rank reads alone.
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(target, checkpoint_id=checkpoint_id, no_dist=True)


def read_optimizer_metadata(
    checkpoint_id: str | os.PathLike, key: str = OPTIMIZER_KEY
) -> dict[str, Any]:
    """The optimizer container's metadata saved in a checkpoint, read without loading tensors."""
    target = {key: {METADATA_KEY: ""}}
    try:
        read_entries(target, checkpoint_id)
    except CheckpointException as exc:
        raise ValueError(
            f"checkpoint {checkpoint_id} has no titan_phases optimizer metadata under '{key}' "
            f"(was it saved by a PhasedOptimizersContainer?): {exc}"
        ) from None
    saved = decode_state(target[key][METADATA_KEY])
    check_format_version(saved, "optimizer")
    return saved


def read_checkpoint_phase(checkpoint_id: str | os.PathLike, key: str = OPTIMIZER_KEY) -> int:
    """The phase a DCP checkpoint's optimizer was saved in, read without loading any tensors.

    ``key`` is the checkpoint key of the optimizer state. Needs no process group.
    """
    return int(read_optimizer_metadata(checkpoint_id, key)["phase"])


def read_saved_phase_state(checkpoint_id: str | os.PathLike) -> dict[str, Any] | None:
    """The phase controller's state stored in a checkpoint, or None if it has none."""
    if f"{PHASES_KEY}.phase" not in entry_names(checkpoint_id):
        return None
    state = {PHASES_KEY: {"phase": 0, "json": ""}}
    read_entries(state, checkpoint_id)
    return state[PHASES_KEY]


# --- the optimizer container's state ---------------------------------------------------------


def param_fqns(model: nn.Module) -> dict[torch.Tensor, str]:
    """Each parameter of ``model`` with its name as DCP's optimizer state dicts spell it."""
    fqns: dict[torch.Tensor, str] = {}
    for name, param in model.named_parameters():
        (fqn,) = _get_fqns(model, name)
        fqns[param] = fqn
    return fqns


def hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    """A param group without its params."""
    return {k: v for k, v in group.items() if k != "params"}


@dataclass(frozen=True)
class OptimizerLayout:
    """What an optimizer container's DCP state is made of: one inner optimizer per model part,
    and each part's parameters with their DCP names (:func:`param_fqns`)."""

    model_parts: Sequence[nn.Module]
    optimizers: Sequence[Optimizer]
    fqns: Sequence[Mapping[torch.Tensor, str]]

    def optimized(self) -> Iterator[tuple[torch.Tensor, str, dict[str, Any]]]:
        """Every optimized parameter with its DCP name and its param group."""
        for opt, fqns in zip(self.optimizers, self.fqns):
            for group in opt.param_groups:
                for param in group["params"]:
                    yield param, fqns[param], group


def optimizer_metadata(
    phase: int, class_path: str, init_args: dict[str, Any], groups: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The container metadata saved under :data:`METADATA_KEY`: the phase, the optimizer class
    and init args, and every group's hyperparameters (DCP alone would give a whole group its
    first param's values and cannot restore an empty group)."""
    return {
        "format_version": FORMAT_VERSION,
        "phase": phase,
        "optimizer": {"class_path": class_path, "init_args": init_args},
        "param_groups": [hyperparameters(g) for g in groups],
    }


def optimizer_state_dict(
    layout: OptimizerLayout, metadata: dict[str, Any], placeholders: set[torch.Tensor]
) -> dict[str, Any]:
    """DCP's flattened optimizer state of every part, the metadata, and one flag per optimized
    parameter saying whether its state is a placeholder."""
    state_dict: dict[str, Any] = {}
    for model, opt in zip(layout.model_parts, layout.optimizers):
        # DCP refuses an optimizer without params (a part still frozen, e.g. a pipeline
        # stage before its phase); it has nothing to save.
        if any(g["params"] for g in opt.param_groups):
            state_dict.update(get_optimizer_state_dict(model, opt, options=_FLAT_OPTIM))
    state_dict[METADATA_KEY] = encode_state(metadata)
    for param, fqn, _ in layout.optimized():
        state_dict[PLACEHOLDER_KEY_PREFIX + fqn] = param in placeholders
    return state_dict


def check_optimizer_metadata(
    saved: dict[str, Any], phase: int, class_path: str, init_args: dict[str, Any] | None = None
) -> None:
    """Raise :class:`PhaseMismatchError` unless ``saved`` (:func:`optimizer_metadata`) was
    written in ``phase`` with the optimizer class ``class_path``; warn when it was written with
    other ``init_args`` (the saved per-group hyperparameters win)."""
    saved_phase = saved["phase"]
    saved_cls = saved["optimizer"]["class_path"]
    if saved_phase != phase:
        raise PhaseMismatchError(
            f"optimizer state was saved in phase {saved_phase} ({saved_cls}) but the live "
            f"optimizer is in phase {phase} ({class_path}). Rebuild to phase {saved_phase} "
            "before loading (freeze to phase 0, build, then add_phase for each phase up to "
            f"{saved_phase}); read_checkpoint_phase() reads a checkpoint's phase"
        )
    if saved_cls != class_path:
        raise PhaseMismatchError(
            f"optimizer state was saved in phase {saved_phase} with {saved_cls} but the live "
            f"optimizer in phase {phase} is {class_path}; the schedule's optimizer reinits "
            "must be the same as when the checkpoint was saved"
        )
    if init_args is not None and saved["optimizer"]["init_args"] != init_args:
        logger.warning(
            "Optimizer init args differ from the checkpoint's (saved %s, live %s): the saved "
            "per-group hyperparameters are restored", saved["optimizer"]["init_args"], init_args,
        )


def _check_param_phases(layout: OptimizerLayout, state_dict: dict[str, Any], phase: int) -> None:
    problems = [
        f"{fqn}: saved in phase {saved}, live phase {group[PHASE_KEY]}"
        for _, fqn, group in layout.optimized()
        if (saved := state_dict.get(f"param_groups.{fqn}.{PHASE_KEY}")) != group[PHASE_KEY]
    ]
    if problems:
        raise PhaseMismatchError(
            f"the phase {phase} checkpoint assigns parameters to other phases than the "
            "live schedule (was the schedule changed?):\n  " + "\n  ".join(problems[:20])
        )


def load_optimizer_state_dict(
    layout: OptimizerLayout, state_dict: dict[str, Any], saved: dict[str, Any], phase: int
) -> set[torch.Tensor]:
    """Load ``state_dict`` into the layout's optimizers; return the params whose loaded state
    is a placeholder. ``saved`` is its decoded metadata, already checked
    (:func:`check_optimizer_metadata`). Every optimized param must already have state (real or
    placeholder): DCP unflattens only the state keys each param has."""
    _check_param_phases(layout, state_dict, phase)
    for model, opt in zip(layout.model_parts, layout.optimizers):
        # DCP's unflatten reads a group's hyperparameters from its first param, so it fails on
        # empty groups: load without them, then put them back in place.
        empty = [(i, g) for i, g in enumerate(opt.param_groups) if not g["params"]]
        if len(empty) < len(opt.param_groups):
            opt.param_groups = [g for g in opt.param_groups if g["params"]]
            try:
                set_optimizer_state_dict(
                    model, opt, optim_state_dict=state_dict, options=_FLAT_OPTIM
                )
            finally:
                groups = list(opt.param_groups)
                for index, group in empty:
                    groups.insert(index, group)
                opt.param_groups = groups
        for group, saved_group in zip(opt.param_groups, saved["param_groups"], strict=True):
            group.update(saved_group)
    return {
        param
        for param, fqn, _ in layout.optimized()
        if state_dict[PLACEHOLDER_KEY_PREFIX + fqn]
    }


def verify_optimizer_checkpoint(
    checkpoint_id: str | os.PathLike,
    layout: OptimizerLayout,
    phase: int,
    class_path: str,
    key: str = OPTIMIZER_KEY,
) -> None:
    """Raise :class:`PhaseMismatchError` unless checkpoint ``checkpoint_id`` fits the optimizer.

    Compares the saved phase, optimizer class and optimized parameters (those of this rank's
    model parts) with the live ones, reading only metadata. Call before loading: a checkpoint
    from an earlier phase (or one optimizing more params) otherwise fails inside DCP with
    "Missing key" (``CheckpointException``), and one optimizing fewer params would load with
    their state silently dropped.
    """
    saved = read_optimizer_metadata(checkpoint_id, key)
    check_optimizer_metadata(saved, phase, class_path)
    prefix, suffix = f"{key}.param_groups.", f".{PHASE_KEY}"
    saved_fqns = {
        name[len(prefix) : -len(suffix)]
        for name in entry_names(checkpoint_id)
        if name.startswith(prefix) and name.endswith(suffix)
    }
    live_fqns = {fqn for _, fqn, _ in layout.optimized()}
    part_fqns = {fqn for fqns in layout.fqns for fqn in fqns.values()}
    missing = sorted(live_fqns - saved_fqns)
    extra = sorted((saved_fqns & part_fqns) - live_fqns)
    if missing or extra:
        raise PhaseMismatchError(
            f"checkpoint {checkpoint_id} (phase {saved['phase']}) optimizes other parameters "
            f"than the live optimizer (phase {phase}; was the schedule changed?): "
            f"not in the checkpoint: {missing[:20]}; only in the checkpoint: {extra[:20]}"
        )


# --- placeholder state -----------------------------------------------------------------------


def _initial_states(
    optimizer_cls: type[Optimizer], group: dict[str, Any], params: Sequence[torch.Tensor],
    optimizer_kwargs: dict[str, Any],
) -> list[dict[str, Any]]:
    """The state ``optimizer_cls`` creates for ``params`` on a first step with zero grads.

    Runs on scratch zero tensors shaped like ``params`` (DTensors stay DTensors), so the real
    params, their grads and the live optimizer are untouched.
    """
    scratch_params = []
    for param in params:
        scratch = torch.zeros_like(param.detach()).requires_grad_(True)
        scratch.grad = torch.zeros_like(scratch)
        scratch_params.append(scratch)
    scratch_group = {**hyperparameters(group), "params": scratch_params, "lr": 0.0}
    scratch_optimizer = optimizer_cls([scratch_group], **optimizer_kwargs)
    scratch_optimizer.step()
    return [scratch_optimizer.state.get(s, {}) for s in scratch_params]


def _creates_state(
    optimizer_cls: type[Optimizer], group: dict[str, Any], optimizer_kwargs: dict[str, Any]
) -> bool:
    # A one-element probe tells stateless configurations (e.g. SGD without momentum) apart
    # without allocating scratch copies of all their params at every checkpoint.
    param = group["params"][0]
    local = param.to_local() if isinstance(param, DTensor) else param
    probe = torch.zeros(1, dtype=local.dtype, device=local.device)
    return bool(_initial_states(optimizer_cls, group, [probe], optimizer_kwargs)[0])


def create_placeholder_state(
    optimizers: Sequence[Optimizer], optimizer_kwargs: dict[str, Any]
) -> set[torch.Tensor]:
    """Give every optimized param without state the state its optimizer's first step would
    create with zero gradients; return those params.

    A param that has not stepped yet (it entered in this phase) has no state, which DCP can
    neither save nor load: checkpoints save such *placeholder* state with a per-param flag
    (:data:`PLACEHOLDER_KEY_PREFIX`), and :func:`drop_placeholder_state` drops it before the
    next step, so that step is the optimizer's own lazy first step, resumed or not.
    """
    created: set[torch.Tensor] = set()
    for opt in optimizers:
        for group in opt.param_groups:
            missing = [p for p in group["params"] if not opt.state.get(p)]
            if not missing or not _creates_state(type(opt), group, optimizer_kwargs):
                continue
            states = _initial_states(type(opt), group, missing, optimizer_kwargs)
            for param, state in zip(missing, states):
                opt.state[param] = state
                created.add(param)
    return created


def drop_placeholder_state(
    optimizers: Sequence[Optimizer], placeholders: set[torch.Tensor]
) -> None:
    """Drop the placeholder state of ``placeholders`` (and empty the set)."""
    for opt in optimizers:
        for param in placeholders:
            opt.state.pop(param, None)
    placeholders.clear()
