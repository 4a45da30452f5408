import json
from pathlib import Path

import pytest

from titan_phases.data.assets import ensure_assets, split_path, tokenizer_dir


def test_assets_load_through_torchtitan(embedded_assets: Path):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    tokenizer = HuggingFaceTokenizer(str(tokenizer_dir(embedded_assets)))
    assert tokenizer.get_vocab_size() == 2048
    ids = tokenizer.encode("Whisk the eggs with the butter gently.", add_bos=True, add_eos=True)
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(ids[1:-1]) == "Whisk the eggs with the butter gently."
    lines = split_path(embedded_assets, "recipes", "validation").read_text().splitlines()
    assert json.loads(lines[0])["text"].startswith("Recipe ")


def test_tokenizer_training_is_deterministic(embedded_assets: Path, tmp_path: Path):
    again = ensure_assets(tmp_path / "again")
    first = (tokenizer_dir(embedded_assets) / "tokenizer.json").read_bytes()
    assert (tokenizer_dir(again) / "tokenizer.json").read_bytes() == first


def test_current_assets_are_not_rebuilt(embedded_assets: Path):
    stamp = embedded_assets / "assets.json"
    before = stamp.stat().st_mtime_ns
    ensure_assets(embedded_assets)
    assert stamp.stat().st_mtime_ns == before


def test_registered_datasets_go_through_torchtitan_dataloader(embedded_assets: Path):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer
    from torchtitan.config import ConfigManager
    from torchtitan.hf_datasets.text_datasets import build_text_dataloader

    from titan_phases.data.datasets import dataset_names, register_datasets

    register_datasets()
    job_config = ConfigManager().parse_args(
        ["--training.dataset", "titan_recipes", "--training.seq_len", "32",
         "--training.local_batch_size", "2",
         "--training.dataset_path", str(split_path(embedded_assets, "recipes", "train"))]
    )
    tokenizer = HuggingFaceTokenizer(str(tokenizer_dir(embedded_assets)))
    loader = build_text_dataloader(
        dp_world_size=1, dp_rank=0, tokenizer=tokenizer, job_config=job_config
    )
    inputs, labels = next(iter(loader))
    assert inputs["input"].shape == (2, 32) and labels.shape == (2, 32)
    assert "Recipe" in tokenizer.decode(inputs["input"][0].tolist())
    assert set(dataset_names()) == {
        "titan_python_docs", "titan_python_docs_validation", "titan_recipes",
        "titan_recipes_validation",
    }


def test_unknown_split_is_rejected():
    from titan_phases.data.corpora import recipes_corpus

    with pytest.raises(ValueError, match="unknown split"):
        recipes_corpus().split("test")


def test_only_jobs_that_read_embedded_data_need_the_assets(embedded_assets: Path):
    from torchtitan.config import ConfigManager

    from titan_phases.data.datasets import uses_embedded_assets

    def job(*args: str):
        return ConfigManager().parse_args(["--model.hf_assets_path", "/elsewhere", *args])

    assert not uses_embedded_assets(job("--training.dataset", "c4"))
    assert uses_embedded_assets(job("--training.dataset", "Titan_Recipes"))
    assert uses_embedded_assets(
        job("--training.dataset", "c4", "--validation.enable",
            "--validation.dataset", "titan_recipes_validation")
    )
    assert not uses_embedded_assets(
        job("--training.dataset", "c4", "--validation.dataset", "titan_recipes_validation")
    )
    assert uses_embedded_assets(
        job("--training.dataset", "c4", "--model.hf_assets_path",
            str(tokenizer_dir(embedded_assets)))
    )
