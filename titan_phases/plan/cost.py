"""What a phased job will cost, phase by phase, worked out from its config before it runs.

``titan-phases plan`` prints, for every phase and for full fine-tuning as the reference:

* the steps it runs (from the schedule; an upper bound where a plateau may end it sooner);
* the FLOPs of one of its steps relative to a full fine-tuning step
  (:func:`titan_phases.plan.flops.ideal_phase_ratio`, attention included);
* per rank, the bytes of sharded parameters, of their gradients (trainable ones only) and of
  optimizer state, for the job's mesh on a given world size
  (:func:`titan_phases.plan.layout.param_layouts`);
* with a measured seconds per full fine-tuning step, the wall time of each phase and in total.

Optimizer state is measured, not modelled: the phase's optimizer class, with the phase's
arguments, takes one step over meta-device tensors shaped like each rank's shards, and the
tensors it creates are counted (as metrics.jsonl counts a running job's state).

**Limitations**
- Memory is what each rank holds between steps: activations, the unsharded copies FSDP2
  all-gathers for forward and backward, communication buffers and allocator overhead are not
  in it.
- The FLOP model counts every parameter at every token, so for MoE models it charges all
  routed experts where only ``top_k`` run: their FLOP ratios are a rough guide only.
- The FLOP ratio is the ideal of the FLOP model; BENCHMARKS.md shows how measured step times
  compare with it on CPU. Wall times scale the given seconds per step by that ideal and leave
  out transitions, validation and checkpoints.
- The optimizer step on meta tensors is run with ``foreach``/``fused`` off (the state is the
  same for torch's optimizers). An optimizer that cannot step on the meta device (one that
  reads tensor values, like ``torch.optim.Adafactor``) has its state reported as unknown.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.optim import Optimizer
from torchtitan.config import JobConfig
from torchtitan.protocols.train_spec import get_train_spec

from titan_phases.plan.flops import attention_flops, ideal_phase_ratio
from titan_phases.plan.layout import parallel_dims_for, param_layouts, ParamLayout
from titan_phases.schedule.classes import import_class_path, optimizer_from_config, OPTIMIZER_MODULE
from titan_phases.schedule.resolve import attach_schedule, ResolvedSchedule

__all__ = ["PhaseCost", "Plan", "RankMemory", "build_plan", "render_plan", "state_bytes"]

_MIB = 1024**2
_GIB = 1024**3


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds between steps."""

    params: int
    grads: int
    optimizer_state: int | None
    """None when the optimizer cannot be stepped on the meta device (see the limitations)."""
    masters: int = 0
    """fp32 master weights of the trainable params (``[phases] fp32_master_weights``)."""

    @property
    def total(self) -> int | None:
        if self.optimizer_state is None:
            return None
        return self.params + self.masters + self.grads + self.optimizer_state


@dataclass(frozen=True)
class PhaseCost:
    label: str
    """The phase index, or ``"full"`` for full fine-tuning."""
    first_step: int | None
    last_step: int | None
    """Steps ``first_step..last_step`` (None when an earlier phase ends only on a plateau)."""
    may_end_earlier: bool
    """A plateau can end the phase before ``last_step``."""
    trainable_params: int
    optimizer: str
    flops_ratio: float
    memory: tuple[RankMemory, ...]
    """One entry per rank."""
    seconds: float | None

    @property
    def steps(self) -> int | None:
        if self.first_step is None or self.last_step is None:
            return None
        return max(0, self.last_step - self.first_step + 1)


@dataclass(frozen=True)
class Plan:
    model: str
    world_size: int
    mesh: dict[str, int]
    """Degree of every parallelism dimension above 1, as torchtitan names them."""
    tokens_per_step: int
    seconds_per_step: float | None
    full: PhaseCost
    phases: tuple[PhaseCost, ...]

    @property
    def total_seconds(self) -> float | None:
        seconds = [p.seconds for p in self.phases]
        return None if any(s is None for s in seconds) else sum(seconds)  # type: ignore[misc]

    @property
    def peak(self) -> tuple[RankMemory, ...]:
        """Per rank, the most it holds in any phase, of each kind of bytes (a cycle's peak;
        the kinds may peak in different phases, the total is the largest phase total)."""
        peaks = []
        for rank in range(self.world_size):
            held = [phase.memory[rank] for phase in self.phases]
            state = [m.optimizer_state for m in held]
            peaks.append(RankMemory(
                params=max(m.params for m in held), grads=max(m.grads for m in held),
                optimizer_state=None if None in state else max(state),  # type: ignore[type-var]
                masters=max(m.masters for m in held),
            ))
        return tuple(peaks)

    @property
    def peak_total(self) -> tuple[int | None, ...]:
        """Per rank, the largest total of any phase."""
        totals = [[phase.memory[rank].total for phase in self.phases]
                  for rank in range(self.world_size)]
        return tuple(None if None in t else max(t) for t in totals)  # type: ignore[type-var]

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "total_seconds": self.total_seconds,
                "peak": [asdict(m) for m in self.peak], "peak_total": list(self.peak_total)}


def state_bytes(
    optimizer_cls: type[Optimizer],
    kwargs: Mapping[str, Any],
    tensors: Iterable[tuple[tuple[int, ...], torch.dtype]],
) -> dict[tuple[tuple[int, ...], torch.dtype], int] | None:
    """Optimizer state bytes ``optimizer_cls(**kwargs)`` keeps per param of each (shape, dtype).

    One step over meta tensors with meta gradients; None if the class cannot take it.
    """
    accepted = inspect.signature(optimizer_cls.__init__).parameters
    kwargs = {**kwargs, **{flag: False for flag in ("foreach", "fused") if flag in accepted}}
    params = {}
    for shape, dtype in dict.fromkeys(tensors):
        param = torch.nn.Parameter(torch.empty(shape, dtype=dtype, device="meta"))
        param.grad = torch.empty_like(param)
        params[(shape, dtype)] = param
    if not params:
        return {}
    try:
        optimizer = optimizer_cls(list(params.values()), **kwargs)
        optimizer.step()
    except Exception:  # a user's class may fail in any way on meta tensors: report unknown
        return None
    return {
        key: sum(
            value.numel() * value.element_size()
            for value in optimizer.state.get(param, {}).values()
            if isinstance(value, torch.Tensor)
        )
        for key, param in params.items()
    }


def _phase_optimizer(
    job_config: JobConfig, resolved: ResolvedSchedule, k: int | None
) -> tuple[type[Optimizer], dict[str, Any]]:
    init = None if k is None else resolved.optimizer_at(k)
    if init is None:
        return optimizer_from_config(job_config.optimizer)
    cls = import_class_path(init.class_path, Optimizer, OPTIMIZER_MODULE, "an optimizer")
    return cls, resolved.optimizer_kwargs(init)


def _memory(
    layouts: Mapping[str, ParamLayout],
    trainable: Sequence[str],
    optimizer: tuple[type[Optimizer], dict[str, Any]],
    world_size: int,
    masters: bool,
) -> tuple[RankMemory, ...]:
    """Per rank: every param's shard, the gradients of the trainable ones (FSDP2 leaves them
    in the param's dtype), their fp32 masters with ``masters``, and the optimizer state,
    which is over the masters' dtype then."""
    held = [[n for n in trainable if layouts[n].local_shapes[r] is not None]
            for r in range(world_size)]

    def stepped(name: str) -> torch.dtype:
        return torch.float32 if masters else layouts[name].dtype

    shards = [(layouts[n].local_shapes[r], stepped(n)) for r in range(world_size)
              for n in held[r]]
    per_shard = state_bytes(*optimizer, shards)
    memory = []
    for rank in range(world_size):
        grads = sum(layouts[n].local_bytes(rank) for n in trainable)
        state = None if per_shard is None else sum(
            per_shard[(layouts[n].local_shapes[rank], stepped(n))] for n in held[rank]
        )
        fp32 = torch.float32.itemsize
        memory.append(RankMemory(
            params=sum(layout.local_bytes(rank) for layout in layouts.values()),
            grads=grads,
            optimizer_state=state,
            masters=sum(layouts[n].local_bytes(rank) // layouts[n].dtype.itemsize * fp32
                        for n in trainable) if masters else 0,
        ))
    return tuple(memory)


def _phase_steps(
    job_config: JobConfig, resolved: ResolvedSchedule
) -> list[tuple[int | None, int | None]]:
    total = job_config.training.steps
    steps: list[tuple[int | None, int | None]] = []
    first: int | None = 1
    for k, phase in enumerate(resolved.phases):
        last_phase = k == resolved.num_phases - 1
        last = total if last_phase else phase.max_transition_step
        if first is None or last is None:
            steps.append((first, None))
            first = None
            continue
        last = min(last, total)
        steps.append((first, last))
        first = last + 1
    return steps


def build_plan(
    job_config: JobConfig,
    resolved: ResolvedSchedule,
    world_size: int,
    seconds_per_step: float | None = None,
) -> Plan:
    """The plan of the job whose schedule is ``resolved``, on ``world_size`` ranks.

    Raises MeshError as :func:`titan_phases.plan.layout.param_layouts` does.
    """
    attach_schedule(job_config, resolved)  # a phased spec's parallelize_fn freezes to phase 0
    layouts = param_layouts(job_config, world_size)
    train_spec = get_train_spec(job_config.model.name)
    model_args = train_spec.model_args[job_config.model.flavor]
    seq_len = job_config.training.seq_len
    attention = attention_flops(model_args.dim, seq_len) if hasattr(model_args, "dim") else 0.0
    parallel_dims = parallel_dims_for(job_config, world_size)
    may_plateau = job_config.phases.effective_transition_mode(
        job_config.validation.enable
    ) != "step"

    def cost(label: str, trainable: Sequence[str], k: int | None,
             first: int | None, last: int | None) -> PhaseCost:
        optimizer = _phase_optimizer(job_config, resolved, k)
        ratio = ideal_phase_ratio(resolved.param_numels, trainable, attention_flops=attention)
        phase = PhaseCost(
            label=label, first_step=first, last_step=last,
            may_end_earlier=may_plateau and k is not None,
            trainable_params=sum(resolved.param_numels[n] for n in trainable),
            optimizer=optimizer[0].__name__, flops_ratio=ratio,
            memory=_memory(layouts, trainable, optimizer, world_size,
                           job_config.phases.fp32_master_weights),
            seconds=None,
        )
        steps = phase.steps
        if seconds_per_step is None or steps is None:
            return phase
        return dataclasses.replace(phase, seconds=steps * ratio * seconds_per_step)

    everything = list(resolved.param_numels)
    phases = tuple(
        cost(str(k), resolved.trainable_params(k), k, first, last)
        for k, (first, last) in enumerate(_phase_steps(job_config, resolved))
    )
    mesh = {
        name: degree
        for name, degree in (
            ("pp", parallel_dims.pp), ("dp_replicate", parallel_dims.dp_replicate),
            ("dp_shard", parallel_dims.dp_shard), ("cp", parallel_dims.cp),
            ("tp", parallel_dims.tp), ("ep", parallel_dims.ep),
        )
        if degree > 1
    }
    return Plan(
        model=f"{job_config.model.name} {job_config.model.flavor}",
        world_size=world_size,
        mesh=mesh,
        tokens_per_step=job_config.training.local_batch_size * seq_len * parallel_dims.dp_replicate
        * parallel_dims.dp_shard,
        seconds_per_step=seconds_per_step,
        full=cost("full", everything, None, 1, job_config.training.steps),
        phases=phases,
    )


def _unit(plan: Plan) -> tuple[str, int]:
    """GiB, or MiB for models whose largest figure is below a GiB."""
    totals = [m.total or m.params + m.masters + m.grads
              for p in (*plan.phases, plan.full) for m in p.memory]
    return ("GiB", _GIB) if max(totals, default=0) >= _GIB else ("MiB", _MIB)


def _amount(values: Sequence[int | None], unit: int) -> str:
    if any(v is None for v in values):
        return "unknown"
    low, high = min(values), max(values)  # type: ignore[type-var]
    if low == high:
        return f"{low / unit:.2f}"
    return f"{low / unit:.2f}-{high / unit:.2f}"


def _steps(phase: PhaseCost) -> str:
    if phase.first_step is None:
        return "after a plateau"
    if phase.last_step is None:
        return f"{phase.first_step}-plateau"
    if phase.steps == 0:
        return "never runs"
    bound = "<=" if phase.may_end_earlier else ""
    return f"{phase.first_step}-{bound}{phase.last_step}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def render_plan(plan: Plan) -> str:
    """The plan as the text ``titan-phases plan`` prints."""
    mesh = ", ".join(f"{k} {v}" for k, v in plan.mesh.items()) or "one rank"
    lines = [
        f"{plan.model} on {plan.world_size} rank{'s' if plan.world_size > 1 else ''} ({mesh}), "
        f"{plan.tokens_per_step:,} tokens per step",
        "",
    ]
    name, unit = _unit(plan)
    with_masters = any(m.masters for p in plan.phases for m in p.memory)
    kinds = ("params", "fp32 masters", "grads", "optim state", "total") if with_masters else (
        "params", "grads", "optim state", "total")
    header = ["phase", "steps", "trainable", "optimizer", "FLOPs/step vs full",
              *(f"{what} {name}/rank" for what in kinds)]
    if plan.seconds_per_step is not None:
        header.append("wall time")
    rows = [header]

    def memory_cells(memory: Sequence[RankMemory], totals: Sequence[int | None]) -> list[str]:
        masters = [_amount([m.masters for m in memory], unit)] if with_masters else []
        return [_amount([m.params for m in memory], unit), *masters,
                _amount([m.grads for m in memory], unit),
                _amount([m.optimizer_state for m in memory], unit), _amount(totals, unit)]

    for phase in (*plan.phases, plan.full):
        memory = phase.memory
        row = [
            phase.label if phase.label != "full" else "full fine-tuning",
            _steps(phase) if phase.label != "full" else f"{phase.first_step}-{phase.last_step}",
            f"{phase.trainable_params:,}",
            phase.optimizer,
            f"{phase.flops_ratio:.3f}",
            *memory_cells(memory, [m.total for m in memory]),
        ]
        if plan.seconds_per_step is not None:
            row.append(_duration(phase.seconds))
        rows.append(row)
    if len(plan.phases) > 1:
        peak = ["peak over phases", "", "", "", "", *memory_cells(plan.peak, plan.peak_total)]
        rows.insert(len(plan.phases) + 1, peak + [""] * (len(header) - len(peak)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        if i in (len(rows) - 1, len(plan.phases) + 1):
            lines.append("")
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if plan.seconds_per_step is not None:
        total = plan.total_seconds
        lines += ["", f"total wall time: {_duration(total)}"
                  + ("" if total is None else f" at {plan.seconds_per_step:g} s per full step")]
    lines += [
        "",
        "Memory: what each rank holds between steps (sharded params, their grads, optimizer",
        "state); a-b is the range over ranks; the peak is each rank's most over the phases.",
        "Not included: activations, the unsharded params FSDP all-gathers for forward and",
        "backward, communication buffers.",
        "FLOPs/step vs full: the FLOP model (forward everywhere, backward from the lowest",
        "trainable layer up); <= marks a phase a plateau may end sooner.",
    ]
    if "pp" in plan.mesh:
        lines += [
            "Under pipeline parallelism a step lasts as long as its stages' pipelined work,",
            "bubbles included: frozen stages save less than these FLOPs (BENCHMARKS.md, PP2).",
        ]
    return "\n".join(lines)
