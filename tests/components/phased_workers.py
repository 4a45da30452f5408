"""Tiny model, data and per-rank workers for the multi-process phased optimizer tests.

Workers run under ``tests.dist.run_ranks`` (real gloo processes, FSDP2 on a 1-D CPU mesh) and
return plain data (CPU tensors, floats, strings) for the test to check. Where a test compares
with a single-process reference, every rank computes the reference itself: plain torch
optimizers, ``add_param_group`` and lrs set by hand from the schedule formula, none of the
code under test.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard, MixedPrecisionPolicy
from torch.distributed.tensor import DTensor
from torchtitan.components.checkpoint import ModelWrapper
from torchtitan.config import LRScheduler as LRSchedulerConfig
from torchtitan.config import Optimizer as OptimizerConfig

from titan_phases.components.checkpointing.format import PhaseMismatchError, read_checkpoint_phase
from titan_phases.components.lr_scheduler import (
    build_phased_lr_schedulers,
    linear_warmup_stable_decay,
    PhasedLRSchedulersContainer,
    warmup_stable_decay_args,
)
from titan_phases.components.optimizer import build_phased_optimizers, PhasedOptimizersContainer
from titan_phases.components.thaw import (
    params_by_name,
    params_per_part,
    refresh_fsdp_mixed_precision,
    reshard_fsdp_modules,
    set_trainable,
)
from titan_phases.runtime.cpu import use_gloo_reductions

VOCAB, DIM, SEQ, GLOBAL_BATCH = 16, 10, 5, 6  # DIM 10 shards unevenly over 3 ranks
TRAINING_STEPS = 8
LR_CONFIG = LRSchedulerConfig(warmup_steps=2)
PHASE1_LR = 5e-3
# Parameter-name prefixes thawed in each phase (phase 0 is trainable from the start).
PHASES = (("head.", "blocks.2."), ("blocks.1.",), ("blocks.0.", "embed."))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.lin = nn.Linear(DIM, DIM)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.tanh(self.lin(self.norm(h)))


class TinyLM(nn.Module):
    """Embedding, three residual blocks, output head; parts keep the whole model's names."""

    def __init__(self) -> None:
        super().__init__()
        self.embed: nn.Module | None = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleDict({str(i): Block() for i in range(3)})
        self.head: nn.Module | None = nn.Linear(DIM, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.embed is not None else x
        for block in self.blocks.values():
            h = block(h)
        return self.head(h) if self.head is not None else h


def build_model() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM()


def split_in_two(model: TinyLM) -> list[nn.Module]:
    """Two model parts as pipeline stages would hold them (embed+blocks 0-1 | block 2+head)."""
    first, second = copy.deepcopy(model), copy.deepcopy(model)
    first.head = None
    del first.blocks["2"]
    second.embed = None
    del second.blocks["0"], second.blocks["1"]
    return [first, second]


def params_with(module: nn.Module, prefixes: Sequence[str]) -> list[nn.Parameter]:
    return [p for n, p in module.named_parameters() if n.startswith(tuple(prefixes))]


def freeze_to(parts: Sequence[nn.Module], prefixes: Sequence[str]) -> None:
    for part in parts:
        for name, param in part.named_parameters():
            param.requires_grad_(name.startswith(tuple(prefixes)))


def shard(
    parts: list[nn.Module], world_size: int, mp_policy: MixedPrecisionPolicy | None = None
) -> list[nn.Module]:
    mesh = init_device_mesh("cpu", (world_size,))
    mp_policy = mp_policy or MixedPrecisionPolicy()
    for part in parts:
        for block in part.blocks.values():
            fully_shard(block, mesh=mesh, mp_policy=mp_policy)
        fully_shard(part, mesh=mesh, mp_policy=mp_policy)
        use_gloo_reductions(part)
        # As torchtitan's llama3 parallelize: the loss is already a global mean, so FSDP2 must
        # not divide the summed grads by the world size.
        for module in part.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)
    return parts


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(VOCAB, (GLOBAL_BATCH, SEQ), generator=generator)
    targets = torch.randint(VOCAB, (GLOBAL_BATCH, SEQ), generator=generator)
    return tokens, targets


def rows(rank: int, world_size: int) -> slice:
    per_rank = GLOBAL_BATCH // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def loss_of(
    parts: Sequence[nn.Module], tokens: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    h = tokens
    for part in parts:
        h = part(h)
    # Normalised by the *global* token count: FSDP2 sums grads over ranks (gloo reductions),
    # so the summed grads equal the single-process gradient of the global mean.
    loss = F.cross_entropy(h.float().reshape(-1, VOCAB), targets.reshape(-1), reduction="sum")
    return loss / (GLOBAL_BATCH * SEQ)


def schedule_factor(step: int) -> float:
    """The phase-0 lr factor of torchtitan's schedule (parity with torchtitan is tested apart)."""
    args = warmup_stable_decay_args(LR_CONFIG, TRAINING_STEPS)
    return linear_warmup_stable_decay(
        step,
        warmup_steps=args["warmup_steps"],
        stable_steps=args["stable_steps"],
        decay_steps=args["decay_steps"],
        lr_decay_type=args["decay_type"],
        min_lr_factor=args["min_lr_factor"],
    )


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t.detach().clone()


def full_params(modules: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    return {n: full(p) for m in modules for n, p in m.named_parameters()}


def full_grads(modules: Sequence[nn.Module]) -> dict[str, torch.Tensor | None]:
    return {
        n: None if p.grad is None else full(p.grad)
        for m in modules
        for n, p in m.named_parameters()
    }


def max_abs_diff(
    got: dict[str, torch.Tensor | None], want: dict[str, torch.Tensor | None]
) -> float:
    """Largest elementwise difference; inf when one side has a tensor (grad) the other lacks."""
    assert got.keys() == want.keys()
    worst = 0.0
    for name, value in got.items():
        if (value is None) != (want[name] is None):
            return float("inf")
        if value is not None:
            worst = max(worst, (value.float() - want[name].float()).abs().max().item())
    return worst


class Reference:
    """Single-process, unsharded training of the same model with plain torch optimizers."""

    def __init__(
        self, phase0: Sequence[str], optimizer_cls: type, kwargs: dict[str, Any], lr: float
    ) -> None:
        self.model = build_model()
        freeze_to([self.model], phase0)
        self.kwargs = kwargs
        self.base_lrs = [lr]
        self.optimizer = optimizer_cls(
            [{"params": params_with(self.model, phase0), "lr": lr}], **kwargs
        )

    def thaw(self, prefixes: Sequence[str], lr: float, optimizer_cls: type | None = None) -> None:
        new_params = params_with(self.model, prefixes)
        for param in new_params:
            param.requires_grad_(True)
        if optimizer_cls is None:
            self.optimizer.add_param_group({"params": new_params, "lr": lr})
        else:
            groups = [{"params": g["params"], "lr": g["lr"]} for g in self.optimizer.param_groups]
            self.optimizer = optimizer_cls(
                groups + [{"params": new_params, "lr": lr}], **self.kwargs
            )
        self.base_lrs.append(lr)

    def step(self, step: int, world_size: int, bf16: bool = False) -> None:
        """One step on the global batch; with ``bf16``, emulate FSDP2's bf16 compute and
        fp32 sum-reduction: per-rank bf16 backward, grads summed in fp32 in rank order."""
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * schedule_factor(step)
        self.optimizer.zero_grad()
        tokens, targets = batch(step)
        if not bf16:
            loss_of([self.model], tokens, targets).backward()
        else:
            compute = copy.deepcopy(self.model).to(torch.bfloat16)
            for rank in range(world_size):
                compute.zero_grad()
                loss_of(
                    [compute], tokens[rows(rank, world_size)], targets[rows(rank, world_size)]
                ).backward()
                for param, low in zip(self.model.parameters(), compute.parameters()):
                    if low.grad is not None:
                        grad = low.grad.float()
                        param.grad = grad if param.grad is None else param.grad + grad
        self.optimizer.step()


def train_step(
    parts: Sequence[nn.Module],
    optimizers: PhasedOptimizersContainer,
    lr_schedulers: PhasedLRSchedulersContainer,
    step: int,
    rank: int,
    world_size: int,
) -> None:
    """One training step the way torchtitan's Trainer does it."""
    optimizers.zero_grad()
    tokens, targets = batch(step)
    loss_of(parts, tokens[rows(rank, world_size)], targets[rows(rank, world_size)]).backward()
    optimizers.step()
    lr_schedulers.step()


def thaw(parts: list[nn.Module], prefixes: Sequence[str]) -> list[list[nn.Parameter]]:
    """Thaw the params under ``prefixes`` with the trainer's own functions (the first steps of
    ``titan_phases.components.transition.enter_phase``); return them per part."""
    reshard_fsdp_modules(parts)
    params = params_by_name(parts)
    new = [name for name in params if name.startswith(tuple(prefixes))]
    set_trainable(parts, [name for name, p in params.items() if p.requires_grad] + new)
    refresh_fsdp_mixed_precision(parts)
    return params_per_part(parts, new)


def _compare_step(
    diffs: list[dict[str, float]], parts: list[nn.Module], reference: Reference
) -> None:
    diffs.append(
        {
            "grads": max_abs_diff(full_grads(parts), full_grads([reference.model])),
            "params": max_abs_diff(full_params(parts), full_params([reference.model])),
        }
    )


# --- worker: 2 model parts, AdamW (fused), state carried over; checkpoints; mismatches --------

ADAMW = OptimizerConfig(name="AdamW", lr=1e-2, weight_decay=0.1, implementation="fused")
ADAMW_KWARGS = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}


def build_two_part_stack(
    world_size: int,
) -> tuple[list[nn.Module], PhasedOptimizersContainer, PhasedLRSchedulersContainer]:
    parts = shard(split_in_two(build_model()), world_size)
    freeze_to(parts, PHASES[0])
    optimizers = build_phased_optimizers(parts, ADAMW, parallel_dims=None)
    return parts, optimizers, build_phased_lr_schedulers(optimizers, LR_CONFIG, TRAINING_STEPS)


def enter_phase1(
    parts: list[nn.Module],
    optimizers: PhasedOptimizersContainer,
    lr_schedulers: PhasedLRSchedulersContainer,
) -> None:
    optimizers.add_phase(1, thaw(parts, PHASES[1]), lr=PHASE1_LR)
    lr_schedulers.add_phase(1)


def states_of(
    parts: list[nn.Module],
    optimizers: PhasedOptimizersContainer,
    lr_schedulers: PhasedLRSchedulersContainer,
) -> dict[str, Any]:
    return {"model": ModelWrapper(parts), "optimizer": optimizers, "lr_scheduler": lr_schedulers}


def snapshot(
    parts: list[nn.Module],
    optimizers: PhasedOptimizersContainer,
    lr_schedulers: PhasedLRSchedulersContainer,
) -> dict[str, Any]:
    """Everything a resumed run depends on, as full (unsharded) CPU tensors and plain values."""
    state, groups = {}, []
    for part, optimizer in zip(parts, optimizers):
        names = {p: n for n, p in part.named_parameters()}
        part_groups = []
        for group in optimizer.param_groups:
            hyperparameters = {k: v for k, v in group.items() if k != "params"}
            part_groups.append({**hyperparameters, "params": [names[p] for p in group["params"]]})
            for param in group["params"]:
                for key, value in optimizer.state[param].items():
                    state[f"{names[param]}.{key}"] = full(value)
        groups.append(part_groups)
    return {
        "phase": (optimizers.phase, lr_schedulers.phase),
        "state": state,
        "groups": groups,
        "schedulers": [s.state_dict() for s in lr_schedulers.schedulers],
        "params": full_params(parts),
    }


def train_and_save(rank: int, world_size: int, ckpt_dir: str) -> dict[str, Any]:
    """Phase 0 for 2 steps, thaw block 1, phase 1 for 2 steps, on 2 model parts, compared with
    the reference after every step. Saves checkpoints in phase 0, right at the transition and
    in phase 1, then checks that mismatched loads fail."""
    parts, optimizers, lr_schedulers = build_two_part_stack(world_size)
    reference = Reference(PHASES[0], torch.optim.AdamW, ADAMW_KWARGS, ADAMW.lr)
    states = states_of(parts, optimizers, lr_schedulers)
    diffs: list[dict[str, float]] = []
    out: dict[str, Any] = {"diffs": diffs}

    for step in range(2):
        train_step(parts, optimizers, lr_schedulers, step, rank, world_size)
        reference.step(step, world_size)
        _compare_step(diffs, parts, reference)
    dcp.save(states, checkpoint_id=os.path.join(ckpt_dir, "phase0"))

    enter_phase1(parts, optimizers, lr_schedulers)
    reference.thaw(PHASES[1], PHASE1_LR)
    out["empty_group_sizes"] = [len(opt.param_groups[1]["params"]) for opt in optimizers]
    dcp.save(states, checkpoint_id=os.path.join(ckpt_dir, "transition"))

    for step in range(2, 4):
        train_step(parts, optimizers, lr_schedulers, step, rank, world_size)
        reference.step(step, world_size)
        _compare_step(diffs, parts, reference)
        if step == 2:
            out["params_after_step2"] = full_params(parts)
    dcp.save(states, checkpoint_id=os.path.join(ckpt_dir, "phase1"))
    out["saved"] = snapshot(parts, optimizers, lr_schedulers)
    out["read_phases"] = [
        read_checkpoint_phase(os.path.join(ckpt_dir, name))
        for name in ("phase0", "transition", "phase1")
    ]

    # A phase-1 checkpoint into a phase-0 optimizer / lr scheduler.
    _, fresh_optimizers, fresh_schedulers = build_two_part_stack(world_size)
    for key, target in (("optimizer", fresh_optimizers), ("lr_scheduler", fresh_schedulers)):
        try:
            dcp.load({key: target}, checkpoint_id=os.path.join(ckpt_dir, "phase1"))
            out[f"phase1_into_phase0_{key}"] = "loaded"
        except PhaseMismatchError as exc:
            out[f"phase1_into_phase0_{key}"] = str(exc)

    # A phase-0 checkpoint into the phase-1 optimizer: DCP fails first on the missing state of
    # the phase-1 params; verify_checkpoint gives the clear error.
    try:
        dcp.load({"optimizer": optimizers}, checkpoint_id=os.path.join(ckpt_dir, "phase0"))
        out["phase0_into_phase1_dcp"] = "loaded"
    except BaseException as exc:  # CheckpointException derives from BaseException
        out["phase0_into_phase1_dcp"] = type(exc).__name__
    try:
        optimizers.verify_checkpoint(os.path.join(ckpt_dir, "phase0"))
        out["phase0_into_phase1_verify"] = "passed"
    except PhaseMismatchError as exc:
        out["phase0_into_phase1_verify"] = str(exc)
    optimizers.verify_checkpoint(os.path.join(ckpt_dir, "phase1"))
    out["checkpoint_exception_is_base"] = not issubclass(CheckpointException, Exception)
    return out


def load_resharded(rank: int, world_size: int, ckpt_dir: str) -> dict[str, Any]:
    """Resume as the trainer does (read the phase, rebuild to it, load) on ``world_size`` ranks."""
    out: dict[str, Any] = {}
    parts, optimizers, lr_schedulers = build_two_part_stack(world_size)
    assert read_checkpoint_phase(os.path.join(ckpt_dir, "phase1")) == 1
    enter_phase1(parts, optimizers, lr_schedulers)
    dcp.load(
        states_of(parts, optimizers, lr_schedulers), checkpoint_id=os.path.join(ckpt_dir, "phase1")
    )
    out["loaded"] = snapshot(parts, optimizers, lr_schedulers)

    # The checkpoint taken right at the transition, then the first step of phase 1.
    parts, optimizers, lr_schedulers = build_two_part_stack(world_size)
    enter_phase1(parts, optimizers, lr_schedulers)
    dcp.load(
        states_of(parts, optimizers, lr_schedulers),
        checkpoint_id=os.path.join(ckpt_dir, "transition"),
    )
    train_step(parts, optimizers, lr_schedulers, 2, rank, world_size)
    out["params_after_step2"] = full_params(parts)
    return out


# --- worker: SGD -> AdamW reinit; bf16 thaw of a block frozen at FSDP's lazy init -------------

SGD_KWARGS = {"lr": 0.05, "momentum": 0.9, "foreach": True}
REINIT = (
    "torch.optim.AdamW",
    {"lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.1, "foreach": True},
)


def reinit_and_bf16(rank: int, world_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}

    # SGD with momentum in phase 0, rebuilt as AdamW when block 1 thaws; the running schedule
    # carries over (no new lr scheduler).
    parts = shard([build_model()], world_size)
    freeze_to(parts, PHASES[0])
    optimizers = PhasedOptimizersContainer(parts, torch.optim.SGD, SGD_KWARGS)
    lr_schedulers = build_phased_lr_schedulers(optimizers, LR_CONFIG, TRAINING_STEPS)
    reference = Reference(PHASES[0], torch.optim.SGD, SGD_KWARGS, SGD_KWARGS["lr"])
    diffs: list[dict[str, float]] = []
    for step in range(5):
        if step == 2:
            optimizers.add_phase(1, thaw(parts, PHASES[1]), lr=PHASE1_LR, optimizer=REINIT)
            lr_schedulers.add_phase(1)
            reference.kwargs = REINIT[1]
            reference.thaw(PHASES[1], PHASE1_LR, optimizer_cls=torch.optim.AdamW)
        train_step(parts, optimizers, lr_schedulers, step, rank, world_size)
        reference.step(step, world_size)
        _compare_step(diffs, parts, reference)
    out["reinit_diffs"] = diffs
    out["reinit_classes"] = [type(o).__name__ for o in optimizers]

    # bf16 params, fp32 reduce. Block 0 and the embedding are frozen at FSDP's lazy init (the
    # first forward); a validation forward leaves the root unsharded before they thaw.
    phase0 = PHASES[0] + PHASES[1]
    mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    parts = [build_model()]
    freeze_to(parts, phase0)
    parts = shard(parts, world_size, mp_policy)
    optimizers = build_phased_optimizers(parts, ADAMW, parallel_dims=None)
    lr_schedulers = build_phased_lr_schedulers(optimizers, LR_CONFIG, TRAINING_STEPS)
    reference = Reference(phase0, torch.optim.AdamW, ADAMW_KWARGS, ADAMW.lr)
    diffs = []
    for step in range(4):
        if step == 2:
            with torch.no_grad():
                loss_of(parts, *batch(99))
            unsharded_embed = parts[0].embed.weight
            try:
                optimizers.add_phase(1, [[unsharded_embed]], lr=PHASE1_LR)
                out["unsharded_param_rejected"] = "accepted"
            except ValueError as exc:
                out["unsharded_param_rejected"] = str(exc)
            out["root_was_unsharded"] = not isinstance(unsharded_embed, DTensor)
            optimizers.add_phase(1, thaw(parts, PHASES[2]), lr=PHASE1_LR)
            lr_schedulers.add_phase(1)
            reference.thaw(PHASES[2], PHASE1_LR)
        train_step(parts, optimizers, lr_schedulers, step, rank, world_size)
        reference.step(step, world_size, bf16=True)
        _compare_step(diffs, parts, reference)
    out["bf16_diffs"] = diffs
    out["bf16_grad_dtypes"] = sorted(
        {str(p.grad.dtype) for p in parts[0].parameters() if p.grad is not None}
    )
    return out
