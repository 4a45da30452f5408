"""A phased fine-tune starts from HF safetensors through torchtitan's real initial-load path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.dist import run_ranks

pytestmark = pytest.mark.e2e


def _source_state_dict() -> dict[str, torch.Tensor]:
    from torchtitan.models.llama3 import llama3_args, Transformer

    torch.manual_seed(123)
    model = Transformer(llama3_args["debugmodel"])
    with torch.no_grad():
        model.init_weights()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load_in_trainer(rank: int, world_size: int, hf_dir: str, tokenizer_dir: str, dump: str):
    from titan_phases.runtime.cpu import activate_if_no_accelerator

    activate_if_no_accelerator()
    from torchtitan.config import ConfigManager

    from titan_phases.train_spec import register_train_specs
    from titan_phases.trainer import PhasedTrainer

    register_train_specs()
    job_config = ConfigManager().parse_args(
        [
            "--job.custom_config_module", "titan_phases.config.job_config",
            "--model.name", "llama3_phases",
            "--model.hf_assets_path", tokenizer_dir,
            "--training.dataset", "titan_recipes",
            "--training.seq_len", "64",
            "--training.local_batch_size", "2",
            "--job.dump_folder", dump,
            "--checkpoint.enable",
            "--checkpoint.initial_load_path", hf_dir,
            "--checkpoint.initial_load_in_hf",
        ]
    )
    trainer = PhasedTrainer(job_config)
    try:
        assert trainer.checkpointer.load(step=-1)
        return {
            name: tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            for name, tensor in trainer.model_parts[0].state_dict().items()
        }
    finally:
        trainer.close()


def test_hf_safetensors_initial_load_matches_source(embedded_assets: Path, tmp_path: Path):
    from safetensors.torch import save_file
    from torchtitan.models.llama3 import llama3_args, Llama3StateDictAdapter

    source = _source_state_dict()
    adapter = Llama3StateDictAdapter(llama3_args["debugmodel"], None)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    hf_state = {k: v.contiguous() for k, v in adapter.to_hf(source).items()}
    assert any(k.startswith("model.layers.0.self_attn") for k in hf_state)
    save_file(hf_state, hf_dir / "model.safetensors")

    loaded_per_rank = run_ranks(
        _load_in_trainer, 2, str(hf_dir), str(embedded_assets / "tokenizer"), str(tmp_path / "run")
    )
    for loaded in loaded_per_rank:
        assert loaded.keys() == source.keys()
        for name, tensor in source.items():
            assert torch.equal(loaded[name], tensor), name
