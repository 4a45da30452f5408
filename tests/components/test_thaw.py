"""Thawing on FSDP2-sharded torchtitan models (real gloo ranks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.dist import run_ranks

TOP = ["output.weight", "norm.weight"] + [
    f"layers.5.{n}" for n in (
        "attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
        "attention.wo.weight", "feed_forward.w1.weight", "feed_forward.w2.weight",
        "feed_forward.w3.weight", "attention_norm.weight", "ffn_norm.weight",
    )
]


def _sharded_debug_model(world_size: int) -> torch.nn.Module:
    from titan_phases.runtime.cpu import activate_if_no_accelerator

    activate_if_no_accelerator()
    from torchtitan.config import ConfigManager
    from torchtitan.distributed import ParallelDims
    from torchtitan.models.llama3 import llama3_args, Transformer
    from torchtitan.protocols.train_spec import get_train_spec

    job_config = ConfigManager().parse_args(
        ["--model.hf_assets_path", ".", "--training.seq_len", "32",
         "--activation_checkpoint.mode", "none", "--training.mixed_precision_param", "float32"]
    )
    dims = ParallelDims(
        dp_shard=world_size, dp_replicate=1, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=world_size
    )
    with torch.device("meta"):
        model = Transformer(llama3_args["debugmodel"])
    model = get_train_spec("llama3").parallelize_fn(model, dims, job_config)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        model.init_weights()
    return model


def _loss(model: torch.nn.Module, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 2048, (2, 33), generator=g)
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())


def _thaw_after_validation_forward(rank: int, world_size: int) -> dict[str, bool]:
    from titan_phases.components.thaw import params_per_part, set_trainable

    model = _sharded_debug_model(world_size)
    set_trainable([model], TOP)
    with torch.no_grad():
        _loss(model, seed=1)  # a validation forward leaves the root module unsharded
    count = set_trainable([model], TOP + ["tok_embeddings.weight"])
    (embedding,) = params_per_part([model], ["tok_embeddings.weight"])[0]
    before = embedding.full_tensor().clone()
    optimizer = torch.optim.SGD([embedding], lr=1.0)
    _loss(model, seed=2).backward()
    optimizer.step()
    return {
        "sharded": type(embedding).__name__ == "DTensor",
        "has_grad": embedding.grad is not None,
        "changed": not torch.equal(before, embedding.full_tensor()),
        "count_ok": count.tensors == len(TOP) + 1,
    }


@pytest.mark.e2e
def test_thaw_after_a_validation_forward_reaches_the_sharded_params():
    for result in run_ranks(_thaw_after_validation_forward, 2):
        assert result == {"sharded": True, "has_grad": True, "changed": True, "count_ok": True}


BLOCKS_AND_HEAD = TOP + [
    f"layers.{i}.{n.split('.', 2)[2]}" for i in range(5) for n in TOP if n.startswith("layers.")
]


def _backward_all_gathers_with_and_without_limit(
    rank: int, world_size: int
) -> dict[str, list[tuple[list[list[str]], torch.Tensor]]]:
    # All in one process group: spawning the ranks costs more than the backwards.
    return {
        name: [_backward_all_gathers(world_size, trainable, limit) for limit in (False, True)]
        for name, trainable in (("top", TOP), ("frozen_embeddings", BLOCKS_AND_HEAD))
    }


def _backward_all_gathers(
    world_size: int, trainable: list[str], limit: bool
) -> tuple[list[list[str]], torch.Tensor]:
    """The parameters of every all-gather in backward (one list per FSDP unshard), and a
    gradient to compare."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group

    from titan_phases.components.thaw import limit_backward_all_gathers, set_trainable

    model = _sharded_debug_model(world_size)
    set_trainable([model], trainable)
    if limit:
        limit_backward_all_gathers([model])
    loss = _loss(model, seed=3)
    gathered: list[list[str]] = []
    # Every FSDP2 unshard goes through this one function (a private module of torch).
    original = _fsdp_param_group.foreach_all_gather

    def recording(fsdp_params, *args, **kwargs):
        gathered.append([p._param_fqn for p in fsdp_params])
        return original(fsdp_params, *args, **kwargs)

    _fsdp_param_group.foreach_all_gather = recording
    try:
        loss.backward()
    finally:
        _fsdp_param_group.foreach_all_gather = original
    grad = dict(model.named_parameters())["layers.5.attention.wq.weight"].grad.full_tensor()
    return gathered, grad


@pytest.mark.e2e
def test_frozen_modules_below_the_trainable_ones_are_not_all_gathered_in_backward():
    runs = run_ranks(_backward_all_gathers_with_and_without_limit, 2)[0]
    (default, default_grad), (limited, limited_grad) = runs["top"]
    # Phase 0 of the default job: block 4 was prefetched for a backward that stops at block 5.
    assert any(n.startswith("layers.4.") for group in default for n in group)
    assert not any(n.startswith("layers.4.") for group in limited for n in group)
    assert len(limited) == len(default) - 1
    assert torch.equal(limited_grad, default_grad)
    # Everything trains but the embedding: FSDP2 prefetched the (separately sharded) frozen
    # embedding for layers.0's backward, which never needs it.
    (default, default_grad), (limited, limited_grad) = runs["frozen_embeddings"]
    assert ["tok_embeddings.weight"] in default
    assert ["tok_embeddings.weight"] not in limited
    assert len(limited) == len(default) - 1
    assert torch.equal(limited_grad, default_grad)
