"""Whether the tokenizer and datasets a job reads exist, checked before any rank starts.

torchtitan opens them only when its Trainer builds the tokenizer and the dataloaders, after the
process group exists: a missing folder then stops every rank with a traceback, and a dataset on
the Hugging Face Hub that cannot be reached takes about 25 s of retries first. Every upstream
torchtitan job config names a tokenizer folder to download first, and a dataset that is either
a folder of torchtitan's repository (``c4_test``) or on the Hub (``c4``).

:func:`missing_inputs` checks what torchtitan's own builders read, and only for a TrainSpec
that uses them (``build_hf_tokenizer``, ``build_text_dataloader``, ``build_validator``): a
TrainSpec with builders of its own may read other paths. The embedded corpora and tokenizer
are not checked: the job builds them when they are missing
(:func:`titan_phases.data.assets.ensure_assets`).

**Limitations**
A dataset path that is not a local file or folder is taken for a Hub repository when it is
shaped like one (``name`` or ``owner/name``, not ending like a data file: ``.jsonl``,
``.parquet``...), and reported as a missing local path otherwise. A Hub dataset counts as
unreachable only when the Hub's host name does not resolve (looked up with a 3 s limit; a slower
answer counts as reachable) and the dataset is not in the local Hugging Face caches; with
``HF_HUB_OFFLINE`` set it is never reported (the user chose the cache). A Hub id that does not
exist on a reachable Hub is not found before the ranks load it. The dataset table is
torchtitan's ``DATASETS`` (``torchtitan.hf_datasets.text_datasets``), a module-level dict.
"""

from __future__ import annotations

import inspect
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from torchtitan.components.tokenizer import build_hf_tokenizer
from torchtitan.components.validate import build_validator
from torchtitan.config import JobConfig
from torchtitan.hf_datasets.text_datasets import build_text_dataloader, DATASETS
from torchtitan.protocols.train_spec import TrainSpec

from titan_phases.data.assets import cache_root, tokenizer_dir
from titan_phases.data.datasets import dataset_names

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")
"""What torchtitan's HuggingFaceTokenizer loads from the folder, any one of them."""

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_DATA_FILE = re.compile(r"\.(jsonl?|parquet|csv|tsv|txt|arrow)(\.gz|\.zst)?$", re.IGNORECASE)
"""The ending of a data file's name: a path that ends so is local, not a Hub repository."""
_RESOLVE_SECONDS = 3.0
_EMBEDDED_HINT = "or use an embedded dataset (titan_recipes, titan_python_docs)"


@dataclass(frozen=True)
class MissingInput:
    """A tokenizer or dataset the job reads that is not there."""

    key: str
    """The job config key to change, dotted (``training.dataset_path``)."""
    message: str
    hint: str


def missing_inputs(job_config: JobConfig, spec: TrainSpec) -> list[MissingInput]:
    """The tokenizer and datasets ``job_config`` names that the ranks would fail to open, for a
    job that runs ``spec``; empty when everything is there (see the module docstring)."""
    found = []
    if spec.build_tokenizer_fn is build_hf_tokenizer:
        found += _missing_tokenizer(job_config.model.hf_assets_path)
    if spec.build_dataloader_fn is build_text_dataloader:
        found += _missing_dataset("training", job_config.training.dataset,
                                  job_config.training.dataset_path)
    validator = spec.build_validator_fn
    if (job_config.validation.enable and validator is not None
            and inspect.unwrap(validator) is build_validator):
        found += _missing_dataset("validation", job_config.validation.dataset,
                                  job_config.validation.dataset_path)
    return found


def _missing_tokenizer(path: str) -> list[MissingInput]:
    if Path(path).resolve() == tokenizer_dir(cache_root()).resolve():
        return []
    key = "model.hf_assets_path"
    download = ("download the model's Hugging Face tokenizer files (tokenizer.json, "
                "tokenizer_config.json) into it, or name the folder that holds them")
    if not os.path.exists(path):
        return [MissingInput(key, f"{path!r} does not exist", download)]
    if not os.path.isdir(path):
        return [MissingInput(key, f"{path!r} is a file, not a folder",
                             "name the folder that holds tokenizer.json")]
    if not any(os.path.isfile(os.path.join(path, name)) for name in _TOKENIZER_FILES):
        return [MissingInput(key, f"{path!r} holds no tokenizer.json, vocab.json or vocab.txt",
                             download)]
    return []


def _missing_dataset(section: str, name: str, dataset_path: str | None) -> list[MissingInput]:
    config = DATASETS.get(name.lower())  # torchtitan lowercases the name too
    if config is None:
        known = ", ".join(sorted(DATASETS))
        return [MissingInput(f"{section}.dataset", f"{name!r} is not a registered dataset",
                             f"use one of {known}, or register yours in torchtitan's DATASETS "
                             "table from experimental.custom_import")]
    if not dataset_path and name.lower() in dataset_names():
        return []
    path = dataset_path or config.path
    key = f"{section}.dataset_path" if dataset_path else f"{section}.dataset"
    via = "" if dataset_path else f" reads {path!r}, which"
    if os.path.exists(path):
        return []
    if not _HUB_ID.fullmatch(path) or _DATA_FILE.search(path):
        return [MissingInput(key, f"{name!r}{via} does not exist" if via
                             else f"{path!r} does not exist",
                             f"give the local path of the dataset ({section}.dataset_path), "
                             + _EMBEDDED_HINT)]
    host = urlparse(_hub_endpoint()).hostname or ""
    if _hub_offline() or _in_hub_cache(path) or _resolves(host):
        return []
    what = f"{name!r} reads {path!r}" if via else f"{path!r} is read"
    return [MissingInput(
        key, f"{what} from the Hugging Face Hub, but {host} cannot be reached from this machine "
        "and the dataset is not in the local Hugging Face cache",
        f"download it and give its local path as {section}.dataset_path, " + _EMBEDDED_HINT,
    )]


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _in_hub_cache(repo_id: str) -> bool:
    from datasets import config as datasets_config
    from huggingface_hub import constants

    owner, _, name = repo_id.rpartition("/")
    hub = Path(constants.HF_HUB_CACHE) / "--".join(("datasets", *filter(None, (owner, name))))
    built = Path(datasets_config.HF_DATASETS_CACHE) / "___".join(filter(None, (owner, name)))
    return hub.exists() or built.exists()


def _resolves(host: str) -> bool:
    """Whether ``host`` resolves, or the lookup takes longer than the limit (then it may)."""
    answer: list[bool] = []

    def look_up() -> None:
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
        except OSError:
            answer.append(False)

    lookup = threading.Thread(target=look_up, daemon=True)
    lookup.start()
    lookup.join(_RESOLVE_SECONDS)
    return answer[0] if answer else True
