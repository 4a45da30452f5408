"""Every parameter's shard on every rank of a job's mesh, computed in one process without devices.

:func:`param_layouts` builds the job's model on the meta device and parallelises it with the
TrainSpec's own ``parallelize_fn`` (FSDP2, HSDP, TP, activation checkpointing, compile
wrappers: whatever the job config asks for) over torch.distributed's built-in ``"fake"``
backend, which accepts any world size and communicates nothing. The DTensor placements it
leaves on each parameter then give the local shard shape on every rank. Nothing is allocated
and no accelerator is touched, so a job planned for 8 GPUs can be laid out on a laptop. This is
torchtitan's own dry-run idea (``--comm.mode fake_backend``), done for every rank at once.

**Limitations**
- Pipeline parallelism is refused: torchtitan splits the model into stages per rank in its
  ``pipelining_fn``, so one process cannot see every stage.
- Model converters (float8, MX) are not applied; they keep parameter names and shapes.
- Runs only where no process group exists (it creates and destroys the default group).
- Private APIs: ``torch.distributed.tensor._utils._compute_local_shape_and_global_offset``
  (the local shape for another rank's mesh coordinate: the public variant only answers for the
  calling rank), and the module global ``torchtitan.distributed.parallel_dims.device_type``,
  set to ``"cpu"`` while the mesh is built: torchtitan builds it on the accelerator type
  (``"cuda"`` even on machines without one), and FSDP2 would then query that device.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
from torchtitan.config import JobConfig, TORCH_DTYPE_MAP
from torchtitan.distributed import parallel_dims as tt_parallel_dims
from torchtitan.distributed import ParallelDims
from torchtitan.protocols.train_spec import get_train_spec
from torchtitan.tools import utils as tt_utils

from titan_phases.schedule.matching import canonical_param_name

__all__ = ["MeshError", "ParamLayout", "param_layouts", "parallel_dims_for"]


class MeshError(ValueError):
    """The job's parallelism degrees do not fit the world size (a user error)."""


@dataclass(frozen=True)
class ParamLayout:
    """Where one parameter lives: its global shape and dtype, and its shard on each rank."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    local_shapes: tuple[tuple[int, ...], ...]
    """One local (shard) shape per global rank, rank 0 first."""

    def local_bytes(self, rank: int) -> int:
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
def _fake_world(world_size: int) -> Iterator[None]:
    if dist.is_initialized():
        raise RuntimeError("a process group already exists; lay out the mesh before creating one")
    dist.init_process_group("fake", rank=0, world_size=world_size)
    try:
        with mock.patch.object(tt_parallel_dims, "device_type", "cpu"):
            yield
    finally:
        dist.destroy_process_group()


def _rank_coordinates(mesh: torch.distributed.DeviceMesh, world_size: int) -> list[list[int]]:
    coordinates: list[list[int]] = [[] for _ in range(world_size)]
    for coordinate in torch.nonzero(mesh.mesh >= 0).tolist():
        coordinates[int(mesh.mesh[tuple(coordinate)])] = coordinate
    return coordinates


def _layout(param: torch.Tensor, world_size: int) -> ParamLayout:
    shape = tuple(param.shape)
    if not isinstance(param, DTensor):
        return ParamLayout(shape, param.dtype, (shape,) * world_size)
    coordinates = _rank_coordinates(param.device_mesh, world_size)
    local_shapes = tuple(
        tuple(
            _compute_local_shape_and_global_offset(
                shape, param.device_mesh.shape, coordinate, param.placements
            )[0]
        )
        for coordinate in coordinates
    )
    return ParamLayout(shape, param.dtype, local_shapes)


def param_layouts(job_config: JobConfig, world_size: int) -> dict[str, ParamLayout]:
    """``{canonical parameter name: ParamLayout}`` for the job on ``world_size`` ranks.

    In ``named_parameters()`` order. The model is built as torchtitan's Trainer builds it
    (TrainSpec ``model_cls``, ``model_args[flavor]`` updated from the job config, default dtype
    ``training.dtype``) and then
    parallelised by the spec's ``parallelize_fn``.

    Raises:
        MeshError: the parallelism degrees do not fit ``world_size``, or the job uses
            pipeline parallelism.
    """
    parallel_dims = parallel_dims_for(job_config, world_size)
    if parallel_dims.pp_enabled:
        raise MeshError(
            "pipeline parallelism cannot be laid out in one process (torchtitan splits the "
            "model into per-rank stages); plan the job with pipeline_parallel_degree = 1"
        )
    train_spec = get_train_spec(job_config.model.name)
    model_args = copy.deepcopy(train_spec.model_args[job_config.model.flavor])
    model_args.update_from_config(job_config)
    with _fake_world(world_size):
        parallel_dims.build_mesh()
        with (
            torch.device("meta"),
            tt_utils.set_default_dtype(TORCH_DTYPE_MAP[job_config.training.dtype]),
        ):
            model = train_spec.model_cls(model_args)
        model = train_spec.parallelize_fn(model, parallel_dims, job_config)
        return {
            canonical_param_name(name): _layout(param, world_size)
            for name, param in model.named_parameters()
        }
