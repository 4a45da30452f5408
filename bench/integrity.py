"""What checkpoint integrity records cost: at save (the record) and at load (verifying it).

``python -m bench.integrity`` builds the llama3 debug model of ``train_configs/debug_model.toml``
(6.2M parameters, fp32, random weights) on spawned gloo ranks, shards it with FSDP2 as the
debug job does (each block, then the root), gives every parameter AdamW state (one step on
zero gradients) and saves it with torchtitan's ``CheckpointManager`` in synchronous mode:
model, optimizer and three small Stateful entries, about 75 MB. For each repeat it times, per
rank, ``CheckpointManager.save`` and then
:func:`~titan_phases.components.checkpointing.integrity.write_record`; then
:func:`~titan_phases.components.checkpointing.integrity.verify_on_ranks` and
``CheckpointManager.load`` of the same checkpoint, with its files hot in the page cache (just
written or read) and cold (evicted with ``posix_fadvise(DONTNEED)`` first). A repeat's time is
its slowest rank's; medians are printed. It also times candidate checksums over one data file,
hot, for the choice of XXH3.

**Limitations**
One machine, local disk. "Cold" evicts the guest's page cache only: a virtual disk may still
be served from the host's cache. A training process does other work around a save, which this
does not reproduce. Async saves are not timed: their record is written on DCP's background
thread (see the module), off the training thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import mmap
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import xxhash
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from bench.machine import machine, versions, wait_until_quiet
from titan_phases.components.checkpointing.integrity import verify_on_ranks, write_record

REPO = Path(__file__).resolve().parents[1]
DEBUG_MODEL_TOML = REPO / "train_configs" / "debug_model.toml"


class _Counter:
    """A small Stateful for the dataloader, LR scheduler and train state entries."""

    def __init__(self) -> None:
        self.count = 0

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.count = state["count"]


def debug_model_checkpointer(world_size: int, root: Path) -> Any:
    """torchtitan's CheckpointManager over the FSDP2-sharded debug model and its AdamW state."""
    from torchtitan.components.checkpoint import CheckpointManager
    from torchtitan.components.optimizer import OptimizersContainer
    from torchtitan.config.job_config import Checkpoint

    from titan_phases.config import parse_job_config
    from titan_phases.schedule.model_info import meta_model
    from titan_phases.train_spec import register_train_specs

    register_train_specs()
    model = meta_model(parse_job_config(["--job.config_file", str(DEBUG_MODEL_TOML)]))
    mesh = init_device_mesh("cpu", (world_size,))
    for block in model.layers.values():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    torch.manual_seed(dist.get_rank())
    optimizers = OptimizersContainer(
        [model], torch.optim.AdamW, {"lr": 1e-3, "eps": 1e-8, "weight_decay": 0.1}
    )
    with torch.no_grad():
        for param in model.parameters():
            param.to_local().normal_()
            param.grad = torch.zeros_like(param)
    optimizers.step()  # creates exp_avg, exp_avg_sq and step for every parameter
    config = Checkpoint(enable=True, interval=1, async_mode="disabled", last_save_model_only=False)
    return CheckpointManager(
        dataloader=_Counter(),
        model_parts=[model],
        optimizers=optimizers,
        lr_schedulers=_Counter(),
        states={"train_state": _Counter()},
        checkpoint_config=config,
        sd_adapter=None,
        base_folder=str(root),
    )


def _slowest(seconds: float) -> float:
    times: list[float | None] = [None] * dist.get_world_size()
    dist.all_gather_object(times, seconds)
    return max(t for t in times if t is not None)


def _timed(run: Callable[[], object]) -> float:
    dist.barrier()
    start = time.perf_counter()
    run()
    return _slowest(time.perf_counter() - start)


def _evict(checkpoint: Path) -> None:
    """Drop the checkpoint's files from the page cache (they are clean: DCP fsyncs them)."""
    if dist.get_rank() == 0:
        for path in checkpoint.iterdir():
            with open(path, "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    dist.barrier()


def _checked_verify(checkpoint: Path) -> None:
    problems = verify_on_ranks(checkpoint)
    if problems:
        raise AssertionError(f"a fresh checkpoint does not verify: {problems}")


def _measure(world_size: int, repeats: int, root: Path) -> dict[str, Any]:
    checkpointer = debug_model_checkpointer(world_size, root)
    rank = dist.get_rank()
    checkpointer.save(repeats + 1)  # first-save set-up is not a save's cost
    times: dict[str, list[float]] = {key: [] for key in (
        "save", "record", "verify_hot", "load_hot", "verify_cold", "load_cold")}
    steps = range(1, repeats + 1)
    checkpoints = [Path(checkpointer.folder) / f"step-{step}" for step in steps]
    for step, checkpoint in zip(steps, checkpoints):
        times["save"].append(_timed(lambda s=step: checkpointer.save(s)))
        times["record"].append(_timed(lambda c=checkpoint: write_record(c, rank, world_size)))
    for step, checkpoint in zip(steps, checkpoints):
        times["verify_hot"].append(_timed(lambda c=checkpoint: _checked_verify(c)))
        times["load_hot"].append(_timed(lambda s=step: checkpointer.load(step=s)))
    for step, checkpoint in zip(steps, checkpoints):
        _evict(checkpoint)
        times["verify_cold"].append(_timed(lambda c=checkpoint: _checked_verify(c)))
        _evict(checkpoint)
        times["load_cold"].append(_timed(lambda s=step: checkpointer.load(step=s)))
    checkpointer.close()
    files = {p.name: p.stat().st_size for p in sorted(checkpoints[0].iterdir())}
    return {"world_size": world_size, "files": files, "times": times}


def _rank(rank: int, world_size: int, port: int, root: str, repeats: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    logging.getLogger().setLevel(logging.WARNING)  # torchtitan logs every save and load
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = _measure(world_size, repeats, Path(root))
        if rank == 0:
            Path(out).write_text(json.dumps(result))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world_size: int, repeats: int, root: Path) -> dict[str, Any]:
    """Save/record/verify/load times on ``world_size`` spawned gloo ranks, under ``root``."""
    out = root / "result.json"
    mp.start_processes(
        _rank,
        args=(world_size, _free_port(), str(root), repeats, str(out)),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )
    return json.loads(out.read_text())


def hash_rates(path: Path, repeats: int = 5) -> dict[str, float]:
    """GB/s of candidate checksums over ``path``'s memory map (hot), median of ``repeats``."""
    candidates: dict[str, Callable[[Any], object]] = {
        "xxh3_64": xxhash.xxh3_64_hexdigest,
        "xxh64": xxhash.xxh64_hexdigest,
        "crc32": zlib.crc32,
        "sha1": lambda view: hashlib.sha1(view).hexdigest(),
        "sha256": lambda view: hashlib.sha256(view).hexdigest(),
        "blake2b": lambda view: hashlib.blake2b(view).hexdigest(),
    }
    rates = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        for name, checksum in candidates.items():
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                checksum(view)
                seconds.append(time.perf_counter() - start)
            rates[name] = len(view) / statistics.median(seconds) / 1e9
    return rates


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:7.1f} ms (min {min(values) * 1e3:.1f})"


def report(result: dict[str, Any]) -> str:
    times = result["times"]
    median = {key: statistics.median(values) for key, values in times.items()}
    total = sum(result["files"].values())
    # Saves vary with the disk and the host; each record is compared with its own save.
    ratios = [record / save for record, save in zip(times["record"], times["save"])]
    lines = [
        f"{result['world_size']} rank(s); checkpoint {total / 1e6:.1f} MB in "
        + ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in result["files"].items()),
        f"  save (torchtitan)    {_ms(times['save'])}",
        f"  integrity record     {_ms(times['record'])}  = "
        f"{100 * median['record'] / median['save']:.2f}% of the median save; per save: median "
        f"{100 * statistics.median(ratios):.2f}%, max {100 * max(ratios):.2f}%",
        f"  load, hot            {_ms(times['load_hot'])}",
        f"  verify, hot          {_ms(times['verify_hot'])}  = "
        f"{100 * median['verify_hot'] / median['load_hot']:.1f}% of a hot load",
        f"  load, cold           {_ms(times['load_cold'])}",
        f"  verify, cold         {_ms(times['verify_cold'])}  = "
        f"{100 * median['verify_cold'] / median['load_cold']:.1f}% of a cold load",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.integrity", description=__doc__)
    parser.add_argument("--ranks", default="1,2", help="comma-separated world sizes to run")
    parser.add_argument("--repeats", type=int, default=7, help="saves per world size (>= 5)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write checkpoints")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    busy, waited = wait_until_quiet(threshold=0.25, max_wait_s=120)
    facts = {**machine(), **versions(REPO), "cpu_busy_before": busy, "waited_s": waited}
    print(json.dumps(facts))
    results = []
    base = Path(tempfile.mkdtemp(prefix="titan_phases_integrity_", dir=args.dir))
    try:
        for world_size in (int(n) for n in args.ranks.split(",")):
            root = base / f"ranks-{world_size}"
            root.mkdir()
            result = measure(world_size, args.repeats, root)
            results.append(result)
            print(report(result), flush=True)
            if world_size == 1:
                rates = hash_rates(root / "checkpoint" / "step-1" / "__0_0.distcp")
                result["hash_gb_per_s"] = rates
                print("  checksums, hot, GB/s: "
                      + ", ".join(f"{name} {rate:.2f}" for name, rate in rates.items()))
            shutil.rmtree(root)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": facts, "results": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
