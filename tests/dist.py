"""Run a function on N real gloo ranks (separate processes) and collect what each returns.

Distributed tests use this instead of mocking collectives: every rank is its own process
with its own ``torch.distributed`` process group on the gloo backend. Tests of whole programs
launch them with :func:`torchrun_command` and :func:`rank_env` instead.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.launches import launch
from titan_phases.runtime.process_exit import exit_process

REPO = Path(__file__).resolve().parents[1]


def torchrun_command(nproc: int, *program: str) -> list[str]:
    """torchrun with ``nproc`` local ranks on a free port, then ``program`` as torchrun takes it
    (a script or ``-m module``, with its arguments)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", *program,
    ]


def rank_env() -> dict[str, str]:
    """The environment for launched ranks: this checkout importable, one thread per rank."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result: Any = fn(rank, world_size, *args)
        payload = ("ok", result)
    except BaseException as exc:  # CheckpointException derives from BaseException
        payload = ("error", f"rank {rank}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(payload, f)
    # As titan_phases.train does: FSDP2's DTensor caches keep the group's gloo threads alive,
    # and tearing them down in interpreter finalization can abort a rank that passed.
    exit_process(0)


def run_ranks(fn: Callable, world_size: int, *args: Any) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; return per-rank results.

    ``fn`` must be a module-level function (it is pickled into spawned processes). Results must
    be picklable; move tensors to CPU. Any rank's exception is re-raised here as AssertionError
    with that rank's traceback. Only a test marked ``e2e`` may call it (``tests/launches.py``).
    """
    what = f"{world_size} rank(s) of {fn.__module__}.{fn.__name__}"
    with tempfile.TemporaryDirectory() as out_dir, launch(what):
        mp.start_processes(
            _worker,
            args=(world_size, _free_port(), out_dir, fn, args),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        results = []
        for rank in range(world_size):
            with open(os.path.join(out_dir, f"rank{rank}.pkl"), "rb") as f:
                status, value = pickle.load(f)
            if status != "ok":
                raise AssertionError(value)
            results.append(value)
        return results
