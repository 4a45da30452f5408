"""``titan-phases plan``: each phase's steps, FLOPs and memory per rank, before launching."""

from __future__ import annotations

import argparse
import json
import os

from titan_phases.cli.common import (
    add_job_command,
    EXIT_OK,
    InvalidInput,
    positive_float,
    positive_int,
    print_warnings,
    resolve_job,
)


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = add_job_command(
        subcommands, "plan",
        "print each phase's steps, FLOPs and memory per rank before launching",
        "For every phase and for full fine-tuning: the steps it runs, the FLOPs of a step "
        "relative to full fine-tuning (the FLOP model), and the bytes each rank holds of "
        "sharded params, grads and optimizer state on the job's mesh, laid out on the meta "
        "device over a fake process group (no GPU, no memory). With --seconds-per-step, also "
        "the wall time of each phase.",
        "[-h] [--world-size N] [--seconds-per-step S] [--json] [--job.config_file JOB.toml]\n"
        "         [torchtitan flags ...]",
    )
    parser.add_argument("--world-size", type=positive_int, default=None, metavar="N",
                        help="ranks to plan for (default: what run_train.sh starts, "
                             "$NGPU x $NNODES; 2 on a machine without accelerators)")
    parser.add_argument("--seconds-per-step", type=positive_float, default=None, metavar="S",
                        help="measured seconds of one full fine-tuning step on this mesh: "
                             "adds wall time per phase and in total")
    parser.add_argument("--json", action="store_true",
                        help="print the plan as JSON (exact bytes for every rank)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from titan_phases.plan import build_plan, MeshError, render_plan

    job_config, resolved = resolve_job(rest)
    print_warnings(resolved.warnings)
    world_size = args.world_size or _default_world_size()
    try:
        plan = build_plan(job_config, resolved, world_size, args.seconds_per_step)
    except MeshError as e:
        raise InvalidInput(f"{e} (--world-size {world_size})") from None
    print(json.dumps(plan.as_json(), indent=2) if args.json else render_plan(plan))
    return EXIT_OK


def _default_world_size() -> int:
    """The ranks ``run_train.sh`` starts: $NGPU per node (all visible accelerators, or 2 CPU
    processes without any) times $NNODES."""
    import torch

    try:
        per_node = int(os.environ["NGPU"]) if os.environ.get("NGPU") else (
            torch.accelerator.device_count() if torch.accelerator.is_available() else 0) or 2
        return per_node * int(os.environ.get("NNODES") or 1)
    except ValueError as e:
        raise InvalidInput(f"NGPU and NNODES must be whole numbers: {e}") from None
