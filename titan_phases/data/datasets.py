"""Register the embedded corpora as torchtitan datasets.

After :func:`register_datasets`, ``[training] dataset = "titan_recipes"`` (and
``[validation] dataset = "titan_recipes_validation"``) select them. They go through torchtitan's
own ``HuggingFaceTextDataset``: ``datasets.load_dataset("json", ...)`` on local JSONL files, a
map-style dataset, so torchtitan's sample-index checkpointing resumes them exactly.

``dataset_path`` overrides the file, as for torchtitan's built-in datasets.
"""

from __future__ import annotations

import functools
from typing import Any

from datasets import load_dataset
from torchtitan.hf_datasets import DatasetConfig
from torchtitan.hf_datasets.text_datasets import DATASETS

from titan_phases.data.assets import cache_root, split_path
from titan_phases.data.corpora import CORPORA


def _load_jsonl(path: str) -> Any:
    return load_dataset("json", data_files=path, split="train")


def _text(sample: dict[str, Any]) -> str:
    return sample["text"]


def dataset_names() -> list[str]:
    return [f"titan_{corpus}{suffix}" for corpus in CORPORA for suffix in ("", "_validation")]


@functools.cache
def register_datasets() -> None:
    """Add ``titan_<corpus>`` and ``titan_<corpus>_validation`` to torchtitan's dataset table."""
    root = cache_root()
    for corpus in CORPORA:
        for split, suffix in (("train", ""), ("validation", "_validation")):
            DATASETS[f"titan_{corpus}{suffix}"] = DatasetConfig(
                path=str(split_path(root, corpus, split)),
                loader=_load_jsonl,
                sample_processor=_text,
            )
