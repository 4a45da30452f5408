"""What the subcommands share: the parser of a subcommand that reads a job, the split of
torchtitan's flags from the CLI's own, reading the job and its schedule, the error reported as
invalid input, and writing an output file.

Like every module of :mod:`titan_phases.cli`, it imports nothing heavy at module level: the
job-config parser, the schedule and torchtitan are imported inside the functions that use them.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:
    from titan_phases.config import UnknownKey
    from titan_phases.config.parsing import ConfigNotice
    from titan_phases.schedule import Problem, ResolvedSchedule

EXIT_OK = 0

EXIT_CODES = """\
exit codes:
  0  success
  1  unexpected internal error (a traceback is printed)
  2  invalid input: schedule or [phases] errors (all listed on stderr), a bad flag,
     a missing or malformed file, or an output file that exists without --force
"""

_JOB_ARGS = ("options with a dot are torchtitan flags, parsed as for training:\n"
             "  --job.config_file JOB.toml [--section.key value ...]")


class InvalidInput(Exception):
    """A user error outside the schedule itself (files, flags)."""


def add_job_command(
    subcommands: argparse._SubParsersAction, name: str, help_text: str, description: str,
    usage: str,
) -> argparse.ArgumentParser:
    """The parser of a subcommand that reads a job from torchtitan's flags."""
    return subcommands.add_parser(
        name, help=help_text, description=textwrap.fill(description, 79),
        usage=f"titan-phases {name} {usage}", epilog=f"{_JOB_ARGS}\n\n{EXIT_CODES}",
        allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


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


def parse_job(
    torchtitan_args: list[str],
    unknown_keys: list[UnknownKey] | None = None,
    notices: list[ConfigNotice] | None = None,
    require_phases: bool = True,
) -> Any:
    """The job config, parsed by torchtitan's ConfigManager as for training; raises
    InvalidInput for an unreadable file or a bad flag. Without a ``notices`` list, what the
    command line changed against the TOML (a schedule file replacing the inline schedule) is
    printed as a warning."""
    from titan_phases.config import CommandLineError, parse_job_config
    from titan_phases.train_spec import register_train_specs

    # As in titan_phases.train: the phased model names ("llama3_phases") must be registered.
    register_train_specs()
    collected: list[ConfigNotice] = [] if notices is None else notices
    try:
        job_config = parse_job_config(torchtitan_args, require_phases=require_phases,
                                      unknown_keys=unknown_keys, notices=collected)
    except (FileNotFoundError, tomllib.TOMLDecodeError, ValueError) as e:
        raise InvalidInput(f"cannot read the job config: {e}") from e
    except CommandLineError as e:
        raise InvalidInput(f"invalid torchtitan flag:\n{e}") from e
    if notices is None:
        for notice in collected:
            print(f"warning: {notice.file}: {notice.key}: {notice.message}", file=sys.stderr)
    return job_config


def resolve_job(torchtitan_args: list[str]) -> tuple[Any, ResolvedSchedule]:
    """The job and its schedule; unknown job-config keys are reported with the schedule's
    problems, in one ScheduleError, and the command line's notices are among its warnings."""
    from titan_phases.prepare import input_error, with_notices
    from titan_phases.schedule import load_and_validate, ScheduleError
    from titan_phases.schedule.errors import unknown_key_problems

    unknown: list[UnknownKey] = []
    notices: list[ConfigNotice] = []
    job_config = parse_job(torchtitan_args, unknown, notices)
    problems = unknown_key_problems(unknown)
    try:
        resolved = load_and_validate(job_config)
    except ScheduleError as exc:
        raise input_error(problems, exc.problems) from None
    if problems:
        raise input_error(problems, [])
    return job_config, with_notices(resolved, notices)


def print_warnings(warnings: tuple[Problem, ...] | list[Problem]) -> None:
    for problem in warnings:
        print(f"warning: {problem}", file=sys.stderr)


def summary(resolved: ResolvedSchedule) -> str:
    """The last line of ``validate`` and of ``import-fts`` against a job: how many phases, from
    where."""
    kind = "generated" if resolved.generated else "explicit"
    line = f"OK: {resolved.num_phases} phase(s), {kind} schedule ({resolved.source})"
    if resolved.frozen_params:
        line += f"; {len(resolved.frozen_params)} parameter(s) never thawed"
    return line


def write_output(path: str, text: str, force: bool) -> None:
    """Write ``text`` to ``path`` ('-': stdout); an existing file only with ``force``."""
    if path == "-":
        sys.stdout.write(text)
        return
    out = Path(path)
    if out.exists() and not force:
        raise InvalidInput(f"{out} exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)
