"""``titan-phases plot``: a run's metrics.jsonl drawn as a PNG timeline. It reads no job, so it
takes no torchtitan flags."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from titan_phases.cli.common import EXIT_CODES, EXIT_OK, InvalidInput


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "plot", help="draw a run's metrics.jsonl as a PNG timeline",
        description=textwrap.fill(
            "Draw training and validation loss, the lr of every param group (log scale) and "
            "the trainable params over the steps, with the phases as bands labelled with why "
            "each began. Works on resumed runs and on runs still in progress. Needs "
            "matplotlib (pip install 'titan_phases[plot]').", 79),
        usage="titan-phases plot [-h] METRICS [--out PNG] [--title TITLE]", epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    parser.add_argument("metrics", metavar="METRICS",
                        help="a run's metrics.jsonl, or its job.dump_folder")
    parser.add_argument("--out", metavar="PNG",
                        help="image to write (default: timeline.png beside metrics.jsonl)")
    parser.add_argument("--title", help="the figure's title (default: the run's folder)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from titan_phases.interop.plot import plot_timeline, PlotUnavailable
    from titan_phases.interop.timeline import read_timeline

    if rest:
        raise InvalidInput(f"plot takes no torchtitan flags: {' '.join(rest)}")
    source = Path(args.metrics)
    metrics = source / "metrics.jsonl" if source.is_dir() else source
    if not metrics.is_file():
        raise InvalidInput(
            f"{metrics} does not exist: give a run's metrics.jsonl or its job.dump_folder"
        )
    out = Path(args.out) if args.out else metrics.with_name("timeline.png")
    timeline = read_timeline(metrics)
    if not timeline.steps:
        raise InvalidInput(f"{metrics} holds no training step yet")
    try:
        figure = plot_timeline(timeline, args.title or str(metrics.parent))
    except PlotUnavailable as e:
        raise InvalidInput(str(e)) from None
    figure.savefig(out)
    print(f"wrote {out}: steps {timeline.steps[0]}-{timeline.steps[-1]}, "
          f"{len(timeline.phases)} phase(s), {timeline.starts} process start(s)")
    return EXIT_OK
