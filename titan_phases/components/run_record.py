"""A run folder that explains itself: what each start of a job ran, written into its dump folder.

At every start (a fresh run or a resume), :func:`write_run_record` adds one folder
``<dump_folder>/run/start-<N>/`` (N = 1, 2, ...; earlier starts are never overwritten) with

* ``schedule.toml``: the resolved schedule (every phase, those beyond ``max_depth`` included),
  a schedule file that ``titan-phases validate --phases.schedule_file ...`` accepts with the
  same job; the job's ``[phases]`` settings are in its header comments;
* ``phases.txt``: the ``titan-phases show --params`` table and the schedule's warnings;
* ``versions.json``: titan_phases (version, and git commit when run from a checkout), torch,
  torchtitan and Python;

and appends one JSON line to ``<dump_folder>/run/starts.jsonl``: the start's number, time,
folder, schedule source and the checkpoint it resumed from (null for a fresh start).
:func:`startup_summary` is the one INFO message a run logs about its schedule at start.

Only rank 0 writes. **Limitations** The git commit is read with ``git`` from the installed
package's directory; an installed wheel, or a machine without git, records none. A schedule
generated with ``reinit_optimizer`` / ``reinit_lr_scheduler`` is written with those in its
phases, so validating the file needs a job without them (as for ``titan-phases generate``).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch
from torchtitan.config import JobConfig

import titan_phases
from titan_phases.config.toml_writer import dumps, value_to_toml
from titan_phases.runtime.ranks import is_rank0
from titan_phases.schedule import ResolvedSchedule
from titan_phases.schedule.table import phase_rows, render_table

__all__ = ["RUN_DIR", "STARTS_LOG", "startup_summary", "versions", "write_run_record"]

RUN_DIR = "run"
STARTS_LOG = "starts.jsonl"
_START_DIR = re.compile(r"start-(\d+)")
# The [phases] settings that shape a run beyond its schedule's phases.
_SETTINGS = ("lr_scale", "max_depth", "transition_mode", "patience", "min_delta", "mode",
             "restore_best", "apply_lambdas_new_pgs", "base_max_lr", "allow_untested")


def _git_commit(directory: Path) -> dict[str, Any] | None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    """The versions of what a run trains with."""
    return {
        "titan_phases": {"version": titan_phases.__version__,
                         "git": _git_commit(Path(titan_phases.__file__).resolve().parent)},
        "torch": torch.__version__,
        "torchtitan": _distribution_version("torchtitan"),
        "python": platform.python_version(),
    }


def _settings(job_config: JobConfig) -> dict[str, Any]:
    return {name: getattr(job_config.phases, name) for name in _SETTINGS}


def _schedule_toml(resolved: ResolvedSchedule, job_config: JobConfig) -> str:
    phases = resolved.phases + resolved.dropped_phases
    comments = {str(p.index): f"phase {p.index}: {len(names)} tensors"
                for p, names in zip(resolved.phases, resolved.phase_params)}
    comments.update({str(p.index): f"phase {p.index}: beyond max_depth, not run"
                     for p in resolved.dropped_phases})
    settings = "\n".join(f"  {key} = {value_to_toml(value)}"
                         for key, value in _settings(job_config).items())
    header = (
        f"The resolved phase schedule of this run: {resolved.source}\n"
        "Validate or reuse it with [phases] schedule_file = \"<this file>\" and the same job"
        + (" without reinit_optimizer / reinit_lr_scheduler (they are in the phases below)"
           if job_config.phases.reinit_optimizer or job_config.phases.reinit_lr_scheduler
           else "")
        + f".\nThe run's [phases] settings:\n{settings}\nFormat: docs/schedule.md\n"
    )
    return dumps({str(p.index): p.to_raw() for p in phases}, header=header, comments=comments)


def _phases_text(resolved: ResolvedSchedule, job_config: JobConfig) -> str:
    lines = [render_table(phase_rows(resolved, job_config), with_params=True)]
    lines += [f"warning: {warning}" for warning in resolved.warnings]
    return "\n".join(lines) + "\n"


def _next_start(run_dir: Path) -> int:
    taken = [int(m.group(1)) for p in run_dir.iterdir() if (m := _START_DIR.fullmatch(p.name))]
    return max(taken, default=0) + 1


def write_run_record(
    dump_folder: str | os.PathLike,
    resolved: ResolvedSchedule,
    job_config: JobConfig,
    resumed_from: str | None = None,
) -> Path | None:
    """Write this start's record (see the module docstring); return its folder, or None on
    ranks other than 0, which write nothing.

    Args:
        dump_folder: the job's ``[job] dump_folder``.
        resolved: the job's schedule, from :func:`titan_phases.schedule.load_and_validate`.
        job_config: the job's config (for the ``[phases]`` settings and the table).
        resumed_from: the checkpoint this start loads, None for a fresh start.
    """
    if not is_rank0():
        return None
    run_dir = Path(dump_folder) / RUN_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    start = _next_start(run_dir)
    start_dir = run_dir / f"start-{start}"
    # exist_ok=False: a start never writes over another's record.
    start_dir.mkdir()
    (start_dir / "schedule.toml").write_text(_schedule_toml(resolved, job_config))
    (start_dir / "phases.txt").write_text(_phases_text(resolved, job_config))
    (start_dir / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")
    entry = {
        "start": start,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dir": start_dir.name,
        "resumed_from": None if resumed_from is None else str(resumed_from),
        "schedule_source": resolved.source,
        "phases": resolved.num_phases,
        "settings": _settings(job_config),
    }
    with open(run_dir / STARTS_LOG, "a") as log:
        log.write(json.dumps(entry) + "\n")
    return start_dir


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def _init(init: Any) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in init.init_args.items())
    return f"{_short(init.class_path)}({args})"


def startup_summary(resolved: ResolvedSchedule, job_config: JobConfig) -> str:
    """What the run's phases train, when they end and with which optimizer and LR scheduler;
    one message (several lines) for the log at start."""
    total = sum(resolved.param_numels.values()) or 1
    kind = "generated" if resolved.generated else "explicit"
    lines = [
        f"Phase schedule: {resolved.num_phases} phase(s), {kind} ({resolved.source}); "
        f"transitions: {job_config.phases.effective_transition_mode(job_config.validation.enable)}"
        f"; apply_lambdas_new_pgs = {str(resolved.apply_lambdas_new_pgs).lower()}"
    ]
    for row, phase in zip(phase_rows(resolved, job_config), resolved.phases):
        k = phase.index
        changes = []
        if phase.new_optimizer is not None:
            changes.append(f"new optimizer {_init(phase.new_optimizer)}")
        scheduler = phase.new_lr_scheduler
        if scheduler is not None:
            plan = resolved.plan(k).lr_scheduler
            start = ("current lrs" if plan.init_pg_lrs is None
                     else "lrs [" + ", ".join(f"{lr:.3g}" for lr in plan.init_pg_lrs) + "]")
            changes.append(f"new scheduler {_init(scheduler)} from {start}")
        if not changes:
            changes.append(f"optimizer {row['optimizer']}, scheduler {row['scheduler']}")
        trains = "trains" if k == 0 else "thaws"
        lines.append(
            f"  phase {k}: {trains} {row['tensors']} tensor(s), {row['elements']:,} elements "
            f"({100 * row['elements'] / total:.1f}%: {', '.join(phase.params)}); "
            f"lr {row['lr']:.3g}; {'; '.join(changes)}; ends: {row['transition']}"
        )
    if resolved.frozen_params:
        elements = sum(resolved.param_numels[n] for n in resolved.frozen_params)
        lines.append(f"  never thawed: {len(resolved.frozen_params)} tensor(s), {elements:,} "
                     f"elements ({100 * elements / total:.1f}%)")
    return "\n".join(lines)
