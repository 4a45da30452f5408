"""``titan-phases``: check, show, generate and import phase schedules without training, plan a
job's cost per phase, and plot a run's timeline.

Every subcommand that reads a job also takes torchtitan's own flags, recognised by the dot in
their name (``--job.config_file X --phases.lr_scale 0.1 ...``); they are parsed by torchtitan's
ConfigManager exactly as the trainer parses them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from titan_phases.config import CommandLineError, parse_job_config, UnknownKey
from titan_phases.interop.fts_import import convert_fts_schedule, FTS_BASE_MAX_LR, load_fts_yaml
from titan_phases.interop.hf_names import job_hf_names, to_titan_names
from titan_phases.interop.plot import plot_timeline, PlotUnavailable
from titan_phases.interop.timeline import read_timeline
from titan_phases.plan import build_plan, MeshError, render_plan
from titan_phases.prepare import check_start
from titan_phases.runtime.process_exit import EXIT_INVALID_INPUT
from titan_phases.schedule import load_and_validate, ResolvedSchedule, ScheduleError
from titan_phases.schedule.errors import Problem, Problems, unknown_key_problems
from titan_phases.schedule.table import phase_rows, render_table
from titan_phases.schedule.toml_writer import dumps
from titan_phases.train_spec import register_train_specs

EXIT_OK = 0

_EXIT_CODES = """\
exit codes:
  0  success
  1  unexpected internal error (a traceback is printed)
  2  invalid input: schedule or [phases] errors (all listed on stderr), a bad flag,
     a missing or malformed file, or an output file that exists without --force
"""

_JOB_ARGS = ("options with a dot are torchtitan flags, parsed as for training:\n"
             "  --job.config_file JOB.toml [--section.key value ...]")


class _InvalidInput(Exception):
    """A user error outside the schedule itself (files, flags)."""


def _parse_job(torchtitan_args: list[str], unknown_keys: list[UnknownKey] | None = None) -> Any:
    # As in titan_phases.train: the phased model names ("llama3_phases") must be registered.
    register_train_specs()
    try:
        return parse_job_config(torchtitan_args, unknown_keys=unknown_keys)
    except (FileNotFoundError, tomllib.TOMLDecodeError, ValueError) as e:
        raise _InvalidInput(f"cannot read the job config: {e}") from e
    except CommandLineError as e:
        raise _InvalidInput(f"invalid torchtitan flag:\n{e}") from e


def _print_warnings(warnings: tuple[Problem, ...] | list[Problem]) -> None:
    for problem in warnings:
        print(f"warning: {problem}", file=sys.stderr)


def _summary(resolved: ResolvedSchedule) -> str:
    kind = "generated" if resolved.generated else "explicit"
    summary = f"OK: {resolved.num_phases} phase(s), {kind} schedule ({resolved.source})"
    if resolved.frozen_params:
        summary += f"; {len(resolved.frozen_params)} parameter(s) never thawed"
    return summary


def _resolve_job(torchtitan_args: list[str]) -> tuple[Any, ResolvedSchedule]:
    """The job and its schedule; unknown job-config keys are reported with the schedule's
    problems, in one ScheduleError."""
    unknown: list[UnknownKey] = []
    job_config = _parse_job(torchtitan_args, unknown)
    problems = unknown_key_problems(unknown)
    try:
        resolved = load_and_validate(job_config)
    except ScheduleError as exc:
        what = "job config or schedule" if problems else "phase schedule"
        raise ScheduleError(problems + exc.problems, what) from None
    if problems:
        raise ScheduleError(problems, "job config")
    return job_config, resolved


def _check_resume(job_config: Any, resolved: ResolvedSchedule) -> str | None:
    """What the job would resume, checked as ``run_train.sh`` checks it before torchrun
    starts (the ``[pretrained]`` recipe included); raises _InvalidInput."""
    start = check_start(job_config, resolved)
    if start.problem is not None:
        raise _InvalidInput(start.problem)
    return start.resumes


def _validate(args: argparse.Namespace, rest: list[str]) -> int:
    job_config, resolved = _resolve_job(rest)
    _print_warnings(resolved.warnings)
    resumes = _check_resume(job_config, resolved)
    print(render_table(phase_rows(resolved, job_config)))
    print(_summary(resolved))
    if resumes is not None:
        print(f"resumes {resumes}")
    return EXIT_OK


def _show(args: argparse.Namespace, rest: list[str]) -> int:
    job_config, resolved = _resolve_job(rest)
    rows = phase_rows(resolved, job_config)
    if args.json:
        print(json.dumps({
            "source": resolved.source,
            "generated": resolved.generated,
            "phases": rows,
            "warnings": [str(w) for w in resolved.warnings],
        }, indent=2))
        return EXIT_OK
    _print_warnings(resolved.warnings)
    print(render_table(rows, with_params=args.params))
    return EXIT_OK


def _write(path: str, text: str, force: bool) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    out = Path(path)
    if out.exists() and not force:
        raise _InvalidInput(f"{out} exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)


def _generate(args: argparse.Namespace, rest: list[str]) -> int:
    job_config = _parse_job(rest)
    cfg = job_config.phases
    if cfg.schedule_file or cfg.schedule:
        print("warning: the job's explicit schedule is ignored; generating one from the model",
              file=sys.stderr)
        cfg.schedule_file, cfg.schedule = "", {}
    resolved = load_and_validate(job_config)
    _print_warnings(resolved.warnings)
    phases = resolved.phases + resolved.dropped_phases
    total = sum(resolved.param_numels.values()) or 1
    comments = {}
    for phase in phases:
        if phase.index < resolved.num_phases:
            names = resolved.phase_params[phase.index]
            elements = sum(resolved.param_numels[n] for n in names)
            comments[str(phase.index)] = (f"phase {phase.index}: {len(names)} tensors, "
                                          f"{elements:,} elements ({100 * elements / total:.1f}%)")
        else:
            comments[str(phase.index)] = f"phase {phase.index}: beyond max_depth = {cfg.max_depth}"
    header = (
        f"Phase schedule written by `titan-phases generate`, {resolved.source}\n"
        f"model {job_config.model.name} {job_config.model.flavor}, "
        f"blocks_per_phase = {cfg.blocks_per_phase}, transition_mode = "
        f"{cfg.effective_transition_mode(job_config.validation.enable)}, "
        f"training.steps = {job_config.training.steps}\n"
        f"Use it with [phases] schedule_file = \"<this file>\""
        + (" and without reinit_optimizer / reinit_lr_scheduler (they are written into the "
           "phases below)" if cfg.reinit_optimizer or cfg.reinit_lr_scheduler else "")
        + ".\nFormat: docs/schedule.md\n"
    )
    raw = {str(p.index): p.to_raw() for p in phases}
    _write(args.out, dumps(raw, header=header, comments=comments), args.force)
    print(render_table(phase_rows(resolved, job_config)), file=sys.stderr)
    return EXIT_OK


def _import_fts(args: argparse.Namespace, rest: list[str]) -> int:
    if rest and args.out == "-":
        raise _InvalidInput("validating against a job needs --out FILE, not stdout")
    if args.hf_names and not rest:
        raise _InvalidInput("--hf-names needs the job's flags (--job.config_file ...) to know "
                            "the model's parameter names")
    job_config = _parse_job(rest) if rest else None
    problems = Problems()
    raw = load_fts_yaml(args.schedule, problems)
    problems.raise_if_any()
    # With the job, patterns are converted against the names they are written in, so FTS's
    # start-anchored matches are kept exactly and its looser matches can be listed.
    from titan_phases.schedule.model_info import model_param_numels

    names = None
    if args.hf_names:
        hf_names = job_hf_names(job_config, source=args.schedule)
        names = list(hf_names)
    elif job_config is not None:
        names = list(model_param_numels(job_config, args.schedule))
    converted = convert_fts_schedule(
        raw, source=args.schedule, problems=problems, steps_per_epoch=args.steps_per_epoch,
        prefix=args.strip_prefix, base_max_lr=args.base_max_lr,
        groups_per_phase=args.groups_per_phase, param_names=names,
    )
    problems.raise_if_any()
    if args.hf_names:
        to_titan_names(converted.schedule, hf_names, args.schedule, problems)
        problems.raise_if_any()
    for note in converted.notes:
        print(f"note: {note}", file=sys.stderr)
    header = (f"Converted by `titan-phases import-fts` from the FTS schedule {args.schedule}\n"
              f"steps_per_epoch = {args.steps_per_epoch}, strip_prefix = {args.strip_prefix!r}"
              + (", HF names translated to torchtitan's" if args.hf_names else "") + "\n"
              + "".join(f"note: {n}\n" for n in converted.notes)
              + "Format: docs/schedule.md\n")
    _write(args.out, dumps(converted.schedule, header=header), args.force)
    if job_config is None:
        return EXIT_OK
    job_config.phases.schedule_file = str(Path(args.out).resolve())
    job_config.phases.schedule = {}
    resolved = load_and_validate(job_config)
    _print_warnings(resolved.warnings)
    print(render_table(phase_rows(resolved, job_config)))
    print(_summary(resolved))
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _default_world_size() -> int:
    """The ranks ``run_train.sh`` starts: $NGPU per node (all visible accelerators, or 2 CPU
    processes without any) times $NNODES."""
    import torch

    try:
        per_node = int(os.environ["NGPU"]) if os.environ.get("NGPU") else (
            torch.accelerator.device_count() if torch.accelerator.is_available() else 0) or 2
        return per_node * int(os.environ.get("NNODES") or 1)
    except ValueError as e:
        raise _InvalidInput(f"NGPU and NNODES must be whole numbers: {e}") from None


def _plan(args: argparse.Namespace, rest: list[str]) -> int:
    job_config, resolved = _resolve_job(rest)
    _print_warnings(resolved.warnings)
    world_size = args.world_size or _default_world_size()
    try:
        plan = build_plan(job_config, resolved, world_size, args.seconds_per_step)
    except MeshError as e:
        raise _InvalidInput(f"{e} (--world-size {world_size})") from None
    print(json.dumps(plan.as_json(), indent=2) if args.json else render_plan(plan))
    return EXIT_OK


def _plot(args: argparse.Namespace, rest: list[str]) -> int:
    if rest:
        raise _InvalidInput(f"plot takes no torchtitan flags: {' '.join(rest)}")
    source = Path(args.metrics)
    metrics = source / "metrics.jsonl" if source.is_dir() else source
    if not metrics.is_file():
        raise _InvalidInput(
            f"{metrics} does not exist: give a run's metrics.jsonl or its job.dump_folder"
        )
    out = Path(args.out) if args.out else metrics.with_name("timeline.png")
    timeline = read_timeline(metrics)
    if not timeline.steps:
        raise _InvalidInput(f"{metrics} holds no training step yet")
    try:
        figure = plot_timeline(timeline, args.title or str(metrics.parent))
    except PlotUnavailable as e:
        raise _InvalidInput(str(e)) from None
    figure.savefig(out)
    print(f"wrote {out}: steps {timeline.steps[0]}-{timeline.steps[-1]}, "
          f"{len(timeline.phases)} phase(s), {timeline.starts} process start(s)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="titan-phases",
        description="Check, show, generate and import phase schedules for gradual unfreezing "
                    "with torchtitan. Nothing here starts training or needs a GPU.",
        epilog=_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, description: str, usage: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=textwrap.fill(description, 79),
                              usage=f"titan-phases {name} {usage}",
                              epilog=f"{_JOB_ARGS}\n\n{_EXIT_CODES}", allow_abbrev=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    validate = command(
        "validate", "validate the job's schedule and print the phase table",
        "Load the job's schedule (file, inline or generated), check it against the job config "
        "and the model (built on the meta device) and print the phase table; on errors, list "
        "them all and exit 2.",
        "[-h] [--job.config_file JOB.toml] [torchtitan flags ...]",
    )
    validate.set_defaults(run=_validate)

    show = command("show", "print the phase table",
                   "Print phase, #tensors, #elements, % of model, lr, optimizer, scheduler and "
                   "transition for each phase (the schedule is validated first).",
                   "[-h] [--params] [--json] [--job.config_file JOB.toml] [torchtitan flags ...]")
    show.add_argument("--params", action="store_true",
                      help="list each phase's parameters under its row")
    show.add_argument("--json", action="store_true", help="print the table as JSON")
    show.set_defaults(run=_show)

    generate = command(
        "generate", "write the generated (implicit) schedule to a TOML file for editing",
        "Generate the schedule the job would get without an explicit one (output head and final "
        "norm, then blocks top-down, then embeddings) and write it as a schedule file.",
        "[-h] --out FILE [--force] [--job.config_file JOB.toml] [torchtitan flags ...]",
    )
    generate.add_argument("--out", required=True, metavar="FILE",
                          help="schedule TOML to write ('-': stdout)")
    generate.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    generate.set_defaults(run=_generate)

    fts = command(
        "import-fts", "convert a finetuning-scheduler (FTS) YAML schedule to TOML",
        "Convert an FTS schedule: params, lr, new_optimizer, new_lr_scheduler (with "
        "init_pg_lrs) and max_transition_epoch (to steps). Given torchtitan flags, the result "
        "is also validated against that job.",
        "[-h] FTS.yaml --out FILE [--steps-per-epoch N] [--strip-prefix [PREFIX]]\n"
        "         [--base-max-lr LR] [--groups-per-phase {1,2}] [--hf-names] [--force]\n"
        "         [--job.config_file JOB.toml [torchtitan flags ...]]",
    )
    fts.add_argument("schedule", metavar="FTS.yaml", help="FTS schedule YAML")
    fts.add_argument("--out", required=True, metavar="FILE",
                     help="schedule TOML to write ('-': stdout)")
    fts.add_argument("--steps-per-epoch", type=_positive_int, default=None, metavar="N",
                     help="training steps per FTS epoch; needed for max_transition_epoch and for "
                          "schedulers stepped per epoch")
    fts.add_argument("--strip-prefix", nargs="?", const="model.", default=None, metavar="PREFIX",
                     help="drop this prefix from every param name/regex (default when given "
                          "without a value: Lightning's 'model.')")
    fts.add_argument("--base-max-lr", type=_positive_float, default=FTS_BASE_MAX_LR, metavar="LR",
                     help="FTS's base_max_lr, the lr of phases without one (default: "
                          "%(default)s); for generated schedules it is [phases] base_max_lr")
    fts.add_argument("--groups-per-phase", type=int, choices=(1, 2), default=None,
                     help="FTS param groups per phase in init_pg_lrs (2 with a no_decay split); "
                          "default: inferred from the list lengths")
    fts.add_argument("--hf-names", action="store_true",
                     help="the schedule names Hugging Face parameters (after --strip-prefix): "
                          "translate them to torchtitan's through the job's state_dict_adapter "
                          "(needs the job's flags)")
    fts.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    fts.set_defaults(run=_import_fts)

    plan = command(
        "plan", "print each phase's steps, FLOPs and memory per rank before launching",
        "For every phase and for full fine-tuning: the steps it runs, the FLOPs of a step "
        "relative to full fine-tuning (the FLOP model), and the bytes each rank holds of "
        "sharded params, grads and optimizer state on the job's mesh, laid out on the meta "
        "device over a fake process group (no GPU, no memory). With --seconds-per-step, also "
        "the wall time of each phase.",
        "[-h] [--world-size N] [--seconds-per-step S] [--json] [--job.config_file JOB.toml]\n"
        "         [torchtitan flags ...]",
    )
    plan.add_argument("--world-size", type=_positive_int, default=None, metavar="N",
                      help="ranks to plan for (default: what run_train.sh starts, "
                           "$NGPU x $NNODES; 2 on a machine without accelerators)")
    plan.add_argument("--seconds-per-step", type=_positive_float, default=None, metavar="S",
                      help="measured seconds of one full fine-tuning step on this mesh: "
                           "adds wall time per phase and in total")
    plan.add_argument("--json", action="store_true",
                      help="print the plan as JSON (exact bytes for every rank)")
    plan.set_defaults(run=_plan)

    plot = sub.add_parser(
        "plot", help="draw a run's metrics.jsonl as a PNG timeline",
        description=textwrap.fill(
            "Draw training and validation loss, the lr of every param group (log scale) and "
            "the trainable params over the steps, with the phases as bands labelled with why "
            "each began. Works on resumed runs and on runs still in progress. Needs "
            "matplotlib (pip install 'titan_phases[plot]').", 79),
        usage="titan-phases plot [-h] METRICS [--out PNG] [--title TITLE]", epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    plot.add_argument("metrics", metavar="METRICS",
                      help="a run's metrics.jsonl, or its job.dump_folder")
    plot.add_argument("--out", metavar="PNG",
                      help="image to write (default: timeline.png beside metrics.jsonl)")
    plot.add_argument("--title", help="the figure's title (default: the run's folder)")
    plot.set_defaults(run=_plot)
    return parser


def split_torchtitan_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate torchtitan flags (``--section.key [value]``: the only options with a dot) from
    this CLI's own arguments, wherever they appear. A flag without ``=`` takes the next
    argument as its value unless that one starts with ``--``, so a boolean flag (which takes no
    value, e.g. ``--phases.allow_untested``) must not come right before a positional argument."""
    ours: list[str] = []
    theirs: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, _ = arg.partition("=")
        if not (arg.startswith("--") and "." in name):
            ours.append(arg)
        elif eq or i + 1 == len(argv) or argv[i + 1].startswith("--"):
            theirs.append(arg)
        else:
            theirs += [arg, argv[i + 1]]
            i += 1
        i += 1
    return ours, theirs


@contextlib.contextmanager
def _modules_importable_from_cwd() -> Iterator[None]:
    # The modules a job names (experimental.custom_import, job.custom_config_module) are
    # imported as under `python -m titan_phases.train`, which puts the working directory first
    # on sys.path; the console script's sys.path starts with its bin directory instead.
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if sys.path and sys.path[0] == cwd:
            del sys.path[0]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of exiting (the console script exits)."""
    ours, rest = split_torchtitan_args(sys.argv[1:] if argv is None else list(argv))
    try:
        args = build_parser().parse_args(ours)
    except SystemExit as e:  # --help, or a usage error argparse already printed
        return int(e.code or 0)
    try:
        with _modules_importable_from_cwd():
            return args.run(args, rest)
    except ScheduleError as e:
        print(f"error: {e}", file=sys.stderr)
    except _InvalidInput as e:
        print(f"error: {e}", file=sys.stderr)
    except SystemExit as e:  # --help of the torchtitan flags (tyro printed it)
        return int(e.code or 0)
    return EXIT_INVALID_INPUT
