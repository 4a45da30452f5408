"""Phase-aware optimizers for gradual unfreezing, reshardable through DCP.

:class:`PhasedOptimizersContainer` is a torchtitan ``OptimizersContainer`` (one optimizer per
model part) whose param groups follow the phases of a thawing schedule: at phase ``k`` every
inner optimizer has ``k + 1`` groups and group ``i`` holds the params thawed in phase ``i``.
:func:`build_phased_optimizers` has torchtitan's ``build_optimizers`` signature, so it drops into
a ``TrainSpec`` as ``build_optimizers_fn``. :func:`phased_optimizer_builder` composes it with a
spec's own builder, so what that builder adds to the container (torchtitan's MoE load-balancing
hook, for one) is added to the phased container instead.

At a transition the trainer thaws the phase's params and calls
:meth:`PhasedOptimizersContainer.add_phase`; on resume it rebuilds the same structure with the
same calls (no training steps are replayed) and then loads the checkpoint. See the class
docstring for the exact sequences. What the container saves, and how it is read before loading,
is :mod:`titan_phases.components.checkpointing.format`.

**Limitations** (private torchtitan API this module relies on; check on upgrades)
* While a spec's own builder runs, torchtitan's ``build_optimizers`` is the phased one
  (:func:`titan_phases.patches.torchtitan_build_optimizers`).
* ``OptimizersContainer._post_init``: overridden, and the base ``__init__`` is not called. The
  base builds one optimizer per part from a bare parameter list, which fails for a part with no
  trainable parameter and cannot tag groups with their phase; ``_post_init`` is where torchtitan
  runs ``Optimizer.__init__`` on the container to set up its hooks, and this container does the
  same there.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer
from torchtitan.components import optimizer as tt_optimizer
from torchtitan.components.ft import FTManager
from torchtitan.components.optimizer import OptimizersContainer
from torchtitan.config import Optimizer as OptimizerConfig
from torchtitan.distributed import ParallelDims

from titan_phases import patches
from titan_phases.components.checkpointing.format import (
    check_optimizer_metadata,
    decode_metadata,
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
from titan_phases.runtime.ranks import is_rank0
from titan_phases.schedule.classes import (
    class_path_of,
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
    """torchtitan ``OptimizersContainer`` whose param groups follow the thawing phases.

    At phase ``k`` every inner optimizer (one per model part) has ``k + 1`` param groups; group
    ``i`` holds the params thawed in phase ``i`` and carries ``group["phase"] == i``. A group is
    kept even when its model part has no params of that phase, so all parts share one group
    layout and one lr schedule. Optimizer state exists only for optimized (trainable) params.

    Transition (after ``trainer`` thawed phase ``k``'s params, see :meth:`add_phase`)::

        optimizers.add_phase(k, params_per_part, lr=phase_lr,
                             optimizer=None | (class_path, init_args))
        lr_schedulers.add_phase(k, lr_scheduler=None | (class_path, init_args),
                                init_pg_lrs=..., use_current_optimizer_pg_lrs=...)

    Resume: read the saved phase
    (:func:`~.checkpointing.format.read_checkpoint_phase`), freeze to phase 0,
    build with the builders, then thaw and call both ``add_phase`` methods for phases 1..saved
    exactly as during training (:mod:`titan_phases.components.checkpointing.resume`), then load the
    checkpoint (``CheckpointManager.load``). Loading restores state, every group's
    hyperparameters and the scheduler position; nothing is replayed.

    ``state_dict`` / ``load_state_dict`` use DCP's flattened optimizer state (reshardable to any
    number of ranks, like torchtitan's) plus this container's metadata: the phase, optimizer
    class path and init args, and every group's hyperparameters (DCP alone would give a whole
    group its first param's values and cannot restore an empty group). Loading state saved in
    another phase or with another optimizer class raises :class:`PhaseMismatchError` naming
    both. When the live optimizer is *further* along than the checkpoint, DCP itself fails first
    (``CheckpointException``, a BaseException, "Missing key"), so call
    :meth:`verify_checkpoint` before loading to get the clear error.

    A transition leaves the new params without state until the next ``step``, which DCP cannot
    save or load. ``state_dict`` therefore gives such params *placeholder* state (what the
    optimizer's first step creates with zero gradients, built on scratch copies) and saves a
    per-parameter flag; placeholders are dropped again before the next ``step``, so the first
    step after a transition is exactly the optimizer's lazy first step, resumed or not.

    Step pre/post hooks registered on the container survive :meth:`add_phase` (they live on the
    container, not on the inner optimizers).

    **Limitations**
    Phases only add params (thawing); re-freezing optimized params is not supported. Groups of
    the same phase share hyperparameters across model parts (as torchtitan assumes one
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
        # Params whose state is a placeholder (see class docstring); dropped before each step.
        self._placeholder_params: set[torch.Tensor] = set()
        self.optimizers = []
        all_params: list[nn.Parameter] = []
        for model in model_parts:
            params = [p for p in model.parameters() if p.requires_grad]
            self.optimizers.append(
                optimizer_cls([{"params": params, PHASE_KEY: 0}], **optimizer_kwargs)
            )
            all_params.extend(params)
        if not all_params:
            logger.warning(
                "No trainable parameter in phase 0 on this rank: nothing to optimize yet"
            )
        self._validate_length(len(self.model_parts))
        self._post_init(all_params, self.optimizer_kwargs)

    def _post_init(self, all_params: list[nn.Parameter], optimizer_kwargs: dict[str, Any]) -> None:
        # As in torchtitan, Optimizer.__init__ sets up the container's hooks. Passing a group
        # dict lets a rank whose parts are all frozen in phase 0 (pipeline stages) build too.
        Optimizer.__init__(self, [{"params": all_params}], optimizer_kwargs)

    def step(self, *args: Any, **kwargs: Any) -> None:
        # Not super().step(): torch wraps the *class's* step with the hook runner, so calling a
        # wrapped base-class step from here would run the container's hooks twice.
        self._drop_placeholder_state()
        for optimizer in self.optimizers:
            optimizer.step(*args, **kwargs)

    # --- transitions ----------------------------------------------------------------------

    def add_phase(
        self,
        phase: int,
        params_per_part: Sequence[Sequence[nn.Parameter]],
        lr: float | None = None,
        optimizer: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        """Add phase ``phase``'s thawed params as a new param group in every inner optimizer.

        Call after thawing (``requires_grad_(True)``) and before the first step of the phase.
        With FSDP2, collect the params while every FSDP module is resharded
        (:func:`titan_phases.components.thaw.reshard_fsdp_modules`), otherwise a root
        left unsharded by a forward without backward yields unsharded tensors, which are
        rejected here. The whole sequence, FSDP2's mixed-precision refresh included, is
        :func:`titan_phases.components.transition.enter_phase`.

        Without ``optimizer`` the new group takes ``lr`` (as ``lr`` and ``initial_lr``) and the
        other hyperparameters of the previous group; all existing state is kept. With
        ``optimizer=(class_path, init_args)`` every inner optimizer is rebuilt as that class
        (``torch.optim`` name or dotted path) with ``init_args``: existing groups keep their
        params, current ``lr`` and ``initial_lr`` (the running lr schedule carries over), and
        state is kept only if the class is unchanged. Call the lr schedulers' ``add_phase``
        next; it sets the new group's lr for the current step of the schedule.

        Args:
            phase (int): The phase being entered; must be the current phase + 1.
            params_per_part (Sequence[Sequence[nn.Parameter]]): The phase's params, one list per
                model part (empty where a part has none).
            lr (float | None): The phase's lr; ``None`` uses the active optimizer's ``lr``.
            optimizer (tuple[str, dict[str, Any]] | None): Optional reinit as ``(class_path,
                init_args)``; it stays active for later phases until the next reinit.
        """
        if phase != self.phase + 1:
            raise ValueError(
                f"cannot add phase {phase}: the optimizer is in phase {self.phase}, phases are "
                f"added one at a time (next: {self.phase + 1})"
            )
        if len(params_per_part) != len(self.model_parts):
            raise ValueError(
                f"phase {phase}: got parameter lists for {len(params_per_part)} model parts, "
                f"expected {len(self.model_parts)} (one list per part, empty where none)"
            )
        self._validate_new_params(phase, params_per_part)

        if optimizer is None:
            phase_lr = (
                self._configured_lr(self.optimizer_cls, self.optimizer_kwargs)
                if lr is None
                else float(lr)
            )
            for opt, params in zip(self.optimizers, params_per_part):
                group = hyperparameters(opt.param_groups[-1])
                group.update(params=list(params), lr=phase_lr, initial_lr=phase_lr)
                group[PHASE_KEY] = phase
                opt.add_param_group(group)
        else:
            class_path, init_args = optimizer
            encode_state(init_args)
            new_cls = import_class_path(class_path, Optimizer, OPTIMIZER_MODULE, "an optimizer")
            phase_lr = self._configured_lr(new_cls, init_args) if lr is None else float(lr)
            self._rebuild(new_cls, dict(init_args), phase, params_per_part, phase_lr)

        self.phase = phase
        if is_rank0():
            logger.info(
                "Optimizer phase %d: %d new params at lr %g (%s)",
                phase,
                sum(len(p) for p in params_per_part),
                phase_lr,
                "kept state" if optimizer is None else f"rebuilt as {self.optimizer_cls.__name__}",
            )
        for fqns, params in zip(self._fqns, params_per_part):
            logger.debug("phase %d params: %s", phase, [fqns[p] for p in params])

    def _rebuild(
        self,
        optimizer_cls: type[Optimizer],
        optimizer_kwargs: dict[str, Any],
        phase: int,
        params_per_part: Sequence[Sequence[nn.Parameter]],
        phase_lr: float,
    ) -> None:
        keep_state = optimizer_cls is self.optimizer_cls
        rebuilt = []
        for old, params in zip(self.optimizers, params_per_part):
            groups = [
                {
                    "params": g["params"],
                    "lr": g["lr"],
                    "initial_lr": g.get("initial_lr", g["lr"]),
                    PHASE_KEY: g[PHASE_KEY],
                }
                for g in old.param_groups
            ]
            groups.append(
                {"params": list(params), "lr": phase_lr, "initial_lr": phase_lr, PHASE_KEY: phase}
            )
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
            optimized = {p: g[PHASE_KEY] for g in opt.param_groups for p in g["params"]}
            seen: set[torch.Tensor] = set()
            for param in params:
                if param not in fqns:
                    problems.append(
                        f"model part {part}: a {type(param).__name__} of shape "
                        f"{tuple(param.shape)} is not a registered parameter of this part (with "
                        "FSDP2, collect params only after reshard_fsdp_modules(model_parts))"
                    )
                elif not param.requires_grad:
                    problems.append(f"{fqns[param]} is frozen (requires_grad=False): thaw it first")
                elif param in optimized:
                    problems.append(
                        f"{fqns[param]} is already optimized (phase {optimized[param]})"
                    )
                elif param in seen:
                    problems.append(f"{fqns[param]} is listed twice")
                seen.add(param)
        if problems:
            raise ValueError(f"cannot add phase {phase}:\n  " + "\n  ".join(problems))

    @staticmethod
    def _configured_lr(optimizer_cls: type[Optimizer], optimizer_kwargs: dict[str, Any]) -> float:
        if "lr" in optimizer_kwargs:
            return float(optimizer_kwargs["lr"])
        return float(inspect.signature(optimizer_cls.__init__).parameters["lr"].default)

    # --- placeholder state ----------------------------------------------------------------

    def _initial_states(
        self, optimizer_cls: type[Optimizer], group: dict[str, Any], params: Sequence[torch.Tensor]
    ) -> list[dict[str, Any]]:
        """The state ``optimizer_cls`` creates for ``params`` on a first step with zero grads.

        Runs on scratch zero tensors shaped like ``params`` (DTensors stay DTensors), so the
        real params, their grads and the live optimizer are untouched.
        """
        scratch_params = []
        for param in params:
            scratch = torch.zeros_like(param.detach()).requires_grad_(True)
            scratch.grad = torch.zeros_like(scratch)
            scratch_params.append(scratch)
        scratch_group = {**hyperparameters(group), "params": scratch_params, "lr": 0.0}
        scratch_optimizer = optimizer_cls([scratch_group], **self.optimizer_kwargs)
        scratch_optimizer.step()
        return [scratch_optimizer.state.get(s, {}) for s in scratch_params]

    def _creates_state(self, optimizer_cls: type[Optimizer], group: dict[str, Any]) -> bool:
        # A one-element probe tells stateless configurations (e.g. SGD without momentum) apart
        # without allocating scratch copies of all their params at every checkpoint.
        param = group["params"][0]
        local = param.to_local() if isinstance(param, DTensor) else param
        probe = torch.zeros(1, dtype=local.dtype, device=local.device)
        return bool(self._initial_states(optimizer_cls, group, [probe])[0])

    def _create_placeholder_state(self) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                missing = [p for p in group["params"] if not opt.state.get(p)]
                if not missing or not self._creates_state(type(opt), group):
                    continue
                for param, state in zip(missing, self._initial_states(type(opt), group, missing)):
                    opt.state[param] = state
                    self._placeholder_params.add(param)

    def _drop_placeholder_state(self) -> None:
        for opt in self.optimizers:
            for param in self._placeholder_params:
                opt.state.pop(param, None)
        self._placeholder_params.clear()

    # --- checkpointing --------------------------------------------------------------------

    def _layout(self) -> OptimizerLayout:
        return OptimizerLayout(self.model_parts, self.optimizers, self._fqns)

    def state_dict(self) -> dict[str, Any]:
        self._create_placeholder_state()
        metadata = optimizer_metadata(
            self.phase, class_path_of(self.optimizer_cls), self.optimizer_kwargs,
            self.optimizers[0].param_groups,
        )
        return optimizer_state_dict(self._layout(), metadata, self._placeholder_params)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = decode_metadata(state_dict, "optimizer", type(self).__name__, self.phase)
        check_optimizer_metadata(saved, self.phase, class_path_of(self.optimizer_cls))
        if saved["optimizer"]["init_args"] != self.optimizer_kwargs:
            logger.warning(
                "Optimizer init args differ from the checkpoint's (saved %s, live %s): the saved "
                "per-group hyperparameters are restored",
                saved["optimizer"]["init_args"],
                self.optimizer_kwargs,
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
