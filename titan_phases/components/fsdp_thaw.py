"""What FSDP2 (``fully_shard``) needs when parameters are thawed during training.

Thawing is ``param.requires_grad_(True)`` on the sharded DTensor parameters; FSDP2 copies the
flag to the unsharded parameter at the next all-gather. Two things need help:

* After a forward without backward (validation), the root module (and any module with
  ``reshard_after_forward=False``) stays unsharded and ``model.parameters()`` yields the
  unsharded tensors: thawing or collecting params for the optimizer then targets the wrong
  tensors. :func:`reshard_fsdp_modules` before collecting params avoids it.
* FSDP2 decides each param group's reduce dtype at lazy init from the params that are
  trainable *then*. A module entirely frozen at that point gets none, so with
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` its first backward after a thaw
  fails ("attempting to assign a gradient with dtype BFloat16 to a tensor with grad_dtype
  Float"). :func:`refresh_fsdp_mixed_precision` recomputes the dtypes;
  ``PhasedOptimizersContainer.add_phase`` calls it.

Sequence at a transition::

    reshard_fsdp_modules(model_parts)
    for p in phase_params: p.requires_grad_(True)      # collected from model.named_parameters()
    optimizers.add_phase(phase, params_per_part, lr)   # calls refresh_fsdp_mixed_precision

**Limitations**
:func:`refresh_fsdp_mixed_precision` calls FSDP2's private ``_init_mp_dtypes`` (the same method
its lazy init runs); it can go once FSDP2 re-derives the dtypes when ``requires_grad`` changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch.nn as nn
from torch.distributed.fsdp import FSDPModule

__all__ = ["refresh_fsdp_mixed_precision", "reshard_fsdp_modules"]

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
