"""``python -m titan_phases.prepare``: what happens once, before torchrun starts any rank.

Runs the same input check as every rank of ``python -m titan_phases.train`` and ``titan-phases
validate`` (:func:`check_input`: the job config, the command line, what the job reads and the
schedule), so that ``run_train.sh`` reports bad input once and exits with code 2 before torchrun
starts; builds the embedded corpora and tokenizer
(:mod:`titan_phases.data.assets`) when the job uses them; checks what the job would load
(:func:`check_start`: the checkpoint it resumes, or its initial weights), as every rank
will, so that a checkpoint the job cannot load is also refused with exit code 2 before any
rank starts (file sizes only: the ranks hash the files, shared out among them, and fall back
from a damaged checkpoint themselves); and prints the ``[pretrained]`` recipe to run first
when the job's initial checkpoint is missing and the recipe writes exactly that path (nothing
otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torchtitan.config import JobConfig
from torchtitan.distributed import ParallelDims
from torchtitan.protocols import model_converter
from torchtitan.protocols.train_spec import get_train_spec, TrainSpec
from torchtitan.tools.logging import logger as torchtitan_logger

from titan_phases.components.checkpointing.integrity import verify as verify_checkpoint
from titan_phases.components.checkpointing.resume import resume_report
from titan_phases.components.phase_controller import build_phase_controller
from titan_phases.config import (
    CommandLineError,
    CUSTOM_CONFIG_MODULE,
    parse_job_config,
    PretrainedStage,
    UnknownKey,
)
from titan_phases.config.parsing import ConfigNotice, names_custom_config_module, written_keys
from titan_phases.data.assets import ensure_assets
from titan_phases.data.availability import missing_inputs
from titan_phases.data.datasets import uses_embedded_assets
from titan_phases.runtime.process_exit import EXIT_INVALID_INPUT
from titan_phases.schedule import load_and_validate, ResolvedSchedule, ScheduleError
from titan_phases.schedule.errors import Problem, unknown_key_problems
from titan_phases.schedule.model_info import meta_model, train_spec_of
from titan_phases.train_spec import is_phased, register_train_specs, SPEC_SUFFIX


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


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def _custom_config_module_problems(
    argv: list[str], job_config: JobConfig, phased: bool, source: str
) -> list[Problem]:
    """The ranks' own parse (torchtitan's ``ConfigManager`` in ``torchtitan.train.main``) reads
    the job without the module that :func:`parse_job_config` adds for this check: a phased
    model, or any ``[phases]`` or ``[pretrained]`` key, then stops every rank."""
    key = "job.custom_config_module"
    if names_custom_config_module(argv):
        if phased and not hasattr(job_config, "phases"):
            return [Problem(
                source, None, key,
                f"{job_config.job.custom_config_module!r} defines no [phases] section, which "
                f"model.name = {job_config.model.name!r} (a phased model) needs",
                f"use {CUSTOM_CONFIG_MODULE!r}, or subclass its JobConfig",
            )]
        return []
    needing = [k for section in ("phases", "pretrained") for k in written_keys(argv, section)]
    if not (phased or needing):
        return []
    why = (f"stop on its [phases] and [pretrained] keys ({_shown(needing)})" if needing
           else f"model.name = {job_config.model.name!r}, a phased model, finds no [phases]")
    return [Problem(
        source, None, key,
        "not set: this check adds it, but the training ranks parse the job as torchtitan does, "
        f"without it, and {why}",
        f"add custom_config_module = {CUSTOM_CONFIG_MODULE!r} under [job] (or pass "
        f"--job.custom_config_module {CUSTOM_CONFIG_MODULE})",
    )]


def _phased_name(name: str) -> str | None:
    """The registered phased spec of the model ``name``, by the ``<name>_phases`` convention."""
    try:
        return f"{name}{SPEC_SUFFIX}" if is_phased(get_train_spec(f"{name}{SPEC_SUFFIX}")) else None
    except (ValueError, ImportError):
        return None


def _not_phased_problems(argv: list[str], job_config: JobConfig, source: str) -> list[Problem]:
    """A model without phases runs torchtitan's stock Trainer, which trains every parameter: the
    job's ``[phases]`` settings (any key of its TOML's ``[phases]`` table, an empty table, or a
    ``--phases.*`` flag) would be ignored."""
    given = written_keys(argv, "phases")
    if not given:
        return []
    name = job_config.model.name
    phased = _phased_name(name)
    use = (
        f"use model.name = {phased!r} (the same model, phased)" if phased
        else f"register a phased spec of it, register_train_spec('{name}{SPEC_SUFFIX}', "
             f"phased(get_train_spec({name!r}))) with titan_phases.train_spec.phased, from "
             "experimental.custom_import, and use that name"
    )
    return [Problem(
        source, None, "model.name",
        f"{name!r} is not a phased model: it would run torchtitan's stock Trainer and train "
        f"every parameter, ignoring the [phases] settings ({_shown(given)})",
        f"{use}; or remove the [phases] settings to train it as stock torchtitan does",
    )]


def _machine() -> str:
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()}, SM{major}{minor}"


@contextlib.contextmanager
def _torchtitan_quiet() -> Iterator[None]:
    # The converters log what they enable; the ranks' Trainer builds them again and logs it.
    disabled = torchtitan_logger.disabled
    torchtitan_logger.disabled = True
    try:
        yield
    finally:
        torchtitan_logger.disabled = disabled


def _converter_problems(job_config: JobConfig, source: str) -> list[Problem]:
    """``model.converters`` that do not exist, or that cannot run here: each is built as
    torchtitan's Trainer builds it (its constructor checks the GPU, torchao and the settings).

    Relies on torchtitan's private converter registry
    (``torchtitan.protocols.model_converter._registry_model_converter_cls``) and builds each
    converter with a ParallelDims of the configured degrees (``dp_shard = -1`` counted as 1),
    not the ranks' world size."""
    names = list(job_config.model.converters)
    if not names:
        return []
    registry = model_converter._registry_model_converter_cls
    problems = []
    for name in names:
        if name not in registry:
            close = difflib.get_close_matches(name, list(registry), n=1, cutoff=0.3)
            problems.append(Problem(
                source, None, "model.converters",
                f"{name!r} is not a registered model converter",
                (f"did you mean {close[0]!r}? " if close else "")
                + f"registered: {', '.join(sorted(registry))}",
            ))
    if problems:
        return problems
    p = job_config.parallelism
    degrees = dict(dp_replicate=p.data_parallel_replicate_degree,
                   dp_shard=max(p.data_parallel_shard_degree, 1),
                   cp=p.context_parallel_degree, tp=p.tensor_parallel_degree,
                   pp=p.pipeline_parallel_degree, ep=p.expert_parallel_degree,
                   etp=p.expert_tensor_parallel_degree)
    world = (degrees["dp_replicate"] * degrees["dp_shard"] * degrees["cp"] * degrees["tp"]
             * degrees["pp"])
    try:
        parallel_dims = ParallelDims(**degrees, world_size=world)
    except (AssertionError, ValueError):
        return []  # a layout problem: the converters cannot be built to check them
    for name in names:
        try:
            with _torchtitan_quiet():
                registry[name](job_config, parallel_dims)
        except Exception as exc:  # a converter checks its needs by raising whatever it likes
            hint = "remove it from model.converters, or run where it is supported"
            if "float8" in name:
                hint += (" (float8 needs an NVIDIA GPU with SM89 or newer, or float8.emulate = "
                         "true without compile, and torchao installed)")
            problems.append(Problem(
                source, None, "model.converters",
                f"{name!r} cannot run on this machine ({_machine()}): "
                f"{type(exc).__name__}: {exc}", hint,
            ))
    return problems


def _initial_load_problems(job_config: JobConfig, source: str) -> list[Problem]:
    """torchtitan loads nothing without checkpointing, ``initial_load_path`` included: a
    fine-tune would train from random weights without a word."""
    checkpoint = job_config.checkpoint
    if checkpoint.enable or not checkpoint.initial_load_path:
        return []
    return [Problem(
        source, None, "checkpoint.initial_load_path",
        f"{checkpoint.initial_load_path!r} would not be loaded: checkpointing is off "
        "(checkpoint.enable = false), and torchtitan then loads nothing, so the job would "
        "train from random weights",
        "turn checkpointing on to load it (drop --checkpoint.no-enable, or set [checkpoint] "
        "enable = true); to train from random weights, clear the path "
        "(--checkpoint.initial_load_path '')",
    )]


def job_problems(argv: list[str], job_config: JobConfig, spec: TrainSpec) -> list[Problem]:
    """What the job's ranks would stop on, or silently do otherwise, beyond the schedule: the
    custom config module the ranks need, ``[phases]`` settings for a model without phases, a
    tokenizer or dataset that is not there, model converters that do not exist or cannot run
    here, and initial weights that would not be loaded."""
    source = job_config.job.config_file or "<command line>"
    phased = is_phased(spec)
    problems = _custom_config_module_problems(argv, job_config, phased, source)
    if not phased:
        problems += _not_phased_problems(argv, job_config, source)
    problems += [Problem(source, None, m.key, m.message, m.hint)
                 for m in missing_inputs(job_config, spec)]
    problems += _converter_problems(job_config, source)
    problems += _initial_load_problems(job_config, source)
    return problems


def check_parsed(
    argv: list[str],
    job_config: JobConfig,
    unknown: Sequence[UnknownKey] = (),
    notices: Sequence[ConfigNotice] = (),
) -> tuple[ResolvedSchedule | None, list[Problem], list[Problem]]:
    """Check a job parsed from ``argv`` (by :func:`parse_job_config`, which collected its TOML's
    ``unknown`` keys and its ``notices``): ``(its resolved schedule or None for a model without
    phases, the job's problems, the schedule's problems)``. The job's problems are the unknown
    keys, the model's TrainSpec that cannot be found and :func:`job_problems`. A schedule file
    given on the command line in place of the TOML's inline schedule is among the schedule's
    warnings."""
    problems = unknown_key_problems(unknown)
    try:
        spec = train_spec_of(job_config, job_config.job.config_file or "<command line>")
    except ScheduleError as exc:
        return None, problems + exc.problems, []
    problems += job_problems(argv, job_config, spec)
    if not is_phased(spec) or not hasattr(job_config, "phases"):
        return None, problems, []
    try:
        resolved = load_and_validate(job_config)
    except ScheduleError as exc:
        return None, problems, exc.problems
    return with_notices(resolved, notices), problems, []


def with_notices(resolved: ResolvedSchedule, notices: Sequence[ConfigNotice]) -> ResolvedSchedule:
    """``resolved`` with the job config's notices first among its warnings."""
    if not notices:
        return resolved
    ahead = tuple(Problem(n.file, None, n.key, n.message) for n in notices)
    return dataclasses.replace(resolved, warnings=(*ahead, *resolved.warnings))


def input_error(problems: list[Problem], schedule_problems: list[Problem]) -> ScheduleError:
    """One report of the job's and the schedule's problems (:func:`check_parsed`)."""
    what = "job config or schedule" if problems and schedule_problems else (
        "job config" if problems else "phase schedule")
    return ScheduleError(problems + schedule_problems, what)


def check_input(
    argv: list[str],
) -> tuple[JobConfig | None, ResolvedSchedule | None, str | None]:
    """Parse the job config and check it (:func:`check_parsed`): ``(job config, its resolved
    schedule or None for a model without phases, None)``, or ``(None, None, what is wrong)``,
    every problem at once. Needs no process group and no accelerator; call
    :func:`register_train_specs` first.
    """
    unknown: list[UnknownKey] = []
    notices: list[ConfigNotice] = []
    try:
        job_config = parse_job_config(argv, require_phases=False, unknown_keys=unknown,
                                      notices=notices)
    except (OSError, ValueError) as exc:
        return None, None, f"titan_phases: invalid job config, nothing was run: {exc}"
    except CommandLineError as exc:
        return None, None, f"titan_phases: invalid command line, nothing was run:\n{exc}"
    resolved, problems, schedule_problems = check_parsed(argv, job_config, unknown, notices)
    if problems or schedule_problems:
        what = "job or schedule" if schedule_problems else "job config"
        report = input_error(problems, schedule_problems)
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
