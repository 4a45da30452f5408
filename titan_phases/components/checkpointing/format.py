"""What titan_phases stores in a DCP checkpoint, and reading it back without loading the model.

Three Stateful objects put titan_phases' own entries into torchtitan's checkpoints:

* the phase controller under :data:`PHASES_KEY` (``phases.phase`` plus a JSON record);
* the optimizer container under torchtitan's ``"optimizer"`` key: DCP's flattened optimizer
  state plus :data:`METADATA_KEY` (phase, optimizer class, every group's hyperparameters) and
  one :data:`PLACEHOLDER_KEY_PREFIX` flag per optimized parameter;
* the LR scheduler container under ``"lr_scheduler"``: only :data:`METADATA_KEY`.

Metadata is one JSON string per key, so DCP saves it as a single opaque value: its key set never
depends on the optimizer class or the scheduler, every rank writes the same bytes (DCP keeps one
copy), and floats round-trip exactly. JSON has no tuples, non-string keys or Counters (betas,
MultiStepLR milestones), hence the small tagged encoding of :func:`encode_state`.

Before torchtitan loads a checkpoint the trainer needs the saved phase and the optimizer's
metadata to rebuild the live structure to match. Those entries are a few bytes, so every rank
reads them itself (DCP's ``no_dist``) rather than in a collective.

**Limitations**
Readers use ``dcp.FileSystemReader``: checkpoints on other storage (e.g. object stores through a
custom ``StorageReader``) cannot be inspected before loading.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import KeysView, Mapping, Sequence
from typing import Any

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "OPTIMIZER_KEY",
    "PHASES_KEY",
    "PLACEHOLDER_KEY_PREFIX",
    "PhaseMismatchError",
    "check_format_version",
    "decode_metadata",
    "decode_state",
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

PLACEHOLDER_KEY_PREFIX = "titan_phases.placeholder."
"""Prefix of the per-parameter flags (``prefix + FQN``) marking placeholder optimizer state."""

FORMAT_VERSION = 1


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
