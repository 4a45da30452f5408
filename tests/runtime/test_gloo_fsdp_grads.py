"""FSDP2 on CPU/gloo through torchtitan's own parallelize_fn: grads equal a 1-process reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.dist import run_ranks

pytestmark = pytest.mark.e2e

SEQ = 32
LOCAL_BATCH = 2


def _reference_model() -> torch.nn.Module:
    from torchtitan.models.llama3 import llama3_args, Transformer

    torch.manual_seed(0)
    model = Transformer(llama3_args["debugmodel"])
    with torch.no_grad():
        model.init_weights()
    return model


def _batches(world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 2048, (LOCAL_BATCH * world_size, SEQ + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def _loss(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, n_tokens: int):
    # torchtitan's normalisation: summed token loss over the global token count.
    logits = model(inputs)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum")
    return loss / n_tokens


def _sharded_grads(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    from titan_phases.runtime.cpu import activate_if_no_accelerator

    activate_if_no_accelerator()
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, StateDictOptions
    from torchtitan.config import ConfigManager
    from torchtitan.distributed import ParallelDims
    from torchtitan.protocols.train_spec import get_train_spec

    job_config = ConfigManager().parse_args(
        ["--model.hf_assets_path", ".", "--training.seq_len", str(SEQ),
         "--activation_checkpoint.mode", "none",
         "--training.mixed_precision_param", "float32"]
    )
    parallel_dims = ParallelDims(
        dp_shard=world_size, dp_replicate=1, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=world_size
    )
    reference = _reference_model()
    spec = get_train_spec("llama3")
    with torch.device("meta"):
        from torchtitan.models.llama3 import llama3_args, Transformer

        model = Transformer(llama3_args["debugmodel"])
    model = spec.parallelize_fn(model, parallel_dims, job_config)
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights()  # fills the non-persistent rope buffer; weights are replaced below
    set_model_state_dict(
        model, reference.state_dict(), options=StateDictOptions(full_state_dict=True)
    )
    inputs, labels = _batches(world_size)
    local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    _loss(model, inputs[local], labels[local], labels.numel()).backward()
    return {name: p.grad.full_tensor() for name, p in model.named_parameters()}


def test_gloo_fsdp2_grads_match_single_process_reference():
    world_size = 2
    per_rank = run_ranks(_sharded_grads, world_size)

    reference = _reference_model()
    inputs, labels = _batches(world_size)
    _loss(reference, inputs, labels, labels.numel()).backward()
    expected = {name: p.grad for name, p in reference.named_parameters()}

    for grads in per_rank:
        assert grads.keys() == expected.keys()
        worst = {name: (grad - expected[name]).abs().max().item() for name, grad in grads.items()}
        assert max(worst.values()) <= 1e-6, worst
        assert all(g.abs().sum() > 0 for g in grads.values())
