"""The one definition of a transformer block, on names and on modules."""

from __future__ import annotations

import re

import pytest
import torch.nn as nn

from titan_phases.schedule.blocks import (
    block_modules,
    block_of,
    block_pattern,
    first_block_position,
)


@pytest.mark.parametrize("name, block", [
    ("layers.3.attention.wq.weight", ("layers", 3)),
    ("layers.3._checkpoint_wrapped_module.attention.wq.weight", ("layers", 3)),
    ("layers.12._orig_mod.moe.experts.0.w1", ("layers", 12)),
    ("model.layers.1.mlp.weight", ("model.layers", 1)),
    ("tok_embeddings.weight", None),
    ("output.weight", None),
    ("0.weight", None),  # a top-level numbered module is not a block of a container
])
def test_block_of_names(name, block):
    assert block_of(name) == block


def test_block_pattern_matches_whole_names_of_exactly_those_blocks():
    pattern = re.compile(block_pattern("layers", [5, 4]))
    assert pattern.pattern == r"layers\.(4|5)\..+"
    assert pattern.fullmatch("layers.4.attention.wq.weight")
    assert not pattern.fullmatch("layers.14.attention.wq.weight")
    assert block_pattern("layers", [5]) == r"layers\.5\..+"
    with pytest.raises(ValueError):
        block_pattern("layers", [])


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(2, 2)


class _Wrapper(nn.Module):  # like torchtitan's per-block checkpoint or compile wrapper
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._checkpoint_wrapped_module = inner


@pytest.mark.parametrize("container", [
    lambda blocks: nn.ModuleList(blocks),
    lambda blocks: nn.ModuleDict({str(i): b for i, b in enumerate(blocks)}),
])
def test_block_modules_in_registration_order_with_their_wrappers(container):
    model = nn.Module()
    model.tok_embeddings = nn.Embedding(4, 2)
    blocks = [_Wrapper(_Block()), _Block(), _Wrapper(_Block())]
    model.layers = container(blocks)
    model.output = nn.Linear(2, 4)
    assert block_modules(model) == blocks
    assert first_block_position([n for n, _ in model.named_parameters()]) == 1
    assert block_modules(nn.Linear(2, 2)) == []
