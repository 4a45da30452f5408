"""``python -m titan_phases.prepare``: what happens once, before torchrun starts any rank.

Runs the same input check as every rank of ``python -m titan_phases.train`` (:func:`check_input`:
the job config, the command line and the schedule), so that ``run_train.sh`` reports bad input
once and exits with code 2 before torchrun starts; builds the embedded corpora and tokenizer
(:mod:`titan_phases.data.assets`) when the job uses them; and prints the ``[pretrained]``
recipe to run first when the job's initial checkpoint is missing (nothing when there is none).
"""

from __future__ import annotations

import importlib
import os
import sys

from torchtitan.config import JobConfig
from torchtitan.protocols.train_spec import get_train_spec

from titan_phases.config import CommandLineError, parse_job_config, PretrainedStage, UnknownKey
from titan_phases.data.assets import ensure_assets
from titan_phases.data.datasets import uses_embedded_assets
from titan_phases.runtime.process_exit import EXIT_INVALID_INPUT
from titan_phases.schedule import load_and_validate, ScheduleError
from titan_phases.schedule.errors import unknown_key_problems
from titan_phases.train_spec import is_phased, register_train_specs


def pending_recipe(initial_load_path: str | None, stage: PretrainedStage) -> str | None:
    """The recipe to run first, or None when nothing is missing or nothing can produce it."""
    if not initial_load_path or os.path.exists(initial_load_path) or not stage.recipe:
        return None
    if not os.path.isfile(stage.recipe):
        raise FileNotFoundError(
            f"[pretrained] recipe = {stage.recipe!r} does not exist; it should be the job config "
            f"that writes [checkpoint] initial_load_path = {initial_load_path!r}"
        )
    return stage.recipe


def check_input(argv: list[str]) -> tuple[JobConfig | None, str | None]:
    """Parse the job config and validate its schedule; return it, or what is wrong with it.

    Unknown keys of the job TOML are reported together with the schedule's problems. Needs no
    process group and no accelerator; call :func:`register_train_specs` first.
    """
    unknown: list[UnknownKey] = []
    try:
        job_config = parse_job_config(argv, require_phases=False, unknown_keys=unknown)
        if job_config.experimental.custom_import:
            importlib.import_module(job_config.experimental.custom_import)
        spec = get_train_spec(job_config.model.name)
    except (OSError, ValueError, ImportError) as exc:
        return None, f"titan_phases: invalid job config, nothing was run: {exc}"
    except CommandLineError as exc:
        return None, f"titan_phases: invalid command line, nothing was run:\n{exc}"
    problems = unknown_key_problems(unknown)
    schedule_problems = []
    if is_phased(spec):
        try:
            load_and_validate(job_config)
        except ScheduleError as exc:
            schedule_problems = exc.problems
    if problems or schedule_problems:
        what = "job or schedule" if schedule_problems else "job config"
        report = ScheduleError(
            problems + schedule_problems, "job config or schedule" if problems else "phase schedule"
        )
        return None, f"titan_phases: invalid {what}, nothing was run:\n{report}"
    return job_config, None


def main(argv: list[str] | None = None) -> int:
    register_train_specs()
    job_config, problem = check_input(sys.argv[1:] if argv is None else argv)
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_INVALID_INPUT
    if uses_embedded_assets(job_config):
        ensure_assets()
    try:
        stage = getattr(job_config, "pretrained", PretrainedStage())
        recipe = pending_recipe(job_config.checkpoint.initial_load_path, stage)
    except FileNotFoundError as exc:
        print(f"titan_phases.prepare: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    if recipe:
        print(recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
