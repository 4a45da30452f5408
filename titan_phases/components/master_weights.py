"""fp32 master weights for the trainable params of a model stored in bf16.

With ``training.dtype = "bfloat16"`` torchtitan keeps every weight, gradient and optimizer
state in bf16, which loses the small updates of fine-tuning. With ``[phases]
fp32_master_weights = true`` the weights stay bf16 (2 bytes a param, frozen ones included) and
:class:`MasterWeights` keeps an fp32 copy of each *trainable* param, sharded like the param (a
DTensor with its placements), for the optimizer to step: each step the bf16 gradient is upcast
into the master's, the optimizer (with fp32 state) steps the master, and the master is copied
back, rounded, into the bf16 param. A param that stops training is written back and its master
freed; one that starts gets a master from its bf16 value.

Checkpoints hold the masters in the model's place (:meth:`MasterWeights.model_state`): the
entry of a trainable param is its fp32 master, of a frozen one its bf16 weight. Loading fills
the masters in full precision (pretrained fp32 weights included) and the params with their
rounded values; a model-only or HF save writes the masters' values. So a checkpoint of a run
with masters resumes bitwise, and loads into a run without them, and the reverse.

FSDP2 picks each param group's reduce dtype at lazy init; the storage dtype never changes here
(the masters live beside the params), so nothing needs refreshing beyond what a thaw does.

**Limitations**
The fp32 gradient exists only during the optimizer step (one param at a time is not attempted:
a group's gradients are upcast together). Gradient clipping sees torchtitan's bf16 gradients.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.tensor import DTensor

__all__ = ["MasterWeights", "ModelStateWithMasters", "local_bytes"]


def local_bytes(tensor: torch.Tensor) -> int:
    """Bytes this rank holds of ``tensor`` (the local shard of a DTensor)."""
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class MasterWeights:
    """The fp32 masters of the trainable params of a job's model parts; see the module
    docstring. ``fqns``: per model part, each param's name as DCP's state dicts spell it."""

    def __init__(self, fqns: Iterable[Mapping[torch.Tensor, str]]) -> None:
        self._fqns = list(fqns)
        self._masters: dict[torch.Tensor, nn.Parameter] = {}
        self._params: dict[nn.Parameter, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._masters)

    def add(self, params: Iterable[torch.Tensor]) -> list[nn.Parameter]:
        """Masters for ``params`` (created from their values); returns them in order."""
        masters = []
        for param in params:
            if param not in self._masters:
                master = nn.Parameter(param.detach().to(torch.float32))
                self._masters[param] = master
                self._params[master] = param
            masters.append(self._masters[param])
        return masters

    def master(self, param: torch.Tensor) -> nn.Parameter:
        return self._masters[param]

    def param(self, master: torch.Tensor) -> torch.Tensor:
        return self._params[master]

    def remove(self, params: Iterable[torch.Tensor]) -> list[nn.Parameter]:
        """Write the masters of ``params`` back into them and forget them; returns the masters
        (for the optimizer to drop)."""
        removed = []
        for param in params:
            master = self._masters.pop(param)
            del self._params[master]
            with torch.no_grad():
                _local(param).copy_(_local(master))
            removed.append(master)
        return removed

    def grads_to_masters(self) -> None:
        """Before a step: each master's gradient is its param's, upcast (None stays None)."""
        for param, master in self._masters.items():
            master.grad = None if param.grad is None else param.grad.to(torch.float32)

    def write_back(self) -> None:
        """After a step: every param takes its master's value, rounded to its dtype; the fp32
        gradients are freed."""
        with torch.no_grad():
            for param, master in self._masters.items():
                _local(param).copy_(_local(master))
                master.grad = None

    def zero_param_grads(self) -> None:
        for param in self._masters:
            param.grad = None

    def by_fqn(self) -> dict[str, nn.Parameter]:
        """Every master by the DCP name of its param."""
        names = {p: fqn for fqns in self._fqns for p, fqn in fqns.items()}
        return {names[param]: master for param, master in self._masters.items()}

    def fqns(self) -> list[dict[torch.Tensor, str]]:
        """Per model part, each master with its param's DCP name."""
        return [{self._masters[p]: fqn for p, fqn in fqns.items() if p in self._masters}
                for fqns in self._fqns]

    def modules(self) -> list[nn.Module]:
        """Per model part, a module whose ``named_parameters`` are that part's masters under
        their params' DCP names, so that DCP names the optimizer state over the masters as it
        names it over the params (checkpoints of runs with and without masters share keys)."""
        parts = []
        for fqns in self.fqns():
            root = nn.Module()
            for master, fqn in fqns.items():
                *path, name = fqn.split(".")
                module = root
                for segment in path:
                    if not hasattr(module, segment):
                        module.add_module(segment, nn.Module())
                    module = getattr(module, segment)
                module.register_parameter(name, master)
            parts.append(root)
        return parts

    def nbytes(self) -> int:
        """Bytes of masters this rank holds."""
        return sum(local_bytes(m) for m in self._masters.values())

    def __iter__(self) -> Iterator[nn.Parameter]:
        return iter(self._masters.values())


class ModelStateWithMasters(Stateful):
    """torchtitan's Stateful model (``CheckpointManager.states["model"]``) with the masters in
    the place of the trainable params (see the module docstring)."""

    def __init__(self, model_state: Stateful, masters: MasterWeights) -> None:
        self._inner = model_state
        self._masters = masters

    def state_dict(self) -> dict[str, Any]:
        return {**self._inner.state_dict(), **self._masters.by_fqn()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The masters were loaded in place; the model load copies them, rounded, into the
        # bf16 params, and every other entry as it is.
        self._inner.load_state_dict(state_dict)
