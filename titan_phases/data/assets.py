"""Materialise the embedded corpora and tokenizer into a cache directory, once.

Layout under the cache root (default ``./.cache/titan_phases``, or ``$TITAN_PHASES_CACHE``)::

    data/<corpus>/<split>.jsonl       one {"text": ...} object per document
    tokenizer/tokenizer.json          byte-level BPE, vocab 2048 (llama3 debugmodel's size)
    tokenizer/tokenizer_config.json
    assets.json                       fingerprint; assets are rebuilt when it changes

Writes go to a temporary directory that is renamed into place, so a crash never leaves a
half-written asset set, and concurrent callers (several ranks) end with the same files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from titan_phases.data.corpora import CORPORA, Corpus
from titan_phases.data.tokenizer import train_bpe_tokenizer

logger = logging.getLogger(__name__)

TOKENIZER_VOCAB_SIZE = 2048
_FORMAT_VERSION = 1


def cache_root() -> Path:
    return Path(os.environ.get("TITAN_PHASES_CACHE", ".cache/titan_phases"))


def split_path(root: Path, corpus: str, split: str) -> Path:
    return root / "data" / corpus / f"{split}.jsonl"


def tokenizer_dir(root: Path) -> Path:
    return root / "tokenizer"


def _fingerprint(corpora: list[Corpus]) -> str:
    digest = hashlib.sha256(f"v{_FORMAT_VERSION}:{TOKENIZER_VOCAB_SIZE}".encode())
    for corpus in corpora:
        for doc in corpus.documents:
            digest.update(doc.encode())
    return digest.hexdigest()


def _write_assets(staging: Path, corpora: list[Corpus], fingerprint: str) -> None:
    for corpus in corpora:
        for split in ("train", "validation"):
            path = split_path(staging, corpus.name, split)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w") as f:
                for doc in corpus.split(split):
                    f.write(json.dumps({"text": doc}) + "\n")
    train_texts = [doc for corpus in corpora for doc in corpus.split("train")]
    train_bpe_tokenizer(train_texts, TOKENIZER_VOCAB_SIZE, tokenizer_dir(staging))
    (staging / "assets.json").write_text(
        json.dumps(
            {"fingerprint": fingerprint, "corpora": {c.name: c.description for c in corpora}},
            indent=2,
        )
        + "\n"
    )


def ensure_assets(root: Path | None = None) -> Path:
    """Build the corpora splits and tokenizer under ``root`` unless they are already current."""
    root = root or cache_root()
    corpora = [build() for build in CORPORA.values()]
    fingerprint = _fingerprint(corpora)
    stamp = root / "assets.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    # Every rank may call this at start-up; the lock makes one build while the others wait.
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
            return root
        logger.info("Building embedded corpora and tokenizer under %s", root)
        _build_into(root, corpora, fingerprint)
    return root


def _build_into(root: Path, corpora: list[Corpus], fingerprint: str) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".assets-", dir=root.parent))
    try:
        _write_assets(staging, corpora, fingerprint)
        for entry in ("data", "tokenizer", "assets.json"):
            target = root / entry
            root.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(staging / entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = ensure_assets()
    print(f"embedded assets ready under {root}")


if __name__ == "__main__":
    main()
