"""Run one benchmark job with torchrun and read back what it measured.

Every job is ``python -m titan_phases.train`` (the CPU/gloo runtime; a model whose TrainSpec is
not phased runs on torchtitan's stock Trainer), with the base config ``bench/configs/job.toml``
and per-job overrides on the command line.

Sources, per step (rank 0; under pipeline parallelism the first rank of the last stage, which
torchtitan logs from):

* TensorBoard events, written by torchtitan's own ``MetricsProcessor`` in stock and phased jobs
  alike: ``time_metrics/end_to_end(s)`` and ``memory/max_reserved(GiB)`` (peak RSS on CPU);
* ``metrics.jsonl`` (phased jobs): ``phase``, ``step_time_s``, ``trainable_params`` and the
  bytes of params, fp32 masters, grads and optimizer state each rank holds, as exact integers
  (TensorBoard stores float32);
* jobs that log every rank (:attr:`Job.log_every_rank`): each rank's peak RSS per step, from
  torchtitan's console line of that step (``memory: 0.84GiB(3.49%)``, on CPU the peak RSS
  since the last log), which every rank prints and TensorBoard holds for one rank only.

Per transition, also from ``metrics.jsonl``: thaw + rebuild time (:func:`thaw_rebuild_seconds`).
Transitions run at the start of step ``S + 1``, before it trains. The ``train`` record of step
``S`` is stamped (``time``) as torchtitan logs the step; the ``transition`` record after step
``S`` once the next phase's params are thawed and its optimizer and LR schedulers rebuilt. With
checkpointing and validation off, the time between the two is thaw + rebuild plus a few Python
statements of torchtitan's loop (and the console line of step ``S``).

**Limitations**
Per-rank RSS comes from console text: torchtitan 0.2.2's step line, prefixed by torchrun's
``--tee`` with ``[<role><local rank>]:`` (one node, so the local rank is the rank), read to
torchtitan's 2 decimals of GiB. A job runs once into an empty dump folder. Should
``metrics.jsonl`` hold several runs (a resumed job appends), it is read by the file's one rule
(:func:`titan_phases.components.metrics_file.read_metrics`): the last record of a step or
transition wins.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.analysis import HELD_KINDS, StepRecord
from titan_phases.components.metrics_file import Metrics, METRICS_FILE, read_metrics

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "bench" / "configs" / "job.toml"
_TIME = "time_metrics/end_to_end(s)"
_RSS = "memory/max_reserved(GiB)"
# torchtitan's console line of a step, as torchrun --tee prefixes it with the local rank.
_RANK_STEP_LINE = re.compile(
    r"^\[[A-Za-z_]*(?P<rank>\d+)\]:.* - INFO - step:\s*(?P<step>\d+)\s.*"
    r"memory:\s*(?P<gib>[0-9.]+)GiB"
)


@dataclass(frozen=True)
class Job:
    """A job to run: which model, how long, and (phased jobs) which schedule TOML.

    ``args``: torchtitan arguments after the others, overriding them and the base config (a
    parallel layout, a smaller batch, a generated cycle). ``log_every_rank``: keep every rank's
    console output (prefixed with its rank) in the job's log, for per-rank peak RSS.
    """

    label: str
    model: str
    flavor: str
    steps: int
    schedule: str | None = None
    custom_import: str | None = None
    args: tuple[str, ...] = ()
    log_every_rank: bool = False


@dataclass(frozen=True)
class JobOutput:
    """What a job measured.

    Attributes:
        records: one per logged step.
        thaw_rebuild_s: ``{phase entered: thaw + rebuild seconds}`` (empty for stock jobs).
        wall_s: the job's wall time, torchrun start to exit.
    """

    records: list[StepRecord]
    thaw_rebuild_s: dict[int, float]
    wall_s: float


def job_args(job: Job, dump: Path, tokenizer: Path) -> list[str]:
    """torchtitan arguments of ``job`` (its schedule file is ``<dump>.schedule.toml``)."""
    args = [
        "--job.config_file", str(BASE_CONFIG), "--job.dump_folder", str(dump),
        "--model.hf_assets_path", str(tokenizer), "--model.name", job.model,
        "--model.flavor", job.flavor, "--training.steps", str(job.steps),
    ]
    if job.custom_import:
        args += ["--experimental.custom_import", job.custom_import]
    if job.schedule is not None:
        args += ["--phases.schedule_file", str(schedule_path(dump))]
    return args + list(job.args)


def command(job: Job, dump: Path, tokenizer: Path, nproc: int) -> list[str]:
    """The torchrun command line of ``job``, printing rank 0's output only, or with
    ``job.log_every_rank`` every rank's, each line prefixed with its rank."""
    ranks = (["--local-ranks-filter", ",".join(str(r) for r in range(nproc)), "--tee", "3"]
             if job.log_every_rank else ["--local-ranks-filter", "0"])
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", *ranks,
        "-m", "titan_phases.train", *job_args(job, dump, tokenizer),
    ]


def rank_peak_rss(log: str, nproc: int) -> dict[int, tuple[float, ...]]:
    """``{step: every rank's peak RSS in GiB}`` from the console ``log`` of a job that logs
    every rank; a step that some rank did not log is an error."""
    by_step: dict[int, dict[int, float]] = {}
    for line in log.splitlines():
        if match := _RANK_STEP_LINE.match(line):
            by_step.setdefault(int(match["step"]), {})[int(match["rank"])] = float(match["gib"])
    result = {}
    for step, ranks in sorted(by_step.items()):
        if sorted(ranks) != list(range(nproc)):
            raise ValueError(f"step {step} was logged by ranks {sorted(ranks)}, not by all "
                             f"{nproc}")
        result[step] = tuple(ranks[r] for r in range(nproc))
    return result


def schedule_path(dump: Path) -> Path:
    return dump.with_name(dump.name + ".schedule.toml")


def write_schedule(job: Job, dump: Path) -> None:
    """Write the schedule file ``job_args`` points to (phased jobs)."""
    dump.parent.mkdir(parents=True, exist_ok=True)
    if job.schedule is not None:
        schedule_path(dump).write_text(job.schedule)


def run(job: Job, dump: Path, tokenizer: Path, nproc: int = 2, timeout: float = 600) -> JobOutput:
    """Run ``job`` into the empty folder ``dump``; raise with the log's tail if it fails."""
    write_schedule(job, dump)
    log_path = dump.with_name(dump.name + ".log")
    # One thread per rank: the ranks share the machine's cores, as in the test suite.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run(
            command(job, dump, tokenizer, nproc), cwd=REPO, env=env, stdout=log,
            stderr=subprocess.STDOUT, timeout=timeout, check=False,
        )
    wall = time.monotonic() - start
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        raise RuntimeError(f"{job.label} failed (exit {proc.returncode}), log {log_path}:\n{tail}")
    metrics = job_metrics(dump)
    rss = rank_peak_rss(log_path.read_text(), nproc) if job.log_every_rank else {}
    return JobOutput(read_records(dump, metrics, rss), thaw_rebuild_seconds(metrics), wall)


def _tensorboard_scalars(dump: Path) -> dict[int, dict[str, float]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = sorted(dump.glob("tb/**/events.out.tfevents.*"))
    if len(files) != 1:
        raise RuntimeError(f"expected one TensorBoard event file under {dump}/tb, found {files}")
    scalars: dict[int, dict[str, float]] = {}
    for event in EventFileLoader(str(files[0])).Load():
        for value in event.summary.value:
            number = value.tensor.float_val[0] if value.HasField("tensor") else value.simple_value
            scalars.setdefault(event.step, {})[value.tag] = float(number)
    return scalars


def job_metrics(dump: Path) -> Metrics:
    """What the job's ``metrics.jsonl`` holds (nothing for stock jobs, which write none)."""
    return read_metrics(dump) if (dump / METRICS_FILE).exists() else Metrics()


def thaw_rebuild_seconds(metrics: Metrics) -> dict[int, float]:
    """``{phase entered: seconds from step S's train record to the transition after step S}``."""
    result: dict[int, float] = {}
    for phase, transition in metrics.transitions.items():
        after_step = transition["step"]
        if after_step not in metrics.train:
            raise ValueError(
                f"metrics.jsonl has a transition after step {after_step} but no such step"
            )
        result[phase] = transition["time"] - metrics.train[after_step]["time"]
    return result


def read_records(
    dump: Path, metrics: Metrics | None = None,
    rank_rss: dict[int, tuple[float, ...]] | None = None,
) -> list[StepRecord]:
    """One :class:`StepRecord` per logged step of the job in ``dump``.

    ``metrics``: the job's ``metrics.jsonl`` when already read (:func:`job_metrics`).
    ``rank_rss``: every rank's peak RSS per step (:func:`rank_peak_rss`), when logged.
    """
    steps = (job_metrics(dump) if metrics is None else metrics).train
    records = []
    for step, scalars in sorted(_tensorboard_scalars(dump).items()):
        if _TIME not in scalars:
            continue
        phased = steps.get(step)
        records.append(
            StepRecord(
                step=step,
                time_s=scalars[_TIME],
                rss_gib=scalars[_RSS],
                phase=phased["phase"] if phased else 0,
                metrics_s=scalars[_TIME] - phased["step_time_s"] if phased else None,
                state_bytes=tuple(phased["optimizer_state_bytes"]) if phased else (),
                trainable=phased["trainable_params"] if phased else None,
                held={kind: tuple(phased[kind]) for kind in HELD_KINDS
                      if phased and kind in phased},
                rank_rss_gib=(rank_rss or {}).get(step, ()),
            )
        )
    return records
