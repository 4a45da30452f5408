"""``python -m titan_phases.prepare``: what happens once, before torchrun starts any rank.

Runs the same input check as every rank of ``python -m titan_phases.train`` (:func:`check_input`:
the job config, the command line and the schedule), so that ``run_train.sh`` reports bad input
once and exits with code 2 before torchrun starts; builds the embedded corpora and tokenizer
(:mod:`titan_phases.data.assets`) when the job uses them; checks what the job would load
(:func:`check_start`: the checkpoint it resumes, or its initial weights), as every rank
will, so that a checkpoint the job cannot load is also refused with exit code 2 before any
rank starts (file sizes only: the ranks hash the files, shared out among them, and fall back
from a damaged checkpoint themselves); and prints the ``[pretrained]`` recipe to run first
when the job's initial checkpoint is missing and the recipe writes exactly that path (nothing
otherwise).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass

from torchtitan.config import JobConfig

from titan_phases.components.checkpointing.integrity import verify as verify_checkpoint
from titan_phases.components.checkpointing.resume import resume_report
from titan_phases.components.phase_controller import build_phase_controller
from titan_phases.config import CommandLineError, parse_job_config, PretrainedStage, UnknownKey
from titan_phases.data.assets import ensure_assets
from titan_phases.data.datasets import uses_embedded_assets
from titan_phases.runtime.process_exit import EXIT_INVALID_INPUT
from titan_phases.schedule import load_and_validate, ResolvedSchedule, ScheduleError
from titan_phases.schedule.errors import unknown_key_problems
from titan_phases.schedule.model_info import meta_model, train_spec_of
from titan_phases.train_spec import is_phased, register_train_specs


class RecipeError(ValueError):
    """The ``[pretrained]`` recipe cannot produce the job's initial checkpoint."""


def recipe_output(recipe: str) -> str:
    """The checkpoint a recipe job config writes: its last step's folder."""
    config = parse_job_config(["--job.config_file", recipe], require_phases=False)
    return os.path.join(
        config.job.dump_folder, config.checkpoint.folder, f"step-{config.training.steps}"
    )


def pending_recipe(initial_load_path: str | None, stage: PretrainedStage) -> str | None:
    """The recipe to run first, or None when nothing is missing or no recipe is set.

    Raises :class:`RecipeError` when the recipe does not exist or writes another checkpoint
    than ``initial_load_path``: running it would not produce the missing path (a typo in the
    path must not retrain anything).
    """
    if not initial_load_path or os.path.exists(initial_load_path) or not stage.recipe:
        return None
    where = f"[pretrained] recipe = {stage.recipe!r}"
    if not os.path.isfile(stage.recipe):
        raise RecipeError(
            f"{where} does not exist; it should be the job config that writes "
            f"[checkpoint] initial_load_path = {initial_load_path!r}"
        )
    try:
        produced = recipe_output(stage.recipe)
    except (OSError, ValueError, CommandLineError) as exc:
        raise RecipeError(f"{where} cannot be read: {exc}") from None
    if os.path.abspath(produced) != os.path.abspath(initial_load_path):
        raise RecipeError(
            f"[checkpoint] initial_load_path = {initial_load_path!r} does not exist, and "
            f"{where} writes {produced!r}, not that path, so it is not run. Correct "
            "initial_load_path (or the recipe's dump_folder, checkpoint.folder and "
            "training.steps)"
        )
    return stage.recipe


@dataclass(frozen=True)
class StartCheck:
    """What a job's start would load, checked before any rank starts."""

    recipe: str | None
    """The ``[pretrained]`` recipe to run first: it writes the missing initial checkpoint."""
    resumes: str | None
    """The checkpoint the job resumes (None: a fresh start)."""
    problem: str | None
    """What keeps the job from starting, or None."""
    what: str = "cannot resume"
    """The kind of problem, for the report: ``"invalid job config"`` for the recipe's."""


def check_start(
    job_config: JobConfig, resolved: ResolvedSchedule | None, checksums: bool = True
) -> StartCheck:
    """The recipe to run first, and what the job would resume and what keeps it from loading,
    checked in this one process as every rank checks it
    (:func:`~titan_phases.components.checkpointing.resume.resume_report`), with the model
    shapes taken from a meta-device model. ``resolved`` None (a model without phases) checks
    only the recipe. ``checksums=False`` checks the checkpoint's file sizes only: the ranks read
    and hash it anyway, shared out among them."""
    try:
        stage = getattr(job_config, "pretrained", PretrainedStage())
        recipe = pending_recipe(job_config.checkpoint.initial_load_path, stage)
    except RecipeError as exc:
        return StartCheck(None, None, str(exc), "invalid job config")
    checkpoint = job_config.checkpoint
    if resolved is None or not checkpoint.enable:
        return StartCheck(recipe, None, None)
    controller = build_phase_controller(resolved, job_config.phases, job_config.validation.enable)
    shapes = {name: tensor.shape for name, tensor in meta_model(job_config).state_dict().items()}
    resumes, problem = resume_report(
        checkpoint,
        os.path.join(job_config.job.dump_folder, checkpoint.folder),
        controller,
        functools.partial(verify_checkpoint, checksums=checksums),
        shapes,
        initial_weights_pending=recipe is not None,
    )
    return StartCheck(recipe, resumes, problem)


def check_input(
    argv: list[str],
) -> tuple[JobConfig | None, ResolvedSchedule | None, str | None]:
    """Parse the job config and validate its schedule: ``(job config, its resolved schedule or
    None for a model without phases, None)``, or ``(None, None, what is wrong)``.

    Unknown keys of the job TOML are reported together with the schedule's problems. Needs no
    process group and no accelerator; call :func:`register_train_specs` first.
    """
    unknown: list[UnknownKey] = []
    invalid = "titan_phases: invalid job config, nothing was run"
    try:
        job_config = parse_job_config(argv, require_phases=False, unknown_keys=unknown)
    except (OSError, ValueError) as exc:
        return None, None, f"{invalid}: {exc}"
    except CommandLineError as exc:
        return None, None, f"titan_phases: invalid command line, nothing was run:\n{exc}"
    problems = unknown_key_problems(unknown)
    schedule_problems = []
    resolved = None
    try:
        spec = train_spec_of(job_config)
    except ScheduleError as exc:
        problems += exc.problems
        spec = None
    if spec is not None and is_phased(spec):
        try:
            resolved = load_and_validate(job_config)
        except ScheduleError as exc:
            schedule_problems = exc.problems
    if problems or schedule_problems:
        what = "job or schedule" if schedule_problems else "job config"
        report = ScheduleError(
            problems + schedule_problems, "job config or schedule" if problems else "phase schedule"
        )
        return None, None, f"titan_phases: invalid {what}, nothing was run:\n{report}"
    return job_config, resolved, None


def main(argv: list[str] | None = None) -> int:
    register_train_specs()
    job_config, resolved, problem = check_input(sys.argv[1:] if argv is None else argv)
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_INVALID_INPUT
    if uses_embedded_assets(job_config):
        ensure_assets()
    # Sizes only: hashing a large checkpoint in this one process would delay every start.
    start = check_start(job_config, resolved, checksums=False)
    if start.problem is not None:
        print(f"titan_phases: {start.what}, nothing was run: {start.problem}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    if start.recipe:
        print(start.recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
