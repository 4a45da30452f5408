"""Freezing and thawing parameters of (possibly FSDP2-sharded) model parts.

Parameters are addressed by canonical name (wrapper segments such as ``_orig_mod.`` removed), so
a schedule written against the plain model applies unchanged after ``torch.compile``,
activation checkpointing and ``fully_shard``. Thawing is ``param.requires_grad_(True)`` on the
sharded DTensor parameters; FSDP2 copies the flag to the unsharded parameter at the next
all-gather. Three FSDP2 behaviours shape this module:

* After a forward without backward (validation), the root module, and any module built with
  ``reshard_after_forward=False``, stay *unsharded*: ``parameters()`` then yields the unsharded
  plain tensors, and toggling ``requires_grad`` on them (or collecting them for an optimizer)
  silently targets the wrong tensors. :func:`set_trainable` reshards every FSDP module first
  (:func:`reshard_fsdp_modules`).
* FSDP2 decides each param group's reduce dtype at lazy init from the params that are
  trainable *then*. A module entirely frozen at that point gets none, so with
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` its first backward after a thaw
  fails ("attempting to assign a gradient with dtype BFloat16 to a tensor with grad_dtype
  Float"). :func:`refresh_fsdp_mixed_precision` recomputes the dtypes.
* Backward prefetch all-gathers the block below the current one, even when that block is
  frozen and backward never reaches it. :func:`limit_backward_all_gathers` prevents that.

:func:`titan_phases.components.transition.enter_phase` runs these in order at every
transition, with the optimizer and LR scheduler containers.

**Limitations**
``limit_backward_all_gathers`` understands blocks as :mod:`titan_phases.schedule.blocks`
defines them, with what is registered before the first block (embeddings) below them in
forward order; FSDP modules nested in a block follow the block's decision, which is
conservative (a block's experts are gathered whenever anything in or below the block trains).
Modules above the blocks (final norm, output head) keep FSDP2's default behaviour.
:func:`refresh_fsdp_mixed_precision` relies on FSDP2 internals (private in torch 2.13): the
module's ``_get_fsdp_state()``, its ``_fsdp_param_groups`` (``_fsdp_param_group`` before torch
2.13) and each group's ``_init_mp_dtypes`` (the method FSDP2's lazy init runs); it can go once
FSDP2 re-derives the dtypes when ``requires_grad`` changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch.nn as nn
from torch.distributed.fsdp import FSDPModule

from titan_phases.schedule.blocks import block_modules, first_block_position
from titan_phases.schedule.matching import canonical_param_name

logger = logging.getLogger(__name__)


def _fsdp_modules(model_parts: Iterable[nn.Module]) -> list[FSDPModule]:
    return [m for part in model_parts for m in part.modules() if isinstance(m, FSDPModule)]


def reshard_fsdp_modules(model_parts: Iterable[nn.Module]) -> None:
    """Reshard every FSDP2 module so ``parameters()`` yields the sharded DTensor params."""
    for module in _fsdp_modules(model_parts):
        module.reshard()


def refresh_fsdp_mixed_precision(model_parts: Iterable[nn.Module]) -> None:
    """Recompute FSDP2's per-group orig/reduce dtypes from the currently trainable params.

    Call after changing ``requires_grad`` and before the next backward. Idempotent, and a no-op
    for modules without a mixed-precision policy.
    """
    for module in _fsdp_modules(model_parts):
        state = module._get_fsdp_state()
        # torch >= 2.13 may keep several param groups per module; older releases keep one.
        groups = getattr(state, "_fsdp_param_groups", None)
        if groups is None:
            groups = [g for g in (state._fsdp_param_group,) if g is not None]
        for group in groups:
            group._init_mp_dtypes()
    logger.debug("Refreshed FSDP2 mixed-precision dtypes")


@dataclass(frozen=True)
class ThawCount:
    tensors: int
    elements: int


def params_by_name(model_parts: Iterable[nn.Module]) -> dict[str, nn.Parameter]:
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
    for name, param in params_by_name(model_parts).items():
        param.requires_grad_(name in wanted)
        if name in wanted:
            tensors += 1
            elements += param.numel()
    return ThawCount(tensors, elements)


def params_per_part(
    model_parts: list[nn.Module], names: Iterable[str]
) -> list[list[nn.Parameter]]:
    """Per model part, its parameters among ``names`` in the part's own order."""
    wanted = set(names)
    return [
        [p for n, p in part.named_parameters() if canonical_param_name(n) in wanted]
        for part in model_parts
    ]


def _blocks(model: nn.Module) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """The model's blocks in forward order, and the parameters registered before them (e.g.
    the token embedding)."""
    params = list(model.named_parameters())
    first = first_block_position([name for name, _ in params])
    if first is None:
        return [], []
    return block_modules(model), [p for _, p in params[:first]]


def _nested_fsdp_modules(module: nn.Module) -> list[FSDPModule]:
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def limit_backward_all_gathers(model_parts: list[nn.Module]) -> None:
    """Stop FSDP2 from all-gathering, in backward, modules that backward never reaches.

    Backward stops below the lowest trainable parameter. FSDP2's default backward prefetch
    still all-gathers the module under the lowest trainable one; marking such modules
    ``set_unshard_in_backward(False)`` turns those prefetches into no-ops. Covered:

    * every block below the lowest trainable point, with every FSDP module inside it (under
      expert parallelism torchtitan shards a block's MoE experts as their own module);
    * FSDP modules holding only parameters registered before the first block (the token
      embedding) while none of their parameters trains.

    Modules that backward passes through (trainable, or above a trainable block or
    embedding) keep unsharding. Call after every change of ``requires_grad``.
    """
    for part in model_parts:
        blocks, below_blocks = _blocks(part)
        below = {id(p) for p in below_blocks}
        for module in _nested_fsdp_modules(part):
            if module is part:
                continue
            own = list(module.parameters())
            if own and all(id(p) in below for p in own):
                module.set_unshard_in_backward(any(p.requires_grad for p in own))
        needs_backward = any(p.requires_grad for p in below_blocks)
        for block in blocks:
            needs_backward = needs_backward or any(p.requires_grad for p in block.parameters())
            for module in _nested_fsdp_modules(block):
                module.set_unshard_in_backward(needs_backward)
