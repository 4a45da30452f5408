"""What a seed changes: the order of corpus B's training documents.

The fine-tuning jobs start from the same pretrained weights, have no dropout and read their data
in file order (torchtitan's ``HuggingFaceTextDataset`` is map-style and unshuffled), so
``--debug.seed`` alone changes nothing (the study checks this, see :mod:`.run`). Each seed
therefore gets its own permutation of the recipes training split, written in the embedded
corpus' JSONL format and passed to the job as ``--training.dataset_path``. The validation
splits are never shuffled.
"""

from __future__ import annotations

import random
from pathlib import Path

from titan_phases.data.assets import split_path

CORPUS_B = "recipes"


def shuffled_split(assets: Path, seed: int, out: Path) -> Path:
    """Write B's training split with its documents permuted by ``seed``; return the file."""
    source = split_path(assets, CORPUS_B, "train")
    documents = [line for line in source.read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(documents)
    path = out / f"{CORPUS_B}-train-seed{seed}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(documents) + "\n")
    return path
