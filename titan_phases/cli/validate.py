"""``titan-phases validate``: the job's schedule checked against the job config and the model,
its phase table, and what the job would resume."""

from __future__ import annotations

import argparse
from typing import Any, TYPE_CHECKING

from titan_phases.cli.common import (
    add_job_command,
    EXIT_OK,
    InvalidInput,
    print_warnings,
    resolve_job,
    summary,
)

if TYPE_CHECKING:
    from titan_phases.schedule import ResolvedSchedule


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = add_job_command(
        subcommands, "validate", "validate the job's schedule and print the phase table",
        "Load the job's schedule (file, inline or generated), check it against the job config "
        "and the model (built on the meta device) and print the phase table; on errors, list "
        "them all and exit 2.",
        "[-h] [--job.config_file JOB.toml] [torchtitan flags ...]",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from titan_phases.schedule.table import phase_rows, render_table

    job_config, resolved = resolve_job(rest)
    print_warnings(resolved.warnings)
    resumes = _check_resume(job_config, resolved)
    print(render_table(phase_rows(resolved, job_config)))
    print(summary(resolved))
    if resumes is not None:
        print(f"resumes {resumes}")
    return EXIT_OK


def _check_resume(job_config: Any, resolved: ResolvedSchedule) -> str | None:
    """What the job would resume, checked as ``run_train.sh`` checks it before torchrun
    starts (the ``[pretrained]`` recipe included); raises InvalidInput."""
    from titan_phases.prepare import check_start

    start = check_start(job_config, resolved)
    if start.problem is not None:
        raise InvalidInput(start.problem)
    return start.resumes
