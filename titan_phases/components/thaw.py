"""Freezing and thawing parameters of (possibly FSDP2-sharded) model parts.

Parameters are addressed by canonical name (wrapper segments such as ``_orig_mod.`` removed), so
a schedule written against the plain model applies unchanged after ``torch.compile``,
activation checkpointing and ``fully_shard``.

Two FSDP2 behaviours shape this module:

* After a forward without backward (validation), the root module, and any module built with
  ``reshard_after_forward=False``, stay *unsharded*: ``parameters()`` then yields the unsharded
  plain tensors, and toggling ``requires_grad`` on them is silently lost at the next all-gather.
  :func:`set_trainable` reshards every FSDP module first. (bf16 mixed precision needs one more
  fix after a thaw: see :mod:`titan_phases.components.fsdp_thaw`.)
* Backward prefetch all-gathers the block below the current one, even when that block is
  frozen and backward never reaches it. :func:`limit_backward_all_gathers` prevents that.

**Limitations**
``limit_backward_all_gathers`` understands the usual transformer layout: FSDP-wrapped blocks in
one ``layers`` container (``ModuleDict`` or ``ModuleList``) registered in forward order, with
embeddings registered before it. Other layouts keep FSDP2's default behaviour.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch.nn as nn
from torch.distributed.fsdp import FSDPModule

from titan_phases.components.fsdp_thaw import reshard_fsdp_modules
from titan_phases.schedule import canonical_param_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThawCount:
    tensors: int
    elements: int


def named_parameters(model_parts: Iterable[nn.Module]) -> dict[str, nn.Parameter]:
    """Canonical name -> parameter over all model parts (each part holds distinct names)."""
    return {
        canonical_param_name(name): param
        for part in model_parts
        for name, param in part.named_parameters()
    }


def set_trainable(model_parts: list[nn.Module], trainable: Iterable[str]) -> ThawCount:
    """Make exactly the named parameters trainable; return how many are trainable now.

    Names not present in these model parts (e.g. on another pipeline stage) are ignored.
    """
    reshard_fsdp_modules(model_parts)
    wanted = set(trainable)
    tensors = elements = 0
    for name, param in named_parameters(model_parts).items():
        param.requires_grad_(name in wanted)
        if name in wanted:
            tensors += 1
            elements += param.numel()
    return ThawCount(tensors, elements)


def parameters_named(model_parts: list[nn.Module], names: Iterable[str]) -> list[list[nn.Parameter]]:
    """Per model part, its parameters among ``names`` in the part's own order."""
    wanted = set(names)
    return [
        [p for n, p in part.named_parameters() if canonical_param_name(n) in wanted]
        for part in model_parts
    ]


def _blocks(model: nn.Module) -> tuple[list[nn.Module], bool]:
    """The model's blocks in forward order, and whether a parameter registered before them
    (e.g. the token embedding) is trainable."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.ModuleDict):
        blocks = list(layers.values())
    elif isinstance(layers, nn.ModuleList):
        blocks = list(layers)
    else:
        return [], False
    first_block_params = {id(p) for p in blocks[0].parameters()} if blocks else set()
    before_trains = False
    for param in model.parameters():
        if id(param) in first_block_params:
            break
        before_trains = before_trains or param.requires_grad
    return blocks, before_trains


def limit_backward_all_gathers(model_parts: list[nn.Module]) -> None:
    """Stop FSDP2 from all-gathering, in backward, blocks that backward never reaches.

    Backward stops below the lowest trainable parameter. FSDP2's default backward prefetch
    still all-gathers the block under the lowest trainable one; marking every block below that
    point ``set_unshard_in_backward(False)`` turns such prefetches into no-ops. Blocks that
    backward passes through (trainable, or below a trainable block or embedding) keep
    unsharding. Call after every change of ``requires_grad``.
    """
    for part in model_parts:
        blocks, before_trains = _blocks(part)
        needs_backward = before_trains
        for block in blocks:
            needs_backward = needs_backward or any(p.requires_grad for p in block.parameters())
            if isinstance(block, FSDPModule):
                block.set_unshard_in_backward(needs_backward)
