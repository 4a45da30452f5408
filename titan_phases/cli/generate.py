"""``titan-phases generate``: the schedule a job gets without an explicit one, written as a
schedule file to edit."""

from __future__ import annotations

import argparse
import sys

from titan_phases.cli.common import (
    add_job_command,
    EXIT_OK,
    parse_job,
    print_warnings,
    write_output,
)


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = add_job_command(
        subcommands, "generate",
        "write the generated (implicit) schedule to a TOML file for editing",
        "Generate the schedule the job would get without an explicit one (output head and final "
        "norm, then blocks top-down, then embeddings; or the job's [phases.cycle]) and write it "
        "as a schedule file.",
        "[-h] --out FILE [--force] [--job.config_file JOB.toml] [torchtitan flags ...]",
    )
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="schedule TOML to write ('-': stdout)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from titan_phases.config.toml_writer import dumps
    from titan_phases.schedule import load_and_validate
    from titan_phases.schedule.table import phase_rows, render_table

    job_config = parse_job(rest)
    cfg = job_config.phases
    if cfg.schedule_file or cfg.schedule:
        print("warning: the job's explicit schedule is ignored; generating one from the model",
              file=sys.stderr)
        cfg.schedule_file, cfg.schedule = "", {}
    resolved = load_and_validate(job_config)
    print_warnings(resolved.warnings)
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
    cycle = cfg.cycle
    shape = (
        f"a cycle: order = {cycle.order}, blocks_per_phase = {cycle.blocks_per_phase}, "
        f"steps_per_phase = {cycle.steps_per_phase}, passes = {cycle.passes}, seed = "
        f"{cycle.seed}" if cycle.enable
        else f"blocks_per_phase = {cfg.blocks_per_phase}, transition_mode = "
        f"{cfg.effective_transition_mode(job_config.validation.enable)}"
    )
    without = [name for name, on in (
        ("[phases.cycle] enable", cycle.enable),
        ("reinit_optimizer / reinit_lr_scheduler (they are written into the phases below)",
         cfg.reinit_optimizer or cfg.reinit_lr_scheduler),
    ) if on]
    header = (
        f"Phase schedule written by `titan-phases generate`, {resolved.source}\n"
        f"model {job_config.model.name} {job_config.model.flavor}, {shape}, "
        f"training.steps = {job_config.training.steps}\n"
        f"Use it with [phases] schedule_file = \"<this file>\""
        + (f" and without {' or '.join(without)}" if without else "")
        + ".\nFormat: docs/schedule.md\n"
    )
    raw = {str(p.index): p.to_raw() for p in phases}
    write_output(args.out, dumps(raw, header=header, comments=comments), args.force)
    print(render_table(phase_rows(resolved, job_config)), file=sys.stderr)
    return EXIT_OK
