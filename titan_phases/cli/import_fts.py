"""``titan-phases import-fts``: a finetuning-scheduler (FTS) YAML schedule converted to
titan_phases' TOML, and validated against a job when its flags are given.

FTS's default ``base_max_lr`` is written here a second time (:data:`FTS_BASE_MAX_LR`), beside
:data:`titan_phases.interop.fts_import.FTS_BASE_MAX_LR` that the conversion uses: the parser
shows it in ``--help``, and importing the converter imports torchtitan. tests/test_cli.py checks
that the two agree.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TYPE_CHECKING

from titan_phases.cli.common import (
    add_job_command,
    EXIT_OK,
    InvalidInput,
    parse_job,
    positive_float,
    positive_int,
    print_warnings,
    summary,
    write_output,
)

if TYPE_CHECKING:
    from titan_phases.schedule import Problem, ResolvedSchedule

FTS_BASE_MAX_LR = 1.0e-5


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = add_job_command(
        subcommands, "import-fts", "convert a finetuning-scheduler (FTS) YAML schedule to TOML",
        "Convert an FTS schedule: params, lr, new_optimizer, new_lr_scheduler (with "
        "init_pg_lrs) and max_transition_epoch (to steps). Given torchtitan flags, the result "
        "is also validated against that job.",
        "[-h] FTS.yaml --out FILE [--steps-per-epoch N] [--strip-prefix [PREFIX]]\n"
        "         [--base-max-lr LR] [--groups-per-phase {1,2}] [--hf-names] [--force]\n"
        "         [--job.config_file JOB.toml [torchtitan flags ...]]",
    )
    parser.add_argument("schedule", metavar="FTS.yaml", help="FTS schedule YAML")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="schedule TOML to write ('-': stdout)")
    parser.add_argument("--steps-per-epoch", type=positive_int, default=None, metavar="N",
                        help="training steps per FTS epoch; needed for max_transition_epoch and "
                             "for schedulers stepped per epoch")
    parser.add_argument("--strip-prefix", nargs="?", const="model.", default=None,
                        metavar="PREFIX",
                        help="drop this prefix from every param name/regex (default when given "
                             "without a value: Lightning's 'model.')")
    parser.add_argument("--base-max-lr", type=positive_float, default=FTS_BASE_MAX_LR,
                        metavar="LR",
                        help="FTS's base_max_lr, the lr of phases without one (default: "
                             "%(default)s); for generated schedules it is [phases] base_max_lr")
    parser.add_argument("--groups-per-phase", type=int, choices=(1, 2), default=None,
                        help="FTS param groups per phase in init_pg_lrs (2 with a no_decay "
                             "split); default: inferred from the list lengths")
    parser.add_argument("--hf-names", action="store_true",
                        help="the schedule names Hugging Face parameters (after --strip-prefix):"
                             " translate them to torchtitan's through the job's "
                             "state_dict_adapter (needs the job's flags)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from titan_phases.config.toml_writer import dumps
    from titan_phases.interop.fts_import import convert_fts_schedule, load_fts_yaml
    from titan_phases.interop.hf_names import job_hf_names, to_titan_names
    from titan_phases.schedule.errors import Problems
    from titan_phases.schedule.model_info import model_param_numels
    from titan_phases.schedule.table import phase_rows, render_table

    if rest and args.out == "-":
        raise InvalidInput("validating against a job needs --out FILE, not stdout")
    if args.hf_names and not rest:
        raise InvalidInput("--hf-names needs the job's flags (--job.config_file ...) to know "
                           "the model's parameter names")
    job_config = parse_job(rest) if rest else None
    problems = Problems()
    raw = load_fts_yaml(args.schedule, problems)
    problems.raise_if_any()
    # With the job, patterns are converted against the names they are written in, so FTS's
    # start-anchored matches are kept exactly and its looser matches can be listed.
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
    text = dumps(converted.schedule, header=header)
    if job_config is None:
        write_output(args.out, text, args.force)
        return EXIT_OK
    resolved = _validated(text, Path(args.out), job_config)
    write_output(args.out, text, args.force)
    print_warnings(resolved.warnings)
    print(render_table(phase_rows(resolved, job_config)))
    print(summary(resolved))
    return EXIT_OK


def _validated(text: str, out: Path, job_config: Any) -> ResolvedSchedule:
    """The schedule ``text`` resolved against the job, as the job will read it from ``out``,
    before anything is written there: it is read from a copy in a scratch folder, and every
    message names ``out``. Raises ScheduleError saying that ``out`` was not written."""
    from titan_phases.schedule import load_and_validate, ScheduleError

    target = str(out.resolve())
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / out.name
        staged.write_text(text)
        job_config.phases.schedule_file = str(staged)
        job_config.phases.schedule = {}
        try:
            resolved = load_and_validate(job_config)
        except ScheduleError as e:
            raise ScheduleError(_renamed(e.problems, str(staged), target),
                                f"imported schedule, {out} not written") from None
    job_config.phases.schedule_file = target
    warnings = tuple(_renamed(resolved.warnings, str(staged), target))
    return dataclasses.replace(resolved, source=target, warnings=warnings)


def _renamed(problems: Iterable[Problem], source: str, to: str) -> list[Problem]:
    return [dataclasses.replace(p, source=to) if p.source == source else p for p in problems]
