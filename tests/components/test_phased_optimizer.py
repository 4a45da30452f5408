"""PhasedOptimizersContainer logic in one process (the multi-rank behaviour is tested apart)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torchtitan.components.optimizer import build_optimizers, OptimizersContainer
from torchtitan.config import LRScheduler as LRSchedulerConfig
from torchtitan.config import Optimizer as OptimizerConfig

from tests.components.phased_workers import (
    batch,
    build_model,
    freeze_to,
    loss_of,
    params_with,
    PHASES,
    split_in_two,
)
from titan_phases.components.checkpointing.format import (
    decode_state,
    encode_state,
    PhaseMismatchError,
    read_checkpoint_phase,
)
from titan_phases.components.lr_scheduler import (
    build_phased_lr_schedulers,
    PhasedLRSchedulersContainer,
)
from titan_phases.components.optimizer import build_phased_optimizers, PhasedOptimizersContainer

ADAMW_KWARGS = {"lr": 1e-2, "betas": (0.8, 0.9), "weight_decay": 0.05, "foreach": True}


def _stack(
    parts: list[nn.Module] | None = None,
    optimizer_cls: type = torch.optim.AdamW,
    kwargs: dict | None = None,
    phase0: tuple[str, ...] = PHASES[0],
) -> tuple[list[nn.Module], PhasedOptimizersContainer]:
    parts = parts if parts is not None else [build_model()]
    freeze_to(parts, phase0)
    return parts, PhasedOptimizersContainer(parts, optimizer_cls, kwargs or ADAMW_KWARGS)


def _thaw(parts: list[nn.Module], prefixes: tuple[str, ...]) -> list[list[nn.Parameter]]:
    params_per_part = [params_with(part, prefixes) for part in parts]
    for params in params_per_part:
        for param in params:
            param.requires_grad_(True)
    return params_per_part


def _step(parts: list[nn.Module], optimizers: PhasedOptimizersContainer, step: int) -> None:
    optimizers.zero_grad()
    loss_of(parts, *batch(step)).backward()
    optimizers.step()


def test_builder_passes_torchtitans_kwargs_and_only_trainable_params():
    model = build_model()
    freeze_to([model], PHASES[0])
    config = OptimizerConfig()  # AdamW, fused, as torchtitan's defaults
    ours = build_phased_optimizers([model], config, parallel_dims=None)
    theirs = build_optimizers([model], config, parallel_dims=None)
    assert type(ours.optimizers[0]) is type(theirs.optimizers[0])
    assert ours.optimizers[0].defaults == theirs.optimizers[0].defaults
    (group,) = ours.optimizers[0].param_groups
    assert group["phase"] == 0
    assert [id(p) for p in group["params"]] == [id(p) for p in params_with(model, PHASES[0])]


def test_builder_refuses_optimizers_without_param_groups():
    with pytest.raises(NotImplementedError, match="early_step_in_backward"):
        build_phased_optimizers([build_model()], OptimizerConfig(early_step_in_backward=True), None)


def test_add_phase_adds_a_group_carrying_hyperparameters_and_keeps_state():
    parts, optimizers = _stack()
    _step(parts, optimizers, 0)
    inner = optimizers.optimizers[0]
    state_before = {p: inner.state[p] for p in inner.param_groups[0]["params"]}
    inner.param_groups[0]["weight_decay"] = 0.01  # a per-group change carries to the new group

    optimizers.add_phase(1, _thaw(parts, PHASES[1]), lr=3e-3)
    first, second = inner.param_groups
    assert (first["phase"], second["phase"]) == (0, 1)
    assert second["lr"] == second["initial_lr"] == 3e-3
    assert second["weight_decay"] == 0.01 and second["betas"] == (0.8, 0.9)
    assert all(inner.state[p] is s for p, s in state_before.items())
    assert not any(p in inner.state for p in second["params"])

    _step(parts, optimizers, 1)
    assert all(inner.state[p] for p in second["params"])
    optimizers.add_phase(2, _thaw(parts, PHASES[2]), lr=None)  # None: the optimizer's lr
    assert inner.param_groups[2]["lr"] == ADAMW_KWARGS["lr"] and optimizers.phase == 2


def test_add_phase_rejects_wrong_phases_and_parameters_with_all_problems_listed():
    parts, optimizers = _stack()
    new = _thaw(parts, PHASES[1])
    with pytest.raises(ValueError, match="phases are added one at a time"):
        optimizers.add_phase(2, new, lr=1e-3)
    with pytest.raises(ValueError, match="expected 1"):
        optimizers.add_phase(1, new + [[]], lr=1e-3)
    named = dict(parts[0].named_parameters())
    frozen, already = named["blocks.0.lin.weight"], named["head.weight"]
    foreign = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError) as error:
        optimizers.add_phase(1, [[frozen, already, foreign, new[0][0], new[0][0]]], lr=1e-3)
    message = str(error.value)
    assert "blocks.0.lin.weight is frozen" in message
    assert "head.weight is already optimized (phase 0)" in message
    assert "not a registered parameter" in message
    assert "blocks.1.norm.weight is listed twice" in message
    assert optimizers.phase == 0 and len(optimizers.optimizers[0].param_groups) == 1


def test_reinit_keeps_state_only_for_the_same_class_and_carries_the_lr_state():
    parts, optimizers = _stack(optimizer_cls=torch.optim.SGD, kwargs={"lr": 0.1, "momentum": 0.9})
    _step(parts, optimizers, 0)
    optimizer_list = optimizers.optimizers
    inner = optimizers.optimizers[0]
    inner.param_groups[0]["lr"] = 0.07  # as a schedule would have set it
    inner.param_groups[0]["initial_lr"] = 0.1
    momentum = {p: inner.state[p]["momentum_buffer"] for p in inner.param_groups[0]["params"]}

    optimizers.add_phase(
        1, _thaw(parts, PHASES[1]), lr=0.02, optimizer=("SGD", {"lr": 0.5, "momentum": 0.5})
    )
    inner = optimizers.optimizers[0]
    first, second = inner.param_groups
    assert (first["lr"], first["initial_lr"], first["momentum"]) == (0.07, 0.1, 0.5)
    assert (second["lr"], second["initial_lr"], second["phase"]) == (0.02, 0.02, 1)
    assert all(inner.state[p]["momentum_buffer"] is b for p, b in momentum.items())

    optimizers.add_phase(
        2, _thaw(parts, PHASES[2]), lr=None, optimizer=("torch.optim.Adam", {"lr": 1e-3})
    )
    inner = optimizers.optimizers[0]
    assert type(inner) is torch.optim.Adam and not inner.state
    assert [g["lr"] for g in inner.param_groups] == [0.07, 0.02, 1e-3]
    assert optimizers.optimizers is optimizer_list  # swapped in place: holders see the new ones


def test_step_hooks_survive_a_rebuild_and_run_once_per_step():
    # A torchtitan container in the same process wraps the base class's step with the hook
    # runner; the phased container must still run its hooks exactly once.
    OptimizersContainer([nn.Linear(2, 2)], torch.optim.SGD, {"lr": 0.1})
    parts, optimizers = _stack()
    calls: list[str] = []
    optimizers.register_step_pre_hook(lambda *args, **kwargs: calls.append("pre"))
    optimizers.register_step_post_hook(lambda *args, **kwargs: calls.append("post"))
    _step(parts, optimizers, 0)
    optimizers.add_phase(1, _thaw(parts, PHASES[1]), lr=1e-3, optimizer=("SGD", {"lr": 0.1}))
    _step(parts, optimizers, 1)
    assert calls == ["pre", "post", "pre", "post"]


def _train_through_transition(save_at_transition: bool) -> tuple[dict, list[torch.Tensor]]:
    parts, optimizers = _stack()
    _step(parts, optimizers, 0)
    optimizers.add_phase(1, _thaw(parts, PHASES[1]), lr=3e-3)
    saved = optimizers.state_dict() if save_at_transition else {}
    for step in (1, 2):
        _step(parts, optimizers, step)
    return saved, [p.detach().clone() for p in parts[0].parameters()]


def test_placeholder_state_at_a_transition_leaves_the_next_steps_unchanged():
    saved, params = _train_through_transition(save_at_transition=True)
    _, params_unsaved = _train_through_transition(save_at_transition=False)
    assert all(torch.equal(a, b) for a, b in zip(params, params_unsaved))
    # The state dict had state for the not-yet-stepped params, flagged as placeholder.
    assert saved["state.blocks.1.lin.weight.exp_avg"].abs().sum() == 0
    assert saved["titan_phases.placeholder.blocks.1.lin.weight"] is True
    assert saved["titan_phases.placeholder.head.weight"] is False


def _two_part_stack() -> tuple[
    list[nn.Module], PhasedOptimizersContainer, PhasedLRSchedulersContainer
]:
    # The first part has no phase-0 params, the second none of phase 1 (an empty group).
    parts, optimizers = _stack(parts=split_in_two(build_model()))
    return (
        parts,
        optimizers,
        build_phased_lr_schedulers(optimizers, LRSchedulerConfig(warmup_steps=2), 8),
    )


def _train(parts, optimizers, lr_schedulers, steps) -> None:
    for step in steps:
        _step(parts, optimizers, step)
        lr_schedulers.step()


def _groups(optimizers: PhasedOptimizersContainer) -> list[list[dict]]:
    return [
        [
            {**{k: v for k, v in g.items() if k != "params"}, "n_params": len(g["params"])}
            for g in opt.param_groups
        ]
        for opt in optimizers
    ]


def _weights(parts: list[nn.Module]) -> list[torch.Tensor]:
    return [p.detach().clone() for part in parts for p in part.parameters()]


def _run_through_transition(
    ckpt: Path | None,
) -> tuple[list[torch.Tensor], list[list[dict]], list[torch.Tensor]]:
    """Two steps, thaw, optionally save, two steps; weights and groups at the transition and
    the final weights."""
    parts, optimizers, lr_schedulers = _two_part_stack()
    _train(parts, optimizers, lr_schedulers, (0, 1))
    optimizers.add_phase(1, _thaw(parts, PHASES[1]), lr=3e-3)
    lr_schedulers.add_phase(1)
    weights_at_transition = _weights(parts)
    if ckpt is not None:
        dcp.save({"optimizer": optimizers, "lr_scheduler": lr_schedulers}, checkpoint_id=ckpt)
    groups_at_transition = _groups(optimizers)
    _train(parts, optimizers, lr_schedulers, (2, 3))
    return weights_at_transition, groups_at_transition, _weights(parts)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_checkpoint_at_a_transition_resumes_exactly_with_empty_groups(tmp_path):
    weights_at_transition, groups_at_transition, final = _run_through_transition(tmp_path)
    # Saving changed nothing: the new params' first step is still the optimizer's lazy one.
    assert all(torch.equal(a, b) for a, b in zip(final, _run_through_transition(None)[2]))
    assert [g["n_params"] for g in groups_at_transition[1]] == [6, 0]

    parts, optimizers, lr_schedulers = _two_part_stack()
    with torch.no_grad():
        for param, weight in zip(
            (p for part in parts for p in part.parameters()), weights_at_transition
        ):
            param.copy_(weight)
    optimizers.add_phase(1, _thaw(parts, PHASES[1]), lr=3e-3)
    lr_schedulers.add_phase(1)
    assert _groups(optimizers) != groups_at_transition  # lrs of step 0: the rebuild alone differs
    dcp.load({"optimizer": optimizers, "lr_scheduler": lr_schedulers}, checkpoint_id=tmp_path)
    assert _groups(optimizers) == groups_at_transition
    _train(parts, optimizers, lr_schedulers, (2, 3))
    assert all(torch.equal(a, b) for a, b in zip(_weights(parts), final))


def test_loading_state_whose_params_sit_in_other_phases_fails():
    saving_parts, saving = _stack(phase0=("head.",))
    saving.add_phase(1, _thaw(saving_parts, ("blocks.2.",)), lr=1e-3)
    _step(saving_parts, saving, 0)
    loading_parts, loading = _stack(phase0=("blocks.2.",))
    loading.add_phase(1, _thaw(loading_parts, ("head.",)), lr=1e-3)
    with pytest.raises(PhaseMismatchError, match="head.weight: saved in phase 0, live phase 1"):
        loading.load_state_dict(saving.state_dict())

    _, adam = _stack(optimizer_cls=torch.optim.Adam, kwargs={"lr": 1e-3})
    _, adamw = _stack()
    with pytest.raises(
        PhaseMismatchError,
        match="phase 0 with torch.optim.adamw.AdamW .* phase 0 is torch.optim.adam.Adam",
    ):
        adam.load_state_dict(adamw.state_dict())


def test_stateless_optimizer_saves_and_loads_without_placeholders():
    parts, optimizers = _stack(optimizer_cls=torch.optim.SGD, kwargs={"lr": 0.1})
    optimizers.add_phase(1, _thaw(parts, PHASES[1]), lr=1e-3)
    saved = optimizers.state_dict()
    assert not any(k.startswith("state.") for k in saved)
    assert not any(v for k, v in saved.items() if k.startswith("titan_phases.placeholder."))
    optimizers.optimizers[0].param_groups[1]["lr"] = 0.5
    optimizers.load_state_dict(saved)
    assert optimizers.optimizers[0].param_groups[1]["lr"] == 1e-3


def test_metadata_codec_round_trips_plain_values_exactly():
    value = {
        "betas": (0.9, 0.95),
        "milestones": Counter({3: 1, 5: 2}),
        "by_int": {1: "a"},
        "best": math.inf,
        "nested": [(1, 2.5), None, True, {"x": 1 / 3}],
    }
    decoded = decode_state(encode_state(value))
    assert decoded == value
    assert isinstance(decoded["betas"], tuple) and isinstance(decoded["milestones"], Counter)
    with pytest.raises(TypeError, match="dotted paths"):
        encode_state({"lr_lambda": lambda step: 1.0})


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_verify_checkpoint_names_params_optimized_on_one_side_only(tmp_path):
    parts, optimizers = _stack()
    optimizers.add_phase(1, _thaw(parts, PHASES[1]), lr=1e-3)
    dcp.save({"optimizer": optimizers}, checkpoint_id=tmp_path)
    optimizers.verify_checkpoint(tmp_path)

    fewer_parts, fewer = _stack()
    fewer.add_phase(1, _thaw(fewer_parts, ("blocks.1.lin.",)), lr=1e-3)
    with pytest.raises(PhaseMismatchError, match=r"only in the checkpoint: \['blocks.1.norm.bias'"):
        fewer.verify_checkpoint(tmp_path)
    more_parts, more = _stack()
    more.add_phase(1, _thaw(more_parts, PHASES[1] + ("embed.",)), lr=1e-3)
    with pytest.raises(PhaseMismatchError, match=r"not in the checkpoint: \['embed.weight'\]"):
        more.verify_checkpoint(tmp_path)
    _, phase0 = _stack()
    with pytest.raises(
        PhaseMismatchError, match="saved in phase 1 .* live optimizer is in phase 0"
    ):
        phase0.verify_checkpoint(tmp_path)
    assert read_checkpoint_phase(tmp_path) == 1
    dcp.save({"model": parts[0].state_dict()}, checkpoint_id=tmp_path / "model_only")
    with pytest.raises(ValueError, match="no titan_phases optimizer metadata"):
        read_checkpoint_phase(tmp_path / "model_only")


def test_a_switch_of_optimizer_class_rebuilds_every_pipeline_parts_optimizer_over_its_own_params(
    tmp_path,
):
    # The first part holds nothing trainable in phase 0; phase 1 thaws block 1 in it and
    # switches to SGD: each part's optimizer is rebuilt, over that part's params only.
    parts, optimizers, _ = _two_part_stack()
    _step(parts, optimizers, 0)
    optimizers.add_phase(1, _thaw(parts, PHASES[1]), lr=0.05,
                         optimizer=("SGD", {"lr": 0.1, "momentum": 0.9}))
    _step(parts, optimizers, 1)
    for part, optimizer in zip(parts, optimizers.optimizers):
        assert type(optimizer) is torch.optim.SGD
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        assert held == {id(p) for p in part.parameters() if p.requires_grad}
    assert [len(g["params"]) for g in optimizers.optimizers[0].param_groups] == [0, 4]
    dcp.save({"optimizer": optimizers}, checkpoint_id=tmp_path)

    fresh_parts, fresh, _ = _two_part_stack()
    fresh.add_phase(1, _thaw(fresh_parts, PHASES[1]), lr=0.05,
                    optimizer=("SGD", {"lr": 0.1, "momentum": 0.9}))
    dcp.load({"optimizer": fresh}, checkpoint_id=tmp_path)
    assert _groups(fresh) == _groups(optimizers)
    for saved, loaded in zip(optimizers.optimizers, fresh.optimizers):
        assert [s["momentum_buffer"].shape for s in saved.state.values()] == [
            s["momentum_buffer"].shape for s in loaded.state.values()
        ]


def _freeze(parts: list[nn.Module], prefixes: tuple[str, ...]) -> list[list[nn.Parameter]]:
    leaving = [params_with(part, prefixes) for part in parts]
    for params in leaving:
        for param in params:
            param.requires_grad_(False)
    return leaving


def _enter_block_1(parts, optimizers, lr_schedulers) -> None:
    """Phase 1 moves phase 0's training of block 2 to block 1 (the head goes on training)."""
    leaving = _freeze(parts, ("blocks.2.",))
    optimizers.add_phase(1, _thaw(parts, ("blocks.1.",)), lr=3e-3, leaving_per_part=leaving,
                         groups=(0, 1))
    lr_schedulers.add_phase(1)


def _cycle_to_block_1(parts, optimizers, lr_schedulers) -> None:
    _train(parts, optimizers, lr_schedulers, (0, 1))
    _enter_block_1(parts, optimizers, lr_schedulers)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_params_that_leave_lose_their_state_and_grads_and_stay_unchanged(tmp_path):
    parts, optimizers, lr_schedulers = _two_part_stack()
    block2 = [p for part in parts for p in params_with(part, ("blocks.2.",))]
    head = [p for part in parts for p in params_with(part, ("head.",))]
    _cycle_to_block_1(parts, optimizers, lr_schedulers)
    opt_states = [opt.state for opt in optimizers]
    assert all(p.grad is None and all(p not in s for s in opt_states) for p in block2)
    assert all(any(p in s for s in opt_states) for p in head)  # the head keeps its state
    # Phase 0's group keeps the head; the groups and the schedulers' lists stay aligned.
    assert [[g["phase"] for g in opt.param_groups] for opt in optimizers] == [[0, 1], [0, 1]]
    assert all(len(s.base_lrs) == len(s.lr_lambdas) == len(s._last_lr) == 2
               for s in lr_schedulers.schedulers)
    frozen = [p.detach().clone() for p in block2]
    _train(parts, optimizers, lr_schedulers, (2,))
    weights = _weights(parts)
    dcp.save({"optimizer": optimizers, "lr_scheduler": lr_schedulers}, checkpoint_id=tmp_path)
    _train(parts, optimizers, lr_schedulers, (3, 4))
    assert all(torch.equal(p, f) for p, f in zip(block2, frozen))
    final = _weights(parts)

    # The checkpoint holds only the active state, and a rebuilt stack continues bitwise.
    entries = set(dcp.FileSystemReader(tmp_path).read_metadata().state_dict_metadata)
    assert not any(name.startswith("optimizer.state.blocks.2.") for name in entries)
    assert any(name.startswith("optimizer.state.head.") for name in entries)
    parts, optimizers, lr_schedulers = _two_part_stack()
    with torch.no_grad():
        for param, weight in zip((p for part in parts for p in part.parameters()), weights):
            param.copy_(weight)
    _enter_block_1(parts, optimizers, lr_schedulers)
    dcp.load({"optimizer": optimizers, "lr_scheduler": lr_schedulers}, checkpoint_id=tmp_path)
    _train(parts, optimizers, lr_schedulers, (3, 4))
    assert all(torch.equal(a, b) for a, b in zip(_weights(parts), final))


def test_a_group_whose_params_all_left_leaves_the_optimizer_and_its_schedule():
    parts, optimizers, lr_schedulers = _two_part_stack()
    _cycle_to_block_1(parts, optimizers, lr_schedulers)
    _train(parts, optimizers, lr_schedulers, (2,))
    # Phase 2 freezes block 1 (phase 1's group) and the head (phase 0's): both groups leave.
    leaving = _freeze(parts, ("blocks.1.", "head.", "blocks.2."))
    with pytest.raises(ValueError, match="blocks.2.lin.weight is not optimized"):
        optimizers.add_phase(2, _thaw(parts, ("blocks.0.",)), leaving_per_part=leaving,
                             groups=(2,))
    parts, optimizers, lr_schedulers = _two_part_stack()
    _cycle_to_block_1(parts, optimizers, lr_schedulers)
    leaving = _freeze(parts, ("blocks.1.", "head."))
    optimizers.add_phase(2, _thaw(parts, ("blocks.0.",)), lr=1e-3, leaving_per_part=leaving,
                         groups=(2,))
    lr_schedulers.add_phase(2)
    assert [[g["phase"] for g in opt.param_groups] for opt in optimizers] == [[2], [2]]
    assert all(len(s.base_lrs) == len(s._last_lr) == 1 for s in lr_schedulers.schedulers)
    _train(parts, optimizers, lr_schedulers, (3,))
    assert all(optimizers.optimizers[0].state[p] for p in params_with(parts[0], ("blocks.0.",)))
