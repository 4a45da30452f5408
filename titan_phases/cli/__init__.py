"""``titan-phases``: check, show, generate and import phase schedules without training, plan a
job's cost per phase, and plot a run's timeline.

Every subcommand that reads a job also takes torchtitan's own flags, recognised by the dot in
their name (``--job.config_file X --phases.lr_scale 0.1 ...``); they are parsed by torchtitan's
ConfigManager exactly as the trainer parses them.

Each subcommand is a module of this package that adds its parser (``register``) and holds what
it runs (``run``); :mod:`.common` holds what they share. No module here imports torch,
torchtitan or the parts of titan_phases that do at module level, only inside the functions that
run a subcommand: ``--help`` and usage errors must not pay for importing torchtitan, which takes
seconds (``torchtitan.config`` brings in torch, inductor, dynamo, datasets and pandas).
tests/test_cli.py checks that no help imports torch or torchtitan.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

from titan_phases.cli import generate, import_fts, plan, plot, show, validate
from titan_phases.cli.common import EXIT_CODES, InvalidInput, split_torchtitan_args
from titan_phases.runtime.process_exit import EXIT_INVALID_INPUT

_SUBCOMMANDS = (validate, show, generate, import_fts, plan, plot)
"""In the order ``titan-phases --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="titan-phases",
        description="Check, show, generate and import phase schedules for gradual unfreezing "
                    "with torchtitan. Nothing here starts training or needs a GPU.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for subcommand in _SUBCOMMANDS:
        subcommand.register(subcommands)
    return parser


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
    except InvalidInput as e:
        print(f"error: {e}", file=sys.stderr)
    except SystemExit as e:  # --help of the torchtitan flags (tyro printed it)
        return int(e.code or 0)
    except Exception as e:
        # Imported only now: the schedule imports torchtitan, which plot never needs.
        from titan_phases.schedule import ScheduleError

        if not isinstance(e, ScheduleError):
            raise
        print(f"error: {e}", file=sys.stderr)
    return EXIT_INVALID_INPUT
