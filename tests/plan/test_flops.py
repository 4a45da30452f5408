"""The ideal per-phase FLOP ratio (pure arithmetic on parameter names and sizes)."""

from __future__ import annotations

import pytest

from titan_phases.plan.flops import (
    attention_flops,
    forward_flops_by_depth,
    ideal_phase_ratio,
)

BLOCK = {"attn.weight": 30, "norm.weight": 10}


def _model(n_layers: int) -> dict[str, int]:
    """A toy llama-shaped model in named_parameters() order: embedding, blocks, norm, head."""
    numels = {"tok_embeddings.weight": 1000}
    for i in range(n_layers):
        numels.update({f"layers.{i}.{name}": numel for name, numel in BLOCK.items()})
    numels.update({"norm.weight": 10, "output.weight": 50})
    return numels


def _block(i: int) -> list[str]:
    return [f"layers.{i}.{name}" for name in BLOCK]


def test_forward_flops_by_depth_skips_lookups_and_adds_attention() -> None:
    flops = forward_flops_by_depth(_model(2), attention_flops=5)
    # embedding (lookup: none), two blocks of 2 x 40 + 5, head 2 x (10 + 50)
    assert flops == [0, 85, 85, 120]


def test_everything_trainable_costs_the_full_step() -> None:
    numels = _model(3)
    assert ideal_phase_ratio(numels, list(numels)) == pytest.approx(1.0)


def test_trainable_embedding_alone_needs_backward_through_everything() -> None:
    assert ideal_phase_ratio(_model(3), ["tok_embeddings.weight"]) == pytest.approx(1.0)


def test_nothing_trainable_is_the_forward_pass() -> None:
    assert ideal_phase_ratio(_model(3), []) == pytest.approx(1 / 3)


def test_head_and_top_block() -> None:
    # forward: 3 blocks x 80 + head 120 = 360; backward over top block + head: 2 x 200
    ratio = ideal_phase_ratio(_model(3), ["output.weight", "norm.weight", *_block(2)])
    assert ratio == pytest.approx((360 + 400) / (3 * 360))


def test_frozen_layers_inside_the_span_still_cost_backward() -> None:
    numels = _model(3)
    only_block_1 = ideal_phase_ratio(numels, _block(1))
    with_head = ideal_phase_ratio(numels, [*_block(1), *_block(2), "output.weight"])
    assert only_block_1 == pytest.approx(with_head)


def test_blocks_are_ordered_numerically_not_by_name() -> None:
    numels = _model(12)
    assert ideal_phase_ratio(numels, _block(10)) < ideal_phase_ratio(numels, _block(9))


def test_wrapped_or_prefixed_block_names_are_recognised() -> None:
    numels = {"model.embed": 8, "model.layers.0.w": 4, "model.layers.1.w": 4, "head.w": 4}
    assert forward_flops_by_depth(numels, lookup_params=["model.embed"]) == [0, 8, 8, 8]


def test_attention_flops_shift_the_ratio_towards_the_blocks() -> None:
    numels = _model(3)
    top = ["output.weight", "norm.weight", *_block(2)]
    plain = ideal_phase_ratio(numels, top)
    with_attention = ideal_phase_ratio(numels, top, attention_flops=attention_flops(4, 16))
    assert attention_flops(4, 16) == 256
    assert with_attention < plain  # more work sits in the (mostly frozen) blocks


def test_llama3_debugmodel_phase_zero() -> None:
    # dim 256, hidden 768, 6 blocks, vocab 2048: the benchmark's phase 0 at seq_len 256
    block = {
        "attention.wq.weight": 65536, "attention.wk.weight": 65536,
        "attention.wv.weight": 65536, "attention.wo.weight": 65536,
        "feed_forward.w1.weight": 196608, "feed_forward.w2.weight": 196608,
        "feed_forward.w3.weight": 196608, "attention_norm.weight": 256, "ffn_norm.weight": 256,
    }
    numels = {"tok_embeddings.weight": 524288}
    for i in range(6):
        numels.update({f"layers.{i}.{k}": v for k, v in block.items()})
    numels.update({"norm.weight": 256, "output.weight": 524288})
    top = ["output.weight", "norm.weight", *(f"layers.5.{k}" for k in block)]
    attention = attention_flops(256, 256)
    per_block = 2 * sum(block.values()) + attention
    forward = 6 * per_block + 2 * (256 + 524288)
    expected = (forward + 2 * (per_block + 2 * (256 + 524288))) / (3 * forward)
    assert ideal_phase_ratio(numels, top, attention_flops=attention) == pytest.approx(expected)


def test_unknown_trainable_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="layers.9.attn.weight"):
        ideal_phase_ratio(_model(3), _block(9))
