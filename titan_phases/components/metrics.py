"""Per-step metrics for machines (``metrics.jsonl``) and people (TensorBoard, console).

:class:`PhaseMetricsProcessor` is torchtitan's ``MetricsProcessor`` with two additions:

* every logged training step also reports the lr of each param group (as the optimizer used
  it, captured just before ``optimizer.step``), the number of trainable parameters and, per
  rank, the bytes of params, fp32 master weights, grads and optimizer state it holds
  (:func:`held_bytes`, measured once per phase, after its first step);
  subclasses or the trainer add more through :meth:`PhaseMetricsProcessor.add_step_metrics`;
* a :class:`JsonlLogger` writes ``<job.dump_folder>/metrics.jsonl`` beside TensorBoard, one JSON
  object per logged step, whether or not TensorBoard is enabled, through the file's own writer
  (:mod:`titan_phases.components.metrics_file`, which also holds the one reader of the file).

The JSONL schema (keys absent when not measured)::

    {"type": "train", "step": 20, "loss": 3.21, "max_loss": 3.4, "grad_norm": 0.9,
     "lr": [0.0008, 0.0001], "tokens_per_second": 5120.3, "step_time_s": 0.41,
     "trainable_params": 1234567, "param_bytes": [12327424, 12327424],
     "master_bytes": [0, 0], "grad_bytes": [2468864, 2468864],
     "optimizer_state_bytes": [4937728, 4937728],
     "memory_peak_gib": 1.02, "mfu_pct": 3.1, "time": 1.7e9, ...extra keys such as "phase"}
    {"type": "validation", "step": 20, "loss": 3.05, ...}

**Limitations**
Written by the metrics rank only (rank 0, or the loss-visible rank under pipeline parallelism),
like torchtitan's TensorBoard logs. The file is append-only: a resumed run appends lines for
steps it repeats (each process start begins with a ``{"type": "run_start", ...}`` line), so it
is read through :func:`titan_phases.components.metrics_file.read_metrics`, where the last
record of a step wins. Phase transitions and an early end of training add
``{"type": "transition", ...}`` and ``{"type": "end", "reason": ...}`` lines.
Uses torchtitan 0.2.2's private ``torchtitan.components.metrics._get_metrics_rank`` to find the
rank that writes, so metrics.jsonl comes from the same rank as torchtitan's own logs.
"""

from __future__ import annotations

import math
import os
import re
import time
from typing import Any

import torch
from torchtitan.components.metrics import (
    _get_metrics_rank,
    BaseLogger,
    LoggerContainer,
    MetricsProcessor,
)
from torchtitan.config import JobConfig
from torchtitan.distributed import ParallelDims

from titan_phases.components.master_weights import local_bytes
from titan_phases.components.metrics_file import METRICS_FILE, MetricsWriter

# torchtitan metric name -> metrics.jsonl key
_JSONL_KEYS = {
    "loss_metrics/global_avg_loss": "loss",
    "loss_metrics/global_max_loss": "max_loss",
    "grad_norm": "grad_norm",
    "throughput(tps)": "tokens_per_second",
    "memory/max_reserved(GiB)": "memory_peak_gib",
    "mfu(%)": "mfu_pct",
    "validation_metrics/loss": "loss",
    "validation_metrics/throughput(tps)": "tokens_per_second",
    "validation_metrics/memory/max_reserved(GiB)": "memory_peak_gib",
}
_LR_PREFIX = "lr/group_"
# held_bytes' quantities, reported per rank.
_HELD_BYTES = ("param_bytes", "master_bytes", "grad_bytes", "optimizer_state_bytes")
# TensorBoard takes scalars, so lists travel as "<name>/group_<i>" or "<name>/rank_<i>".
_LIST_KEY = re.compile(r"^(?P<base>[a-z_]+)/(?:group|rank)_(?P<index>\d+)$")


def _json_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_jsonl_record(metrics: dict[str, Any], step: int) -> dict[str, Any]:
    """Translate one torchtitan metrics dict into a ``metrics.jsonl`` record."""
    is_validation = any(k.startswith("validation_metrics/") for k in metrics)
    record: dict[str, Any] = {"type": "validation" if is_validation else "train", "step": step}
    lists: dict[str, dict[int, Any]] = {}
    for name, value in metrics.items():
        if match := _LIST_KEY.match(name):
            lists.setdefault(match["base"], {})[int(match["index"])] = _json_value(value)
        elif name in _JSONL_KEYS:
            record[_JSONL_KEYS[name]] = _json_value(value)
        elif "/" not in name and name != "lr":
            record[name] = _json_value(value)
    for base, values in lists.items():
        record[base] = [values[i] for i in sorted(values)]
    record["time"] = time.time()
    return record


class JsonlLogger(BaseLogger):
    """torchtitan's logger interface over a :class:`MetricsWriter`: one record per ``log``
    call appended to the metrics file at ``path``."""

    def __init__(self, path: str) -> None:
        self._file = MetricsWriter(path)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(record)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.write(to_jsonl_record(metrics, step))

    def close(self) -> None:
        self._file.close()


def optimizer_state_bytes(optimizers: Any) -> int:
    """Bytes of optimizer state held by this rank (local shards of DTensor state)."""
    return sum(
        local_bytes(value)
        for optimizer in optimizers
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def held_bytes(model_parts: list[torch.nn.Module], optimizers: Any) -> list[int]:
    """What this rank holds, in bytes: ``[params, fp32 masters, grads, optimizer state]``
    (local shards), the quantities ``titan-phases plan`` predicts per rank."""
    params = [p for part in model_parts for p in part.parameters()]
    masters = getattr(optimizers, "masters", None)
    return [
        sum(local_bytes(p) for p in params),
        0 if masters is None else masters.nbytes(),
        sum(local_bytes(p.grad) for p in params if p.grad is not None),
        optimizer_state_bytes(optimizers),
    ]


def trainable_parameter_count(model_parts: list[torch.nn.Module]) -> int:
    """Global count (DTensor ``numel`` is the unsharded size) of params with requires_grad."""
    return sum(p.numel() for m in model_parts for p in m.parameters() if p.requires_grad)


def _device() -> torch.device:
    # Collectives run on the accelerator's backend when there is one (NCCL takes no CPU tensor).
    return (
        torch.accelerator.current_accelerator()
        if torch.accelerator.is_available()
        else torch.device("cpu")
    )


class PhaseMetricsProcessor(MetricsProcessor):
    """torchtitan's MetricsProcessor plus per-group lrs, trainable params and metrics.jsonl."""

    def __init__(
        self, job_config: JobConfig, parallel_dims: ParallelDims, tag: str | None = None
    ) -> None:
        super().__init__(job_config, parallel_dims, tag)
        self._step_lrs: list[float] = []
        self._extra_step_metrics: dict[str, Any] = {}
        self._hooked_optimizers: Any = None
        self._last_logged_step = 0
        # Trainable params and optimizer state bytes change only when a phase starts (and its
        # first optimizer step creates state); measured once per phase, not every step.
        self._phase_metrics: dict[str, int] | None = None
        self._jsonl: JsonlLogger | None = None
        if torch.distributed.get_rank() == _get_metrics_rank(parallel_dims, job_config):
            container = self.logger
            if not isinstance(container, LoggerContainer):
                container = LoggerContainer()
                self.logger = container
            self._jsonl = JsonlLogger(os.path.join(job_config.job.dump_folder, METRICS_FILE))
            container.add_logger(self._jsonl)

    @property
    def optimizers(self) -> Any:
        return self._hooked_optimizers

    @optimizers.setter
    def optimizers(self, optimizers: Any) -> None:
        # torchtitan logs the lr of the step just taken; capture lrs right before the
        # optimizer uses them, since schedulers advance them right after.
        self._hooked_optimizers = optimizers
        if optimizers is not None:
            optimizers.register_step_pre_hook(self._capture_lrs)

    def _capture_lrs(self, *args: Any, **kwargs: Any) -> None:
        first = next(iter(self._hooked_optimizers))
        self._step_lrs = [float(group["lr"]) for group in first.param_groups]

    def _trainable_params(self) -> int:
        count = torch.tensor(
            [trainable_parameter_count(self.model_parts)], dtype=torch.int64, device=_device()
        )
        pp_mesh = self.parallel_dims.get_optional_mesh("pp")
        if pp_mesh is not None:
            # Each pipeline rank holds the params of its own stages only.
            torch.distributed.all_reduce(count, group=pp_mesh.get_group())
        return int(count.item())

    def _bytes_per_rank(self) -> dict[str, int]:
        # Every rank calls log() (torchtitan reduces the loss there), so this gather is safe.
        local = torch.tensor(
            held_bytes(self.model_parts, self.optimizers), dtype=torch.int64, device=_device()
        )
        gathered = [torch.zeros_like(local) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(gathered, local)
        return {
            f"{kind}/rank_{rank}": int(held[i].item())
            for rank, held in enumerate(gathered)
            for i, kind in enumerate(_HELD_BYTES)
        }

    def log_event(self, record: dict[str, Any]) -> None:
        """Write a non-metric record (a phase transition, the end of training) to metrics.jsonl."""
        if self._jsonl is not None:
            self._jsonl.write({**record, "time": time.time()})

    def start_at(self, step: int) -> None:
        """Tell the processor training (re)starts after ``step``, e.g. after a checkpoint load."""
        self._last_logged_step = step
        self.time_last_log = time.perf_counter()

    def phase_started(self, phase: int, flops_per_token: int) -> None:
        """A phase starts (at a transition, or when a run starts or resumes in it).

        Reports ``phase`` with every logged step, bases MFU on the phase's own FLOPs per token
        (torchtitan's count assumes every parameter trains), and measures the trainable set
        and optimizer state again at the next log. Call on every rank: that log gathers state
        sizes from all ranks.
        """
        self.add_step_metrics({"phase": phase})
        self.num_flops_per_token = flops_per_token
        self._phase_metrics = None

    def add_step_metrics(self, metrics: dict[str, Any]) -> None:
        """Metrics to report with the next logged training step (e.g. the phase index)."""
        self._extra_step_metrics.update(metrics)

    def log(
        self,
        step: int,
        global_avg_loss: float,
        global_max_loss: float,
        grad_norm: float,
        extra_metrics: dict[str, Any] | None = None,
    ) -> None:
        metrics = dict(extra_metrics or {})
        # torchtitan divides by log_freq even when fewer steps ran since the last log (step 1).
        steps = max(1, step - self._last_logged_step)
        metrics["step_time_s"] = (time.perf_counter() - self.time_last_log) / steps
        self._last_logged_step = step
        metrics.update({f"{_LR_PREFIX}{i}": lr for i, lr in enumerate(self._step_lrs)})
        if self._phase_metrics is None and self.model_parts is not None:
            self._phase_metrics = {"trainable_params": self._trainable_params()}
            if self.optimizers is not None:
                self._phase_metrics.update(self._bytes_per_rank())
        metrics.update(self._phase_metrics or {})
        metrics.update(self._extra_step_metrics)
        super().log(step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=metrics)


def build_phase_metrics_processor(
    job_config: JobConfig,
    parallel_dims: ParallelDims,
    model_args: Any = None,
    tag: str | None = None,
) -> PhaseMetricsProcessor:
    """TrainSpec ``build_metrics_processor_fn`` with torchtitan's signature."""
    del model_args
    return PhaseMetricsProcessor(job_config, parallel_dims, tag)
