"""Launch real torchrun jobs of ``python -m titan_phases.train`` and read what they wrote."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.dist import rank_env, REPO, torchrun_command
from tests.launches import launch
from titan_phases.components.metrics_file import Metrics, METRICS_FILE, read_metrics

TINY_JOB = REPO / "tests" / "trainer" / "tiny_job.toml"
CYCLE_JOB = REPO / "tests" / "trainer" / "cycle_job.toml"


@dataclass
class JobResult:
    returncode: int
    output: str
    dump: Path
    all_gathers: Path | None = None

    def metrics(self) -> Metrics:
        """The job's metrics.jsonl, every process start of it."""
        return read_metrics(self.dump)

    def records(self, kind: str = "train") -> list[dict]:
        """metrics.jsonl records of ``kind`` written by the *last* process start."""
        return self.metrics().since_last_start().of_type(kind)

    def losses(self) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in self.records()}

    def backward_all_gathers(self, microbatches: int = 1) -> dict[int, set[str]]:
        """Phase -> what any rank all-gathered inside backward in that phase: the block
        (``layers.N``) of a block's parameter, the parameter's own name outside blocks.

        Needs ``run_job(..., record_all_gathers=True)`` and a single process start; a step
        runs ``microbatches`` backwards.
        """
        gathered: dict[int, set[str]] = {}
        for _, phase, record in self._backward_records(microbatches):
            if "fqns" in record:
                gathered.setdefault(phase, set()).update(
                    ".".join(n.split(".")[:2]) if n.startswith("layers.") else n
                    for n in record["fqns"]
                )
        return gathered

    def backward_tensors(self, microbatches: int = 1) -> dict[int, dict[int, int]]:
        """Phase -> rank -> how many tensors needing grad that rank's backward calls started
        from in that phase (0: no backward ran there, e.g. a frozen pipeline stage). Needs
        what :meth:`backward_all_gathers` needs."""
        started: dict[int, dict[int, int]] = {}
        for rank, phase, record in self._backward_records(microbatches):
            if "tensors" in record:
                per_rank = started.setdefault(phase, {})
                per_rank[rank] = per_rank.get(rank, 0) + record["tensors"]
        return started

    def _backward_records(self, microbatches: int) -> Iterator[tuple[int, int, dict]]:
        from tests.trainer.backward_all_gathers import read

        assert self.all_gathers is not None, "run_job(..., record_all_gathers=True)"
        phase_of_step = {r["step"]: r["phase"] for r in self.records()}
        first_step = min(phase_of_step)
        for rank, records in read(self.all_gathers).items():
            for record in records:
                step = first_step + (record["backward"] - 1) // microbatches
                yield rank, phase_of_step[step], record

    def failure(self) -> str:
        """The end of the output, for an assertion message.

        faulthandler's list of loaded extension modules is dropped: on a crash it is long enough
        to push the thread stacks and the C++ error above it out of a short tail.
        """
        lines = [line for line in self.output.splitlines() if "Extension modules:" not in line]
        return "\n".join(lines)[-12000:]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_job(proc: subprocess.Popen) -> None:
    # torchrun starts each rank in a session of its own, so killing the launcher's process
    # group would leave the ranks running: kill every descendant, like a lost node would.
    for pid in [proc.pid, *_descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def run_job(
    dump: Path,
    *overrides: str,
    nproc: int = 2,
    config: Path = TINY_JOB,
    kill_after_step: int | None = None,
    terminate_after_step: int | None = None,
    faults: dict[str, str] | None = None,
    record_all_gathers: bool = False,
    timeout: float = 300,
) -> JobResult:
    """Run a job with torchrun.

    With ``kill_after_step`` the job stalls right after logging that step (see
    ``tests/trainer/tiny_spec.py``) and is then SIGKILLed, launcher and ranks together; its last
    complete checkpoint is ``kill_after_step - 1``. With ``terminate_after_step`` the launcher
    alone gets SIGTERM once that step is logged, as a scheduler preempting the job would send
    it, and the job is left to finish on its own. ``faults`` are environment variables of
    ``tests/trainer/tiny_spec.py`` that make the job stall at a chosen moment: once a rank has
    stalled there, the job is SIGKILLed, launcher and ranks together. ``record_all_gathers``
    records the FSDP all-gathers of every backward (``tests/trainer/backward_all_gathers.py``;
    the config must import that module, as ``tiny_spec.py`` does). Only a test marked ``e2e``
    may call it (``tests/launches.py``).
    """
    cache = os.environ["TITAN_PHASES_CACHE"]
    cmd = torchrun_command(
        nproc, "-m", "titan_phases.train", "--job.config_file", str(config),
        "--job.dump_folder", str(dump), "--model.hf_assets_path", f"{cache}/tokenizer",
        *overrides,
    )
    env = rank_env()
    if kill_after_step is not None:
        env["TITAN_PHASES_TEST_STALL_AT_STEP"] = str(kill_after_step)
    log = dump.parent / f"{dump.name}.{time.monotonic_ns()}.log"
    stalled = log.with_suffix(".stalled")
    if faults:
        env.update(faults, TITAN_PHASES_TEST_STALL_MARKER=str(stalled))
    all_gathers = log.with_suffix(".all_gathers") if record_all_gathers else None
    if all_gathers:
        env["TITAN_PHASES_TEST_ALL_GATHERS"] = str(all_gathers)
    dump.parent.mkdir(parents=True, exist_ok=True)
    what = " ".join((f"job x{nproc}", config.name, *overrides))
    with open(log, "w") as out, launch(what):
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                _kill_job(proc)
                raise TimeoutError(f"job did not finish in {timeout}s; log: {log}")
            if (kill_after_step is not None and _logged(dump, kill_after_step)) or (
                faults and stalled.exists()
            ):
                _kill_job(proc)
                break
            if terminate_after_step is not None and _logged(dump, terminate_after_step):
                proc.send_signal(signal.SIGTERM)
                terminate_after_step = None
            time.sleep(0.05)
    return JobResult(proc.returncode, log.read_text(), dump, all_gathers)


def from_initial(initial: Path) -> tuple[str, ...]:
    """Job arguments that start from the weights in checkpoint ``initial`` (the trainer tests'
    ``initial_weights``), unless the job's folder holds a checkpoint to resume."""
    return ("--checkpoint.initial_load_path", str(initial))


def checkpoint_state(checkpoint: Path, scratch: Path) -> dict:
    """Everything DCP checkpoint ``checkpoint`` holds, converted through file ``scratch``."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(checkpoint, scratch)
    return torch.load(scratch, weights_only=False)


def model_tensors(checkpoint: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """The model weights of DCP checkpoint ``checkpoint``, converted through file ``scratch``."""
    state = checkpoint_state(checkpoint, scratch)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and "." in k}


def _logged(dump: Path, step: int) -> bool:
    # Read while the job writes: read_metrics leaves out a line being written.
    return (dump / METRICS_FILE).exists() and step in read_metrics(dump).train


def measured_state_bytes(records: list[dict]) -> dict[int, list[int]]:
    """Phase -> optimizer state bytes per rank, as metrics.jsonl reports them.

    Every logged step of a phase must report the same bytes (measured once per phase).
    """
    by_phase: dict[int, list[int]] = {}
    for record in records:
        seen = by_phase.setdefault(record["phase"], record["optimizer_state_bytes"])
        assert seen == record["optimizer_state_bytes"], record
    return by_phase


def planned_state_bytes(world_size: int, *job_args: str) -> dict[int, list[int]]:
    """Phase -> optimizer state bytes per rank, as ``titan-phases plan`` predicts them."""
    from titan_phases.config import parse_job_config
    from titan_phases.plan import build_plan
    from titan_phases.schedule import load_and_validate
    from titan_phases.train_spec import register_train_specs

    register_train_specs()
    job_config = parse_job_config(list(job_args))
    resolved = load_and_validate(job_config)
    plan = build_plan(job_config, resolved, world_size)
    return {k: [m.optimizer_state for m in p.memory] for k, p in enumerate(plan.phases)}
