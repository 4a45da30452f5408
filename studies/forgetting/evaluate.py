"""Validation losses of a job's checkpoints on both corpora, measured in the study's process.

:class:`Evaluator` repeats what torchtitan 0.2.2's ``Validator`` computes in a fine-tuning job,
without processes: the job's model (TrainSpec ``model_cls`` with the flavor's args updated from
the job config) on CPU, weights read from a DCP checkpoint with
``torch.distributed.checkpoint.load``, the TrainSpec's loss function, and the validation batches
of every data-parallel rank (each rank of the job sees its own shard of the split; the
validator rewinds to its first ``validation.steps`` batches every time, which is what is built
here, once). The validator's loss is, over its batches ``b`` and ranks ``r``::

    mean_b( sum_r loss_sum[r, b] / sum_r valid_tokens[r, b] )

A job that stores its weights in bf16 with fp32 masters (``[phases] fp32_master_weights``)
checkpoints the masters of the params that train and the bf16 values of the others, but computes
(in fp32, FSDP2's ``mixed_precision_param``) with every weight rounded to bf16. Evaluated with
``storage_dtype="bfloat16"``, the loaded weights are rounded the same way, which is what the
job's own validation measured; without it, the checkpoint's values are measured as they are
(what a model-only or HF save of that job writes).

**Limitations**
No tensor, pipeline or context parallelism (their batches differ); the model computes in fp32,
as the study's jobs do. The result equals the job's logged validation loss up to float rounding
(the study checks ``REL_TOLERANCE``), not bitwise: the job sums in float32 across ranks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torchtitan.components.loss import IGNORE_INDEX
from torchtitan.components.tokenizer import BaseTokenizer, build_hf_tokenizer
from torchtitan.config import JobConfig
from torchtitan.hf_datasets.text_datasets import build_text_validation_dataloader
from torchtitan.protocols.train_spec import get_train_spec

from titan_phases.config import parse_job_config
from titan_phases.data.datasets import register_datasets
from titan_phases.train_spec import register_train_specs

REL_TOLERANCE = 1e-5
"""How far the study's loss may be from the job's logged one (relative)."""


@dataclass(frozen=True)
class Batch:
    inputs: torch.Tensor
    labels: torch.Tensor


class CrossCheckError(AssertionError):
    """The study's validation loss differs from the one the job logged."""


class Evaluator:
    """Validation loss of checkpoints on named validation datasets.

    Args:
        job_args: the fine-tuning job's arguments (model, validation batch size, sequence
            length, steps); every dataset is measured with these settings.
        datasets: ``{key: validation dataset name}``, e.g. ``{"B": "titan_recipes_validation"}``.
        ranks: the job's data-parallel degree (one shard of batches per rank).
    """

    def __init__(self, job_args: list[str], datasets: dict[str, str], ranks: int) -> None:
        register_train_specs()
        register_datasets()
        job_config = parse_job_config(job_args)
        spec = get_train_spec(job_config.model.name)
        model_args = copy.deepcopy(spec.model_args[job_config.model.flavor])
        model_args.update_from_config(job_config)
        self.model = spec.model_cls(model_args)
        with torch.no_grad():
            self.model.init_weights()  # buffers such as the rotary table; weights get loaded
        self.model.eval()
        self.loss_fn = spec.build_loss_fn(job_config)
        tokenizer = build_hf_tokenizer(job_config)
        self.batches = {
            key: self._batches(parse_job_config([*job_args, "--validation.dataset", name]),
                               tokenizer, ranks)
            for key, name in datasets.items()
        }

    @staticmethod
    def _batches(job_config: JobConfig, tokenizer: BaseTokenizer, ranks: int) -> list[list[Batch]]:
        """``[batch][rank]``: the first ``validation.steps`` batches of every rank's shard."""
        steps = job_config.validation.steps
        per_rank = []
        for rank in range(ranks):
            loader = build_text_validation_dataloader(
                dp_world_size=ranks, dp_rank=rank, tokenizer=tokenizer, job_config=job_config,
                infinite=steps != -1,  # as torchtitan's Validator builds it
            )
            batches = []
            for input_dict, labels in loader:
                if steps != -1 and len(batches) >= steps:
                    break
                batches.append(Batch(input_dict["input"], labels))
            per_rank.append(batches)
        return [list(batch) for batch in zip(*per_rank)]

    @torch.no_grad()
    def load(self, checkpoint: Path, storage_dtype: torch.dtype = torch.float32) -> None:
        """Load the model weights of a DCP checkpoint (full or model-only), each rounded to
        ``storage_dtype`` (DCP casts what it reads into the fp32 model's tensors)."""
        state = self.model.state_dict()
        dcp.load(state, checkpoint_id=str(checkpoint))
        self.model.load_state_dict(state)
        if storage_dtype != torch.float32:
            for param in self.model.parameters():
                param.copy_(param.to(storage_dtype))

    @torch.no_grad()
    def loss(self, key: str) -> float:
        """The loaded model's validation loss on dataset ``key``."""
        total = 0.0
        for batch in self.batches[key]:
            loss_sum = sum(self.loss_fn(self.model(b.inputs), b.labels).item() for b in batch)
            tokens = sum(int((b.labels != IGNORE_INDEX).sum()) for b in batch)
            total += loss_sum / tokens
        return total / len(self.batches[key])

    def evaluate(self, checkpoint: Path,
                 storage_dtype: torch.dtype = torch.float32) -> dict[str, float]:
        """``{key: loss}`` of the checkpoint (weights rounded to ``storage_dtype``) on every
        dataset."""
        self.load(checkpoint, storage_dtype)
        return {key: self.loss(key) for key in self.batches}


def cross_check(measured: float, logged: float, where: str) -> None:
    """Raise :class:`CrossCheckError` unless ``measured`` equals ``logged`` (``REL_TOLERANCE``)."""
    if abs(measured - logged) > REL_TOLERANCE * abs(logged):
        raise CrossCheckError(f"{where}: the study measured validation loss {measured:.7f}, the "
                              f"job logged {logged:.7f} (relative tolerance {REL_TOLERANCE:g})")
