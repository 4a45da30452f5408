"""Register the embedded corpora as torchtitan datasets.

After :func:`register_datasets`, ``[training] dataset = "titan_recipes"`` (and
``[validation] dataset = "titan_recipes_validation"``) select them. They go through torchtitan's
own ``HuggingFaceTextDataset``: ``datasets.load_dataset("json", ...)`` on local JSONL files, a
map-style dataset, so torchtitan's sample-index checkpointing resumes them exactly.

``dataset_path`` overrides the file, as for torchtitan's built-in datasets.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from datasets import load_dataset
from torchtitan.config import JobConfig
from torchtitan.hf_datasets import DatasetConfig
from torchtitan.hf_datasets.text_datasets import DATASETS

from titan_phases.data.assets import cache_root, split_path, tokenizer_dir
from titan_phases.data.corpora import CORPORA


def _load_jsonl(path: str) -> Any:
    return load_dataset("json", data_files=path, split="train")


def _text(sample: dict[str, Any]) -> str:
    return sample["text"]


def _datasets() -> dict[str, tuple[str, str]]:
    """Dataset name -> (corpus, split)."""
    return {
        f"titan_{corpus}{suffix}": (corpus, split)
        for corpus in CORPORA
        for split, suffix in (("train", ""), ("validation", "_validation"))
    }


def dataset_names() -> list[str]:
    return list(_datasets())


def uses_embedded_assets(job_config: JobConfig) -> bool:
    """Whether the job reads an embedded corpus or the embedded tokenizer."""
    names = set(_datasets())
    # torchtitan lowercases dataset names before looking them up.
    return (
        job_config.training.dataset.lower() in names
        or (job_config.validation.enable and job_config.validation.dataset.lower() in names)
        or Path(job_config.model.hf_assets_path).resolve() == tokenizer_dir(cache_root()).resolve()
    )


@functools.cache
def register_datasets() -> None:
    """Add ``titan_<corpus>`` and ``titan_<corpus>_validation`` to torchtitan's dataset table."""
    root = cache_root()
    for name, (corpus, split) in _datasets().items():
        DATASETS[name] = DatasetConfig(
            path=str(split_path(root, corpus, split)),
            loader=_load_jsonl,
            sample_processor=_text,
        )
