"""Optimizer and LR scheduler classes named in a schedule: import, check, dry-instantiate.

The same functions turn ``init_args`` into constructor keyword arguments for validation and for
the runtime, so what validates is what runs. Dry instantiation uses CPU dummy parameters: an
argument only a GPU accepts would be rejected here.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.optim import lr_scheduler as lrs

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


def _dummy_params(n: int) -> list[torch.nn.Parameter]:
    # 2-D so that optimizers restricted to matrices (e.g. Muon) construct.
    return [torch.nn.Parameter(torch.zeros(2, 2)) for _ in range(n)]


def dry_run_optimizer(cls: type, init_args: Mapping[str, Any]) -> None:
    """Construct ``cls`` over one dummy parameter; raises what the constructor raises."""
    if "params" in init_args:
        raise ValueError("'params' is set by titan_phases; remove it from init_args")
    cls(_dummy_params(1), **init_args)


def dry_run_lr_scheduler(
    cls: type, init_args: Mapping[str, Any], group_lrs: Sequence[float]
) -> None:
    """Construct ``cls`` around an SGD optimizer with one dummy param group per lr."""
    if "optimizer" in init_args:
        raise ValueError("'optimizer' is set by titan_phases; remove it from init_args")
    kwargs = lr_scheduler_kwargs(cls, init_args)
    groups = [{"params": [p], "lr": lr} for p, lr in zip(_dummy_params(len(group_lrs)), group_lrs)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls(torch.optim.SGD(groups), **kwargs)
