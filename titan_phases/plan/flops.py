"""The ideal cost of a training step in a phase, relative to training every parameter.

Freezing the bottom of a model saves backward work only: every step still runs the whole
forward pass, but backward stops at the lowest trainable layer. Counted in FLOPs per token::

    ratio = (F_all + B_span) / (F_all + B_all),    B = 2 x F for every layer

``F_all`` is the forward pass over all layers, ``B_span`` the backward pass over the span from the
lowest trainable layer up to the output (gradients for activations and weights, twice the
forward FLOPs, as in torchtitan's ``6 x params`` count), ``B_all`` the backward pass over
everything. Frozen layers inside the span are counted like trainable ones.

Depth comes from parameter names: blocks are what :mod:`titan_phases.schedule.blocks` says, in
the order they first appear; other parameters sit below every block when they come before the
first block parameter in the given order
(``named_parameters()`` order: the token embeddings) and above the last block otherwise (final
norm, output head). A parameter costs 2 FLOPs per element and token in the forward pass, except
lookup tables (embeddings), which cost none; attention-score matmuls, which have no
parameters, can be added per block with ``attention_flops``.

**Limitations**
A FLOP ratio, not a time model: it ignores work that does not scale with it (elementwise ops,
the loss, the optimizer step, FSDP all-gathers and reduce-scatters, Python overhead), which makes
frozen steps relatively more expensive in practice. It also ignores that the lowest trainable
layer needs no gradient for its input (its true backward is somewhat cheaper than counted).
Blocks are assumed to run one after another in the order they are registered.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from titan_phases.schedule.blocks import block_of

__all__ = ["attention_flops", "forward_flops_by_depth", "ideal_phase_ratio"]

FLOPS_PER_WEIGHT = 2  # one multiply and one add per weight and token
BACKWARD_FACTOR = 2  # backward = activation gradients + weight gradients


def attention_flops(dim: int, seq_len: int) -> float:
    """Forward FLOPs per token of one block's attention scores and value aggregation.

    ``2 x 2 x dim x seq_len`` (two matmuls), ignoring causal sparsity, as torchtitan does.
    """
    return 2 * FLOPS_PER_WEIGHT * dim * seq_len


def _depths(names: list[str]) -> dict[str, int]:
    """Depth of every parameter: 0 below the blocks, ``1 + i`` for the i-th block, top above."""
    order: dict[tuple[str, int], int] = {}
    blocks = {}
    for name in names:
        block = block_of(name)
        if block is not None:
            blocks[name] = order.setdefault(block, len(order))
    top = len(order) + 1
    depths: dict[str, int] = {}
    seen_block = False
    for name in names:
        if name in blocks:
            seen_block = True
            depths[name] = 1 + blocks[name]
        else:
            depths[name] = top if seen_block else 0
    return depths


def forward_flops_by_depth(
    param_numels: Mapping[str, int],
    lookup_params: Collection[str] = ("tok_embeddings.weight",),
    attention_flops: float = 0.0,
) -> list[float]:
    """Forward FLOPs per token at each depth, input side first (see the module docstring)."""
    depths = _depths(list(param_numels))
    flops = [0.0] * (max(depths.values(), default=0) + 1)
    for name, numel in param_numels.items():
        if name not in lookup_params:
            flops[depths[name]] += FLOPS_PER_WEIGHT * numel
    for depth in {d for n, d in depths.items() if block_of(n) is not None}:
        flops[depth] += attention_flops
    return flops


def ideal_phase_ratio(
    param_numels: Mapping[str, int],
    trainable: Collection[str],
    lookup_params: Collection[str] = ("tok_embeddings.weight",),
    attention_flops: float = 0.0,
) -> float:
    """FLOPs of a step training only ``trainable``, over those of a step training everything.

    Args:
        param_numels: every parameter's name and element count, in ``named_parameters()``
            order (the order places non-block parameters below or above the blocks).
        trainable: names of the parameters trained in the phase; 1/3 when empty (forward only).
        lookup_params: parameters used as lookup tables, which cost no forward FLOPs.
        attention_flops: parameter-free forward FLOPs per token of each block
            (:func:`attention_flops`).

    Raises:
        ValueError: a trainable name is not in ``param_numels``.
    """
    unknown = sorted(set(trainable) - set(param_numels))
    if unknown:
        raise ValueError(f"trainable parameters not in the model: {', '.join(unknown[:3])}")
    flops = forward_flops_by_depth(param_numels, lookup_params, attention_flops)
    forward = sum(flops)
    if forward == 0:
        raise ValueError("the model has no forward FLOPs (only lookup parameters)")
    depths = _depths(list(param_numels))
    lowest = min((depths[n] for n in trainable), default=len(flops))
    backward_span = BACKWARD_FACTOR * sum(flops[lowest:])
    return (forward + backward_span) / ((1 + BACKWARD_FACTOR) * forward)
