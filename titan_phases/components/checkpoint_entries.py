"""Reading a few of titan_phases' own entries from a DCP checkpoint, on each rank by itself.

Before torchtitan loads a checkpoint, the trainer needs the saved phase and the optimizer's
param-group metadata to rebuild the live structure to match. Those entries are a few bytes, so
every rank reads them itself (DCP's ``no_dist``) rather than in a collective.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import KeysView
from typing import Any

import torch.distributed.checkpoint as dcp


def entry_names(checkpoint_id: str | os.PathLike) -> KeysView[str]:
    """The checkpoint's flattened state-dict keys (e.g. ``phases.phase``), from its metadata."""
    return dcp.FileSystemReader(checkpoint_id).read_metadata().state_dict_metadata.keys()


def read_entries(target: dict[str, Any], checkpoint_id: str | os.PathLike) -> None:
    """Fill the (nested, non-tensor) ``target`` state dict in place from the checkpoint.

    Raises DCP's ``CheckpointException`` (a BaseException) for an entry the checkpoint lacks.
    """
    with warnings.catch_warnings():
        # With no_dist DCP warns that it "assumes a single process"; here each rank reads alone.
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(target, checkpoint_id=checkpoint_id, no_dist=True)
