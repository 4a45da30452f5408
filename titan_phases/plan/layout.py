"""Every parameter's shard on every rank of a job's mesh, computed in one process without devices.

:func:`param_layouts` builds the job's model on the meta device and parallelises it with the
TrainSpec's own ``parallelize_fn`` (FSDP2, HSDP, TP, activation checkpointing, compile
wrappers: whatever the job config asks for) over torch.distributed's built-in ``"fake"``
backend, which accepts any world size and communicates nothing. The DTensor placements it
leaves on each parameter then give the local shard shape on every rank. Nothing is allocated
and no accelerator is touched, so a job planned for 8 GPUs can be laid out on a laptop. This is
torchtitan's own dry-run idea (``--comm.mode fake_backend``), done for every rank at once.

**Limitations**
- Pipeline parallelism: torchtitan's ``pipelining_fn`` builds only the stages of the calling
  rank, so the model is built and split once per pipeline rank, each time in a fake world as a
  rank of that pipeline rank's slice of the mesh (``pp`` is the outermost mesh dimension in
  torchtitan, so pipeline rank ``k`` holds global ranks ``k * world_size / pp`` onwards).
- Model converters (float8, MX) are not applied; they keep parameter names and shapes.
- Runs only where no process group exists (it creates and destroys the default group).
- A phased TrainSpec's ``parallelize_fn`` freezes the model to phase 0 of the schedule attached
  to the job config (:func:`titan_phases.schedule.attach_schedule`): attach it first.
- Private APIs: ``torch.distributed.tensor._utils._compute_local_shape_and_global_offset``
  (the local shape for another rank's mesh coordinate: the public variant only answers for the
  calling rank). The mesh is built with torchtitan's device type set to ``"cpu"``
  (:func:`titan_phases.patches.mesh_device_type`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
from torchtitan.config import JobConfig, TORCH_DTYPE_MAP
from torchtitan.distributed import ParallelDims
from torchtitan.protocols.train_spec import get_train_spec
from torchtitan.tools import utils as tt_utils

from titan_phases import patches
from titan_phases.schedule.matching import canonical_param_name

__all__ = ["MeshError", "ParamLayout", "param_layouts", "parallel_dims_for"]


class MeshError(ValueError):
    """The job's parallelism degrees do not fit the world size (a user error)."""


@dataclass(frozen=True)
class ParamLayout:
    """Where one parameter lives: its global shape and dtype, and its shard on each rank."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    local_shapes: tuple[tuple[int, ...] | None, ...]
    """One local (shard) shape per global rank, rank 0 first; None where the rank does not
    hold the parameter at all (it lives on another pipeline stage)."""

    def local_bytes(self, rank: int) -> int:
        if self.local_shapes[rank] is None:
            return 0
        numel = 1
        for size in self.local_shapes[rank]:
            numel *= size
        return numel * self.dtype.itemsize


def parallel_dims_for(job_config: JobConfig, world_size: int) -> ParallelDims:
    """torchtitan's ParallelDims for the job on ``world_size`` ranks, as its Trainer builds it.

    Raises MeshError when the degrees do not multiply to ``world_size``.
    """
    p = job_config.parallelism
    try:
        return ParallelDims(
            dp_shard=p.data_parallel_shard_degree,
            dp_replicate=p.data_parallel_replicate_degree,
            cp=p.context_parallel_degree,
            tp=p.tensor_parallel_degree,
            pp=p.pipeline_parallel_degree,
            ep=p.expert_parallel_degree,
            etp=p.expert_tensor_parallel_degree,
            world_size=world_size,
        )
    except (AssertionError, ValueError) as e:
        raise MeshError(f"the [parallelism] degrees do not fit {world_size} ranks: {e}") from None


@contextlib.contextmanager
def _fake_world(world_size: int, rank: int = 0) -> Iterator[None]:
    if dist.is_initialized():
        raise RuntimeError("a process group already exists; lay out the mesh before creating one")
    dist.init_process_group("fake", rank=rank, world_size=world_size)
    try:
        with patches.mesh_device_type("cpu"):
            yield
    finally:
        dist.destroy_process_group()


def _rank_coordinates(
    mesh: torch.distributed.DeviceMesh, world_size: int
) -> list[list[int] | None]:
    coordinates: list[list[int] | None] = [None] * world_size
    for coordinate in torch.nonzero(mesh.mesh >= 0).tolist():
        coordinates[int(mesh.mesh[tuple(coordinate)])] = coordinate
    return coordinates


def _layout(param: torch.Tensor, holders: range, world_size: int) -> ParamLayout:
    """``param``'s layout; ``holders``: the global ranks whose stages hold it."""
    shape = tuple(param.shape)
    if not isinstance(param, DTensor):
        return ParamLayout(shape, param.dtype, tuple(
            shape if rank in holders else None for rank in range(world_size)
        ))
    local_shapes = tuple(
        None if coordinate is None else tuple(
            _compute_local_shape_and_global_offset(
                shape, param.device_mesh.shape, coordinate, param.placements
            )[0]
        )
        for coordinate in _rank_coordinates(param.device_mesh, world_size)
    )
    return ParamLayout(shape, param.dtype, local_shapes)


def _meta_model(job_config: JobConfig, train_spec: Any, model_args: Any) -> nn.Module:
    with (
        torch.device("meta"),
        tt_utils.set_default_dtype(TORCH_DTYPE_MAP[job_config.training.dtype]),
    ):
        return train_spec.model_cls(model_args)


def _model_parts(
    job_config: JobConfig, train_spec: Any, model_args: Any, parallel_dims: ParallelDims
) -> list[nn.Module]:
    """This (fake) rank's model parts, parallelised as torchtitan's Trainer does it."""
    model = _meta_model(job_config, train_spec, model_args)
    if not parallel_dims.pp_enabled:
        return [train_spec.parallelize_fn(model, parallel_dims, job_config)]
    loss_fn = train_spec.build_loss_fn(job_config, parallel_dims=parallel_dims)
    _, model_parts, _, _ = train_spec.pipelining_fn(
        model, parallel_dims, job_config, torch.device("cpu"), model_args,
        train_spec.parallelize_fn, loss_fn,
    )
    return model_parts


def param_layouts(job_config: JobConfig, world_size: int) -> dict[str, ParamLayout]:
    """``{canonical parameter name: ParamLayout}`` for the job on ``world_size`` ranks.

    In ``named_parameters()`` order. The model is built as torchtitan's Trainer builds it
    (TrainSpec ``model_cls``, ``model_args[flavor]`` updated from the job config, default dtype
    ``training.dtype``) and then parallelised by the spec's ``parallelize_fn``, or split into
    stages and parallelised by its ``pipelining_fn`` under pipeline parallelism.

    Raises:
        MeshError: the parallelism degrees do not fit ``world_size``.
    """
    pp = parallel_dims_for(job_config, world_size).pp
    train_spec = get_train_spec(job_config.model.name)
    model_args = copy.deepcopy(train_spec.model_args[job_config.model.flavor])
    model_args.update_from_config(job_config)
    stage_ranks = world_size // pp
    layouts: dict[str, ParamLayout] = {}
    for pp_rank in range(pp):
        holders = range(pp_rank * stage_ranks, (pp_rank + 1) * stage_ranks)
        with _fake_world(world_size, rank=holders[0]):
            # A mesh belongs to its process group: each fake world builds its own.
            parallel_dims = parallel_dims_for(job_config, world_size)
            parallel_dims.build_mesh()
            for part in _model_parts(job_config, train_spec, model_args, parallel_dims):
                for name, param in part.named_parameters():
                    layouts[canonical_param_name(name)] = _layout(param, holders, world_size)
    if pp == 1:
        return layouts
    # Pipeline ranks hold their stages in schedule order (looped schedules interleave them).
    order = _meta_model(job_config, train_spec, model_args).named_parameters()
    return {name: layouts[name] for name in (canonical_param_name(n) for n, _ in order)}
