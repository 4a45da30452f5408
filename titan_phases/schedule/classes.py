"""Optimizer and LR scheduler classes named in a schedule: import, check, dry-instantiate.

The same functions turn ``init_args`` into constructor keyword arguments for validation and for
the runtime, so what validates is what runs. Dry instantiation uses CPU dummy parameters: an
argument only a GPU accepts would be rejected here.

**Limitations** An LR scheduler is dry-run around a few param groups, not one per phase (see
:func:`dry_run_group_count`): a class whose constructor or first step depends on the number of
groups other than through a per-group list argument is not checked against the real number.
"""

from __future__ import annotations

import collections.abc
import difflib
import functools
import importlib
import inspect
import logging
import typing
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.optim import lr_scheduler as lrs

from titan_phases.config.typecheck import describe, fits

logger = logging.getLogger(__name__)

# FTS's tested list: each steps with the optimizer and accepts param groups added later.
SUPPORTED_LR_SCHEDULERS: tuple[type, ...] = (
    lrs.LambdaLR,
    lrs.MultiplicativeLR,
    lrs.StepLR,
    lrs.MultiStepLR,
    lrs.ExponentialLR,
    lrs.CosineAnnealingLR,
    lrs.CosineAnnealingWarmRestarts,
    lrs.ConstantLR,
    lrs.LinearLR,
    lrs.ReduceLROnPlateau,
)
# They wrap other scheduler objects, which a class_path + init_args table cannot describe.
REJECTED_LR_SCHEDULERS: tuple[type, ...] = (lrs.ChainedScheduler, lrs.SequentialLR)
LAMBDA_SCHEDULERS: tuple[type, ...] = (lrs.LambdaLR, lrs.MultiplicativeLR)


def import_object(path: str) -> Any:
    """Import ``pkg.module.Name`` (also ``pkg.module.Outer.Inner``). Raises ImportError."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # Only "this prefix is not a module" means: try a shorter one.
            if e.name and module_name.startswith(e.name):
                continue
            raise
        for attr in parts[split:]:
            if not hasattr(obj, attr):
                close = difflib.get_close_matches(attr, [a for a in dir(obj) if a[0] != "_"], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ImportError(f"{getattr(obj, '__name__', module_name)!r} has no attribute "
                                  f"{attr!r}{hint}")
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no importable module in {path!r}")


class WrongKindError(TypeError):
    """The imported object is not a class of the expected kind."""


def import_class(path: str, base: type | tuple[type, ...], kind: str) -> type:
    """Import ``path`` and check it is a subclass of ``base``. Raises WrongKindError, or
    whatever importing raises (ImportError, or any error of the imported module's code)."""
    obj = import_object(path)
    if not isinstance(obj, type) or not issubclass(obj, base):
        raise WrongKindError(f"{path} is not {kind}")
    return obj


OPTIMIZER_MODULE = "torch.optim"
LR_SCHEDULER_MODULE = "torch.optim.lr_scheduler"


def qualified_class_path(path: str, default_module: str) -> str:
    """``path`` as a dotted path: a bare name (``"AdamW"``) is looked up in ``default_module``."""
    return path if "." in path else f"{default_module}.{path}"


def class_path_of(cls: type) -> str:
    """The dotted path under which ``cls`` is importable, e.g. ``torch.optim.adamw.AdamW``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class_path(
    path: str, base: type | tuple[type, ...], default_module: str, kind: str
) -> type:
    """:func:`import_class` for a dotted path or a bare name from ``default_module``."""
    return import_class(qualified_class_path(path, default_module), base, kind)


OPTIMIZER_FIELD_ARGS = {
    "lr": ("lr",),
    "beta1": ("betas",),
    "beta2": ("betas",),
    "eps": ("eps",),
    "weight_decay": ("weight_decay",),
    "implementation": ("fused", "foreach"),
}
"""``[optimizer]`` field -> the constructor arguments :func:`optimizer_from_config` passes it
as (torchtitan's mapping)."""


def optimizer_from_config(config: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """Optimizer class and constructor kwargs for torchtitan's ``[optimizer]`` section
    (``torchtitan.config.Optimizer``).

    ``name`` is ``Adam``/``AdamW`` as in torchtitan, any other ``torch.optim`` class name, or a
    dotted class path. The section's fields are passed where the class accepts them (for Adam
    and AdamW exactly the kwargs torchtitan's ``build_optimizers`` passes); fields the class
    has no argument for (e.g. ``beta1`` for SGD) are ignored with an INFO message.
    """
    optimizer_cls = import_class_path(
        config.name, torch.optim.Optimizer, OPTIMIZER_MODULE, "an optimizer"
    )
    accepted = inspect.signature(optimizer_cls.__init__).parameters
    values = {"lr": config.lr, "betas": (config.beta1, config.beta2), "eps": config.eps,
              "weight_decay": config.weight_decay}
    kwargs = {arg: value for arg, value in values.items() if arg in accepted}
    ignored = [field for field, args in OPTIMIZER_FIELD_ARGS.items()
               if field != "implementation" and not any(arg in accepted for arg in args)]
    if ignored:
        logger.info(
            "optimizer.%s: not arguments of %s, ignored", ", ".join(ignored), optimizer_cls.__name__
        )

    implementation = config.implementation
    if implementation == "for-loop":
        kwargs.update({flag: False for flag in ("fused", "foreach") if flag in accepted})
    else:
        if implementation not in accepted:
            raise ValueError(
                f"optimizer.implementation = '{implementation}', but {optimizer_cls.__name__} "
                f"has no {implementation} implementation; set --optimizer.implementation to one "
                f"of {[i for i in ('fused', 'foreach') if i in accepted] + ['for-loop']}"
            )
        other = "foreach" if implementation == "fused" else "fused"
        kwargs[implementation] = True
        if other in accepted:
            kwargs[other] = False
    return optimizer_cls, kwargs


def configured_lr(optimizer_cls: type, init_args: Mapping[str, Any]) -> float | None:
    """The lr ``optimizer_cls(params, **init_args)`` runs with: ``init_args["lr"]``, else the
    class's default; None for a class without an lr argument or default."""
    if "lr" in init_args:
        return float(init_args["lr"])
    lr = inspect.signature(optimizer_cls).parameters.get("lr")
    if lr is None or lr.default is inspect.Parameter.empty:
        return None
    return float(lr.default)


def _lambda_from_spec(spec: Any) -> Any:
    """``"pkg.mod.fn"`` or ``{function = "pkg.mod.fn", kwargs = {...}}`` -> a callable that
    pickles by reference (checkpoints store the scheduler state, lambdas included)."""
    kwargs: Mapping[str, Any] = {}
    if isinstance(spec, Mapping):
        if set(spec) - {"function", "kwargs"} or "function" not in spec:
            raise ValueError(
                f"expected {{function = 'pkg.mod.fn', kwargs = {{...}}}}, got {spec!r}")
        spec, kwargs = spec["function"], spec.get("kwargs", {})
        if not isinstance(kwargs, Mapping):
            raise ValueError(f"kwargs must be a table, got {kwargs!r}")
    if not isinstance(spec, str):
        raise ValueError(f"expected a dotted path to a function, got {spec!r}")
    fn = import_object(spec)
    qualname = getattr(fn, "__qualname__", "")
    if not callable(fn) or "<lambda>" in qualname or "<locals>" in qualname:
        raise ValueError(f"{spec} must be a module-level function (lambdas and nested functions "
                         f"cannot be saved in checkpoints)")
    return functools.partial(fn, **kwargs) if kwargs else fn


def lr_scheduler_kwargs(cls: type, init_args: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor kwargs for ``cls(optimizer, **kwargs)``: ``lr_lambda`` specs of LambdaLR and
    MultiplicativeLR become functions (a list of specs: one function per param group)."""
    kwargs = dict(init_args)
    if issubclass(cls, LAMBDA_SCHEDULERS) and "lr_lambda" in kwargs:
        spec = kwargs["lr_lambda"]
        if isinstance(spec, list):
            kwargs["lr_lambda"] = [_lambda_from_spec(s) for s in spec]
        else:
            kwargs["lr_lambda"] = _lambda_from_spec(spec)
    return kwargs


@functools.cache
def _init_arg_types(cls: type) -> dict[str, Any]:
    try:
        # torch imports some annotation types (Callable, Iterable) for type checkers only.
        return typing.get_type_hints(cls.__init__, localns=vars(collections.abc))
    except Exception:  # evaluating annotations runs the class's module code
        return {}


def mistyped_init_args(cls: type, init_args: Mapping[str, Any]) -> dict[str, str]:
    """``{name: the annotated type in words}`` for each of ``init_args`` whose value cannot be of
    the type ``cls``'s constructor annotates it with (``step_size = "5"``), which a constructor
    often stores unchecked until a training step uses it. Unannotated classes are not checked;
    ``lr_lambda`` specs are checked when they are imported, and ``params`` and ``optimizer``
    (set by titan_phases) by the dry runs."""
    types = _init_arg_types(cls)
    skip = {"params", "optimizer"}
    if issubclass(cls, LAMBDA_SCHEDULERS):
        skip.add("lr_lambda")
    return {name: describe(types[name]) for name, value in init_args.items()
            if name in types and name not in skip and not fits(value, types[name])}


def has_default(cls: type, name: str) -> bool:
    """Whether ``cls``'s constructor argument ``name`` may be left out."""
    try:
        parameter = inspect.signature(cls).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is not inspect.Parameter.empty


def _dummy_params(n: int) -> list[torch.nn.Parameter]:
    # 2-D so that optimizers restricted to matrices (e.g. Muon) construct.
    return [torch.nn.Parameter(torch.zeros(2, 2)) for _ in range(n)]


def dry_run_optimizer(cls: type, init_args: Mapping[str, Any]) -> None:
    """Construct ``cls`` over one dummy parameter; raises what the constructor raises."""
    if "params" in init_args:
        raise ValueError("'params' is set by titan_phases; remove it from init_args")
    cls(_dummy_params(1), **init_args)


# Phase 0's group and the new one. More groups change what a scheduler's constructor and first
# step do only through per-group list arguments, whose lengths dry_run_group_count honours.
_DRY_RUN_GROUPS = 2


def dry_run_group_count(init_args: Mapping[str, Any], n_groups: int) -> int:
    """How many param groups a dry run needs to pass exactly when one with ``n_groups`` groups
    passes: ``n_groups`` when a list in ``init_args`` has that length (a per-group list such as
    LambdaLR's ``lr_lambda``, CyclicLR's ``max_lr`` or ReduceLROnPlateau's ``min_lr``), else a
    small count that is no list's length, so a per-group list of the wrong length still fails.
    A schedule of N phases thus dry-runs O(N) groups in all, not O(N^2)."""
    lengths = {len(v) for v in init_args.values() if isinstance(v, (list, tuple))}
    if n_groups in lengths:
        return n_groups
    count = min(n_groups, _DRY_RUN_GROUPS)
    while count in lengths:  # ends below n_groups, which is no list's length
        count += 1
    return count


def _dummy_optimizer(group_lrs: Sequence[float]) -> torch.optim.SGD:
    params = _dummy_params(len(group_lrs))
    optimizer = torch.optim.SGD([{"params": params[:1], "lr": group_lrs[0]}])
    # What add_param_group would do, minus its comparison of each new group with every earlier
    # one (quadratic in the number of groups; these parameters are distinct by construction).
    for param, lr in zip(params[1:], group_lrs[1:]):
        optimizer.param_groups.append({**optimizer.defaults, "params": [param], "lr": lr})
    return optimizer


def dry_run_lr_scheduler(
    cls: type, init_args: Mapping[str, Any], group_lrs: Sequence[float]
) -> None:
    """Construct ``cls`` around an SGD optimizer with one dummy param group per lr and step it
    once, as the first training step of its phase will; raises what either raises."""
    if "optimizer" in init_args:
        raise ValueError("'optimizer' is set by titan_phases; remove it from init_args")
    kwargs = lr_scheduler_kwargs(cls, init_args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = cls(_dummy_optimizer(group_lrs), **kwargs)
        # Values only a step uses (T_max = 0, a step_size of the wrong type) fail here.
        if isinstance(scheduler, lrs.ReduceLROnPlateau):
            scheduler.step(0.0)
        else:
            scheduler.step()
