"""Laying a job's model out on its mesh in one process: every rank's shard shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from titan_phases.config import parse_job_config
from titan_phases.plan import param_layouts
from titan_phases.schedule import attach_schedule, load_and_validate
from titan_phases.train_spec import register_train_specs

REPO = Path(__file__).resolve().parents[2]
DEFAULT_JOB = str(REPO / "train_configs" / "debug_model.toml")


@pytest.fixture(autouse=True, scope="module")
def _phased_specs() -> None:
    register_train_specs()


def _job(config_file: str, *overrides: str):
    """The job, with its schedule attached for the phased spec's parallelize_fn."""
    job_config = parse_job_config(["--job.config_file", config_file, *overrides])
    attach_schedule(job_config, load_and_validate(job_config))
    return job_config


def _tiny_job(*overrides: str):
    return _job(str(REPO / "tests/trainer/tiny_job.toml"), *overrides)


def test_fsdp_shards_of_every_rank_follow_torch_chunk_when_uneven():
    job_config = _tiny_job()
    layouts = param_layouts(job_config, 3)
    assert "tok_embeddings.weight" in layouts
    for name, layout in layouts.items():
        rows = [len(c) for c in torch.arange(layout.shape[0]).chunk(3)]
        rows += [0] * (3 - len(rows))
        assert [s[0] for s in layout.local_shapes] == rows, name
        assert all(s[1:] == layout.shape[1:] for s in layout.local_shapes), name


@pytest.mark.parametrize("degrees, replicated", [
    # FSDP2 x TP2: norms are replicated over TP (sequence parallel), everything else is split.
    (("--parallelism.tensor_parallel_degree", "2"), lambda name: "norm" in name),
    # HSDP 2 x 2: every parameter lives on both replicas.
    (("--parallelism.data_parallel_replicate_degree", "2",
      "--parallelism.data_parallel_shard_degree", "2"), lambda name: True),
])
def test_two_dimensional_meshes_hold_each_element_once_per_replica(degrees, replicated):
    layouts = param_layouts(_job(DEFAULT_JOB, *degrees), 4)
    for name, layout in layouts.items():
        held = sum(torch.Size(s).numel() for s in layout.local_shapes)
        assert held == torch.Size(layout.shape).numel() * (2 if replicated(name) else 1), name
    if "--parallelism.tensor_parallel_degree" in degrees:
        # Column-wise wq: TP splits the rows in 2, FSDP those halves in 2; row-wise wo: TP
        # splits the columns, FSDP the rows.
        assert layouts["layers.0.attention.wq.weight"].local_shapes[0] == (64, 256)
        assert layouts["layers.0.attention.wo.weight"].local_shapes[0] == (128, 128)


def test_pipeline_stages_hold_their_own_params_sharded_over_their_slice_of_the_mesh():
    # PP=2 x FSDP=2 on 4 ranks: torchtitan's 1F1B split of the tiny model's 4 blocks puts the
    # embedding and blocks 0-1 on pipeline rank 0 (global ranks 0-1), the rest on rank 1 (2-3).
    job_config = _tiny_job("--parallelism.pipeline_parallel_degree", "2",
                           "--parallelism.data_parallel_shard_degree", "2")
    layouts = param_layouts(job_config, 4)
    assert list(layouts) == list(param_layouts(_tiny_job(), 2))  # every param, in model order
    for name, layout in layouts.items():
        first_stage = name.startswith(("tok_embeddings.", "layers.0.", "layers.1."))
        holders = (0, 1) if first_stage else (2, 3)
        assert [r for r, s in enumerate(layout.local_shapes) if s is not None] == list(holders)
        rows = [len(c) for c in torch.arange(layout.shape[0]).chunk(2)]
        assert [layout.local_shapes[r][0] for r in holders] == rows, name
        assert all(layout.local_bytes(r) == 0 for r in range(4) if r not in holders)
