"""Phase-aware optimizers, reshardable through DCP.

:class:`PhasedOptimizersContainer` is a torchtitan ``OptimizersContainer`` (one optimizer per
model part) whose param groups follow the phases of a schedule: a phase adds a group for the
params it thaws, and the params it freezes leave with their state.
:func:`build_phased_optimizers` has torchtitan's ``build_optimizers`` signature, so it drops into
a ``TrainSpec`` as ``build_optimizers_fn``. :func:`phased_optimizer_builder` composes it with a
spec's own builder, so what that builder adds to the container (torchtitan's MoE load-balancing
hook, for one) is added to the phased container instead.

**Limitations** (private torchtitan API this module relies on; check on upgrades)
* While a spec's own builder runs, torchtitan's ``build_optimizers`` is the phased one
  (:func:`titan_phases.patches.torchtitan_build_optimizers`).
* ``OptimizersContainer._post_init`` is overridden and the base ``__init__`` not called (it
  cannot build a part without trainable params, nor tag groups with their phase);
  ``_post_init`` is where torchtitan runs ``Optimizer.__init__`` on the container for its hooks.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torchtitan.components import optimizer as tt_optimizer
from torchtitan.components.ft import FTManager
from torchtitan.components.optimizer import OptimizersContainer
from torchtitan.config import Optimizer as OptimizerConfig
from torchtitan.distributed import ParallelDims

from titan_phases import patches
from titan_phases.components.checkpointing.format import (
    check_optimizer_metadata,
    create_placeholder_state,
    decode_metadata,
    drop_placeholder_state,
    encode_state,
    hyperparameters,
    load_optimizer_state_dict,
    OPTIMIZER_KEY,
    optimizer_metadata,
    optimizer_state_dict,
    OptimizerLayout,
    param_fqns,
    PHASE_KEY,
    verify_optimizer_checkpoint,
)
from titan_phases.components.master_weights import MasterWeights
from titan_phases.runtime.ranks import is_rank0
from titan_phases.schedule.classes import (
    class_path_of,
    configured_lr,
    import_class_path,
    optimizer_from_config,
    OPTIMIZER_MODULE,
)

__all__ = ["PHASE_KEY", "PhasedOptimizersContainer", "build_phased_optimizers",
           "phased_optimizer_builder"]

logger = logging.getLogger(__name__)


# --- builder --------------------------------------------------------------------------------


def build_phased_optimizers(
    model_parts: list[nn.Module],
    optimizer_config: OptimizerConfig,
    parallel_dims: ParallelDims,
    ft_manager: FTManager | None = None,
) -> PhasedOptimizersContainer:
    """Build the phase-0 :class:`PhasedOptimizersContainer` (torchtitan's builder signature).

    Only params with ``requires_grad=True`` at this point are optimized: the trainer freezes the
    model to phase 0 before building. ``parallel_dims`` is accepted for ``TrainSpec``
    compatibility; nothing in it changes how phases are optimized.

    **Limitations**
    ``optimizer.early_step_in_backward`` (one optimizer per parameter) and TorchFT have no param
    groups to add phases to and raise NotImplementedError.
    """
    del parallel_dims
    if optimizer_config.early_step_in_backward:
        raise NotImplementedError(
            "optimizer.early_step_in_backward is not supported with phases: it keeps one "
            "optimizer per parameter, with no param groups to add thawed params to"
        )
    if ft_manager is not None and ft_manager.enabled:
        raise NotImplementedError("TorchFT is not supported with phases")
    optimizer_cls, optimizer_kwargs = optimizer_from_config(optimizer_config)
    return PhasedOptimizersContainer(model_parts, optimizer_cls, optimizer_kwargs)


def phased_optimizer_builder(spec_builder: Callable[..., Any] | None) -> Callable[..., Any]:
    """A ``build_optimizers_fn`` that builds the phased container through a spec's own builder.

    torchtitan's ``build_optimizers`` (or no builder) gives :func:`build_phased_optimizers`
    itself. Any other builder runs with torchtitan's ``build_optimizers`` swapped for
    :func:`build_phased_optimizers`, so whatever it adds lands on the phased container: for
    deepseek_v3, llama4 and gpt_oss, the step pre-hook that updates the MoE experts' bias for
    load balancing. Container hooks survive transitions, which replace only the inner
    optimizers.

    The composed builder raises TypeError if the spec's builder does not build its container
    through torchtitan's ``build_optimizers`` (so it cannot be phased this way).
    """
    if spec_builder is None or spec_builder in (tt_optimizer.build_optimizers,
                                                build_phased_optimizers):
        return build_phased_optimizers

    @functools.wraps(spec_builder)
    def build(
        model_parts: list[nn.Module],
        optimizer_config: OptimizerConfig,
        parallel_dims: ParallelDims,
        ft_manager: FTManager | None = None,
    ) -> PhasedOptimizersContainer:
        with patches.torchtitan_build_optimizers(build_phased_optimizers):
            optimizers = spec_builder(model_parts, optimizer_config, parallel_dims, ft_manager)
        if not isinstance(optimizers, PhasedOptimizersContainer):
            raise TypeError(
                f"{spec_builder.__qualname__} returned a {type(optimizers).__name__}, not a "
                "container built by torchtitan's build_optimizers, so phases cannot be added "
                "to it; build the container with torchtitan.components.optimizer."
                "build_optimizers inside the builder, or give the phased spec "
                "build_phased_optimizers"
            )
        return optimizers

    return build


# --- container ------------------------------------------------------------------------------


class PhasedOptimizersContainer(OptimizersContainer):
    """torchtitan ``OptimizersContainer`` whose param groups follow the phases.

    Every inner optimizer (one per model part) has one param group per phase whose params still
    train, in phase order, tagged ``group["phase"]``; all parts share that layout (a group may
    be empty on a part) and so one lr schedule. State exists only for trainable params: a param
    that stops training leaves with its state and its gradient.

    Transition (after the trainer (un)froze phase ``k``'s params, see :meth:`add_phase`)::

        optimizers.add_phase(k, params_per_part, lr=phase_lr,
                             optimizer=None | (class_path, init_args),
                             leaving_per_part=..., groups=plan.groups)
        lr_schedulers.add_phase(k, ...)

    Resume: freeze to phase 0, build, repeat both ``add_phase`` calls for phases 1..saved, load
    (:mod:`titan_phases.components.checkpointing.resume`). The state is DCP's flattened optimizer
    state plus metadata and placeholder flags (:mod:`titan_phases.components.checkpointing.format`).
    Step hooks registered on the container survive :meth:`add_phase`. With
    :meth:`use_fp32_masters` the inner optimizers step fp32 masters of bf16 params.

    **Limitations**
    Groups of the same phase share hyperparameters across model parts (torchtitan assumes one
    configuration for all parts). Optimizers whose ``step`` needs a closure (LBFGS) or sparse
    gradients (SparseAdam) and tensor-valued hyperparameters are not supported. Keeping state
    across a same-class reinit assumes the new init args keep the state layout (e.g. the same
    ``amsgrad``). TorchFT and optimizer-in-backward are not supported.

    Args:
        model_parts (list[nn.Module]): Model parts to optimize (after parallelization).
        optimizer_cls (type[Optimizer]): Phase-0 optimizer class.
        optimizer_kwargs (dict[str, Any]): Its constructor kwargs (plain values).
    """

    optimizers: list[Optimizer]
    model_parts: list[nn.Module]

    def __init__(
        self,
        model_parts: list[nn.Module],
        optimizer_cls: type[Optimizer],
        optimizer_kwargs: dict[str, Any],
    ) -> None:
        encode_state(optimizer_kwargs)  # fail now, not at the first checkpoint
        self.model_parts = model_parts
        self.phase = 0
        self.optimizer_cls = optimizer_cls
        self.optimizer_kwargs = dict(optimizer_kwargs)
        self._fqns = [param_fqns(model) for model in model_parts]
        self.masters: MasterWeights | None = None
        # Params whose state is a placeholder (see class docstring); dropped before each step.
        self._placeholder_params: set[torch.Tensor] = set()
        self.optimizers = []
        all_params: list[nn.Parameter] = []
        for model in model_parts:
            params = [p for p in model.parameters() if p.requires_grad]
            self.optimizers.append(optimizer_cls([{"params": params, PHASE_KEY: 0}],
                                                 **optimizer_kwargs))
            all_params.extend(params)
        if not all_params:
            logger.warning("No trainable parameter in phase 0 on this rank: nothing to optimize")
        self._validate_length(len(self.model_parts))
        self._post_init(all_params, self.optimizer_kwargs)

    def _post_init(self, all_params: list[nn.Parameter], optimizer_kwargs: dict[str, Any]) -> None:
        # As in torchtitan, Optimizer.__init__ sets up the container's hooks. Passing a group
        # dict lets a rank whose parts are all frozen in phase 0 (pipeline stages) build too.
        Optimizer.__init__(self, [{"params": all_params}], optimizer_kwargs)

    def use_fp32_masters(self) -> None:
        """Step fp32 masters of the trainable params instead of the (bf16) params themselves
        (:mod:`titan_phases.components.master_weights`); call before the first step."""
        if self.masters is None:
            self.masters = MasterWeights(self._fqns)
            for opt in self.optimizers:
                for group in opt.param_groups:
                    group["params"] = self.masters.add(group["params"])

    def _stepped(self, params: Sequence[nn.Parameter]) -> list[nn.Parameter]:
        """What the inner optimizers step for ``params``: their masters, or themselves."""
        return list(params) if self.masters is None else self.masters.add(params)

    def _model_param(self, stepped: torch.Tensor) -> torch.Tensor:
        return stepped if self.masters is None else self.masters.param(stepped)

    def step(self, *args: Any, **kwargs: Any) -> None:
        # Not super().step(): torch wraps the *class's* step with the hook runner, so calling a
        # wrapped base-class step from here would run the container's hooks twice.
        drop_placeholder_state(self.optimizers, self._placeholder_params)
        if self.masters is not None:
            self.masters.grads_to_masters()
        for optimizer in self.optimizers:
            optimizer.step(*args, **kwargs)
        if self.masters is not None:
            self.masters.write_back()

    def zero_grad(self, *args: Any, **kwargs: Any) -> None:
        super().zero_grad(*args, **kwargs)
        if self.masters is not None:
            self.masters.zero_param_grads()

    # --- transitions ----------------------------------------------------------------------

    def add_phase(
        self,
        phase: int,
        params_per_part: Sequence[Sequence[nn.Parameter]],
        lr: float | None = None,
        optimizer: tuple[str, dict[str, Any]] | None = None,
        *,
        leaving_per_part: Sequence[Sequence[nn.Parameter]] | None = None,
        groups: Sequence[int] | None = None,
    ) -> None:
        """Enter phase ``phase`` (the current one + 1), after (un)freezing and before its first
        step (the whole sequence is :func:`titan_phases.components.transition.enter_phase`).

        ``leaving_per_part`` (one list per model part) leave with their state and ``.grad``; a
        group whose phase is not in ``groups`` (the schedule's
        :attr:`~titan_phases.schedule.PhasePlan.groups`, needed when params leave) leaves, and
        ``params_per_part`` form a new group if ``phase`` is in it (always without ``groups``).
        With FSDP2, collect params while every FSDP module is resharded
        (:func:`titan_phases.components.thaw.reshard_fsdp_modules`): a root left unsharded by a
        forward without backward yields unsharded tensors, which are rejected.

        Without ``optimizer`` the new group takes ``lr`` (``None``: the optimizer's lr) as
        ``lr`` and ``initial_lr``, and the previous group's other hyperparameters. With
        ``optimizer=(class_path, init_args)`` every inner optimizer is rebuilt as that class
        (until the next reinit): groups keep their params, ``lr`` and ``initial_lr``, and state
        is kept only for the same class. The LR schedulers' ``add_phase`` comes next.
        """
        if phase != self.phase + 1:
            raise ValueError(
                f"cannot add phase {phase}: the optimizer is in phase {self.phase}, phases are "
                f"added one at a time (next: {self.phase + 1})"
            )
        leaving_per_part = leaving_per_part or [[] for _ in self.model_parts]
        if len(params_per_part) != len(self.model_parts) or len(leaving_per_part) != len(
            self.model_parts
        ):
            raise ValueError(
                f"phase {phase}: got parameter lists for {len(params_per_part)} model parts "
                f"({len(leaving_per_part)} leaving), expected {len(self.model_parts)} (one list "
                "per part, empty where none)"
            )
        if groups is None and any(leaving_per_part):
            raise ValueError(f"phase {phase}: params leave, so pass the phase's groups")
        self._remove(phase, leaving_per_part, groups)
        self._validate_new_params(phase, params_per_part)
        adds_group = groups is None or phase in groups

        if optimizer is None:
            phase_lr = (
                configured_lr(self.optimizer_cls, self.optimizer_kwargs) if lr is None
                else float(lr)
            )
            for opt, params in zip(self.optimizers, params_per_part):
                if adds_group:
                    last = opt.param_groups[-1] if opt.param_groups else opt.defaults
                    group = hyperparameters(last)
                    group.update(params=self._stepped(params), lr=phase_lr, initial_lr=phase_lr)
                    group[PHASE_KEY] = phase
                    opt.add_param_group(group)
        else:
            class_path, init_args = optimizer
            encode_state(init_args)
            new_cls = import_class_path(class_path, Optimizer, OPTIMIZER_MODULE, "an optimizer")
            phase_lr = configured_lr(new_cls, init_args) if lr is None else float(lr)
            self._rebuild(
                new_cls, dict(init_args), phase, params_per_part if adds_group else None, phase_lr
            )

        self.phase = phase
        if is_rank0():
            kept = "kept" if optimizer is None else f"rebuilt as {self.optimizer_cls.__name__}"
            logger.info("Optimizer phase %d: %d new params at lr %g, %d leave (state %s)", phase,
                        sum(map(len, params_per_part)), phase_lr, sum(map(len, leaving_per_part)),
                        kept)

    def _remove(
        self,
        phase: int,
        leaving_per_part: Sequence[Sequence[nn.Parameter]],
        groups: Sequence[int] | None,
    ) -> None:
        problems = []
        for opt, leaving, fqns in zip(self.optimizers, leaving_per_part, self._fqns):
            optimized = {self._model_param(p) for g in opt.param_groups for p in g["params"]}
            problems += [
                f"{fqns.get(p, 'a parameter of another part')} is not optimized"
                for p in leaving if p not in optimized
            ]
            if problems:
                continue
            gone = set(leaving if self.masters is None else self.masters.remove(leaving))
            for group in opt.param_groups:
                group["params"] = [p for p in group["params"] if p not in gone]
            for stepped in gone:
                opt.state.pop(stepped, None)
                self._placeholder_params.discard(stepped)
            for param in leaving:
                # A gradient left on a frozen param would still count in the gradient norm.
                param.grad = None
            if groups is not None:
                opt.param_groups = [g for g in opt.param_groups if g[PHASE_KEY] in groups]
        if problems:
            raise ValueError(f"cannot enter phase {phase}:\n  " + "\n  ".join(problems))

    def _rebuild(
        self,
        optimizer_cls: type[Optimizer],
        optimizer_kwargs: dict[str, Any],
        phase: int,
        params_per_part: Sequence[Sequence[nn.Parameter]] | None,
        phase_lr: float,
    ) -> None:
        keep_state = optimizer_cls is self.optimizer_cls
        rebuilt = []
        for index, old in enumerate(self.optimizers):
            groups = [
                {
                    "params": g["params"],
                    "lr": g["lr"],
                    "initial_lr": g.get("initial_lr", g["lr"]),
                    PHASE_KEY: g[PHASE_KEY],
                }
                for g in old.param_groups
            ]
            if params_per_part is not None:
                groups.append({"params": self._stepped(params_per_part[index]), "lr": phase_lr,
                               "initial_lr": phase_lr, PHASE_KEY: phase})
            new = optimizer_cls(groups, **optimizer_kwargs)
            if keep_state:
                # Moving state by parameter identity is bitwise equal to never rebuilding.
                for param, state in old.state.items():
                    new.state[param] = state
            rebuilt.append(new)
        # In place: whoever holds the list (iteration, lr schedulers) sees the new optimizers.
        self.optimizers[:] = rebuilt
        if not keep_state:
            self._placeholder_params.clear()
        self.optimizer_cls, self.optimizer_kwargs = optimizer_cls, optimizer_kwargs

    def _validate_new_params(
        self, phase: int, params_per_part: Sequence[Sequence[nn.Parameter]]
    ) -> None:
        problems = []
        for part, (params, fqns, opt) in enumerate(
            zip(params_per_part, self._fqns, self.optimizers)
        ):
            optimized = {
                self._model_param(p): g[PHASE_KEY] for g in opt.param_groups for p in g["params"]
            }
            seen: set[torch.Tensor] = set()
            for param in params:
                if param not in fqns:
                    problems.append(
                        f"model part {part}: a {type(param).__name__} of shape "
                        f"{tuple(param.shape)} is not a registered parameter of this part (with "
                        "FSDP2, collect params only after reshard_fsdp_modules(model_parts))")
                elif not param.requires_grad:
                    problems.append(f"{fqns[param]} is frozen (requires_grad=False): thaw it first")
                elif param in optimized:
                    problems.append(f"{fqns[param]} is already optimized (phase "
                                    f"{optimized[param]})")
                elif param in seen:
                    problems.append(f"{fqns[param]} is listed twice")
                seen.add(param)
        if problems:
            raise ValueError(f"cannot add phase {phase}:\n  " + "\n  ".join(problems))

    # --- checkpointing --------------------------------------------------------------------

    def _layout(self) -> OptimizerLayout:
        if self.masters is None:
            return OptimizerLayout(self.model_parts, self.optimizers, self._fqns)
        return OptimizerLayout(self.masters.modules(), self.optimizers, self.masters.fqns())

    def _create_placeholder_state(self) -> None:
        self._placeholder_params |= create_placeholder_state(
            self.optimizers, self.optimizer_kwargs
        )

    def state_dict(self) -> dict[str, Any]:
        self._create_placeholder_state()
        metadata = optimizer_metadata(
            self.phase, class_path_of(self.optimizer_cls), self.optimizer_kwargs,
            self.optimizers[0].param_groups,
        )
        return optimizer_state_dict(self._layout(), metadata, self._placeholder_params)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = decode_metadata(state_dict, "optimizer", type(self).__name__, self.phase)
        check_optimizer_metadata(
            saved, self.phase, class_path_of(self.optimizer_cls), self.optimizer_kwargs
        )
        self._create_placeholder_state()
        self._placeholder_params = load_optimizer_state_dict(
            self._layout(), state_dict, saved, self.phase
        )

    def verify_checkpoint(
        self, checkpoint_id: str | os.PathLike, key: str = OPTIMIZER_KEY
    ) -> None:
        """Raise :class:`PhaseMismatchError` unless checkpoint ``checkpoint_id`` fits the optimizer
        (:func:`~titan_phases.components.checkpointing.format.verify_optimizer_checkpoint`)."""
        verify_optimizer_checkpoint(
            checkpoint_id, self._layout(), self.phase, class_path_of(self.optimizer_cls), key
        )
