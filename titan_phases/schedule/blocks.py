"""What a transformer block is: the one definition schedules, FLOPs, thawing and benchmarks share.

A block is a numbered child of a container module. In a parameter or module name the first
all-digit path segment after the first segment marks it: ``layers.3.attention.wq.weight`` is in
block 3 of ``layers``, and so are ``layers.3._checkpoint_wrapped_module.attention.wq.weight``
and ``layers.3._orig_mod.feed_forward.w1.weight`` (torchtitan wraps whole blocks for activation
checkpointing and per-block ``torch.compile``, below the block's own path). Names without such
a segment (``tok_embeddings.weight``, ``norm.weight``, ``output.weight``) are outside every
block. ``nn.ModuleList`` and torchtitan's ``nn.ModuleDict`` of ``"0"``, ``"1"``, ... keys both
give numbered children.

**Limitations**
A block is found by its number, not by its type: a numbered container that is not a stack of
blocks (e.g. a ``Sequential`` head) counts as blocks too. Depth follows registration order,
which is forward order in torchtitan's models.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch.nn as nn

__all__ = ["block_of", "block_pattern", "block_modules", "first_block_position"]


def block_of(name: str) -> tuple[str, int] | None:
    """``(container path, block index)`` of a parameter or module name, or None outside blocks."""
    parts = name.split(".")
    digit = next((i for i, p in enumerate(parts) if i > 0 and p.isdigit()), None)
    if digit is None:
        return None
    return ".".join(parts[:digit]), int(parts[digit])


def block_pattern(container: str, indices: Iterable[int]) -> str:
    """A regex over the whole parameter names of blocks ``indices`` of ``container``."""
    ordered = sorted(set(indices))
    if not ordered:
        raise ValueError("block_pattern needs at least one block index")
    alternatives = "|".join(str(i) for i in ordered)
    alternatives = alternatives if len(ordered) == 1 else f"({alternatives})"
    return rf"{re.escape(container)}\.{alternatives}\..+"


def first_block_position(names: Sequence[str]) -> int | None:
    """Index in ``names`` of the first name inside a block (None when no name is)."""
    return next((i for i, name in enumerate(names) if block_of(name) is not None), None)


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The model's block modules (with whatever wraps them) in registration order."""
    seen: dict[tuple[str, int], nn.Module] = {}
    for name, _ in model.named_parameters():
        block = block_of(name)
        if block is not None and block not in seen:
            container, index = block
            seen[block] = model.get_submodule(f"{container}.{index}")
    return list(seen.values())
