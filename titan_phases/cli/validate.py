"""``titan-phases validate``: the job checked as ``run_train.sh`` and every training rank check
it (:func:`titan_phases.prepare.check_parsed`), its phase table, and what the job would
resume."""

from __future__ import annotations

import argparse
from typing import Any, TYPE_CHECKING

from titan_phases.cli.common import (
    add_job_command,
    EXIT_OK,
    InvalidInput,
    parse_job,
    print_warnings,
    summary,
)

if TYPE_CHECKING:
    from titan_phases.config import UnknownKey
    from titan_phases.config.parsing import ConfigNotice
    from titan_phases.schedule import ResolvedSchedule


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = add_job_command(
        subcommands, "validate", "validate the job's schedule and print the phase table",
        "Check the job as the training ranks check it before they start: the job config, what "
        "it reads (tokenizer, datasets, initial weights) and its schedule (file, inline or "
        "generated) against the model (built on the meta device); print the phase table; on "
        "errors, list them all and exit 2.",
        "[-h] [--job.config_file JOB.toml] [torchtitan flags ...]",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from titan_phases.prepare import check_parsed, input_error
    from titan_phases.schedule.table import phase_rows, render_table

    unknown: list[UnknownKey] = []
    notices: list[ConfigNotice] = []
    job_config = parse_job(rest, unknown, notices, require_phases=False)
    resolved, problems, schedule_problems = check_parsed(rest, job_config, unknown, notices)
    if problems or schedule_problems:
        raise input_error(problems, schedule_problems)
    if resolved is None:
        _check_resume(job_config, None)
        print(f"OK: model.name = {job_config.model.name!r} has no phases: the job runs "
              "torchtitan's stock Trainer, every parameter trains")
        return EXIT_OK
    print_warnings(resolved.warnings)
    resumes = _check_resume(job_config, resolved)
    print(render_table(phase_rows(resolved, job_config)))
    print(summary(resolved))
    if resumes is not None:
        print(f"resumes {resumes}")
    return EXIT_OK


def _check_resume(job_config: Any, resolved: ResolvedSchedule | None) -> str | None:
    """What the job would resume, checked as ``run_train.sh`` checks it before torchrun
    starts (the ``[pretrained]`` recipe included); raises InvalidInput."""
    from titan_phases.prepare import check_start

    start = check_start(job_config, resolved)
    if start.problem is not None:
        raise InvalidInput(start.problem)
    return start.resumes
