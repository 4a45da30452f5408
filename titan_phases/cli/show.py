"""``titan-phases show``: the phase table of the job's validated schedule, as text or JSON."""

from __future__ import annotations

import argparse
import json

from titan_phases.cli.common import add_job_command, EXIT_OK, print_warnings, resolve_job


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = add_job_command(
        subcommands, "show", "print the phase table",
        "Print phase, #tensors, #elements, % of model, lr, optimizer, scheduler and transition "
        "for each phase (the schedule is validated first).",
        "[-h] [--params] [--json] [--job.config_file JOB.toml] [torchtitan flags ...]",
    )
    parser.add_argument("--params", action="store_true",
                        help="list each phase's parameters under its row")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from titan_phases.schedule.table import phase_rows, render_table

    job_config, resolved = resolve_job(rest)
    rows = phase_rows(resolved, job_config)
    if args.json:
        print(json.dumps({
            "source": resolved.source,
            "generated": resolved.generated,
            "phases": rows,
            "warnings": [str(w) for w in resolved.warnings],
        }, indent=2))
        return EXIT_OK
    print_warnings(resolved.warnings)
    print(render_table(rows, with_params=args.params))
    return EXIT_OK
