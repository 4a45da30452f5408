"""``python -m titan_phases.train``: run a torchtitan job with a phase schedule.

Launched by ``run_train.sh`` through ``torchrun``. On machines without an accelerator the CPU
runtime is switched on first, before torchtitan's trainer module copies its device settings.
The job config and schedule are validated on every rank before torchtitan sets up
``torch.distributed`` (:func:`titan_phases.prepare.check_input`, which ``run_train.sh`` also
runs once before torchrun starts), and the schedule it resolved is handed to the trainer, so
each rank resolves it once; the ranks agree on what they found
(:mod:`titan_phases.runtime.agreement`), and invalid input exits every rank with code 2 and the
full list of problems. So does a checkpoint that the schedule cannot resume. A non-finite loss
and SIGTERM end training with their own exit codes (:mod:`titan_phases.components.step_guard`).
Every rank leaves through :func:`titan_phases.runtime.process_exit.exit_process`, which skips
interpreter finalization (gloo threads that outlive their process group can abort it).

A model whose TrainSpec is not phase-aware (e.g. torchtitan's own ``llama3``) runs on
torchtitan's stock Trainer, with the embedded datasets and the CPU runtime available.
"""

import functools
import sys

from titan_phases.runtime.cpu import activate_if_no_accelerator

activate_if_no_accelerator()

import torchtitan.train  # noqa: E402
from torchtitan.tools.logging import init_logger  # noqa: E402

from titan_phases.components.checkpointing.integrity import CheckpointLoadError  # noqa: E402
from titan_phases.components.phase_controller import ScheduleMismatchError  # noqa: E402
from titan_phases.components.step_guard import TrainingStopped  # noqa: E402
from titan_phases.config import with_phases_section  # noqa: E402
from titan_phases.data.assets import ensure_assets  # noqa: E402
from titan_phases.data.datasets import uses_embedded_assets  # noqa: E402
from titan_phases.prepare import check_input  # noqa: E402
from titan_phases.runtime.agreement import (  # noqa: E402
    agreed_report,
    exit_together,
    input_check_group,
)
from titan_phases.runtime.process_exit import EXIT_INVALID_INPUT, exit_process  # noqa: E402
from titan_phases.train_spec import register_train_specs  # noqa: E402
from titan_phases.trainer import PhasedTrainer  # noqa: E402


def main() -> None:
    init_logger()
    register_train_specs()
    with input_check_group():
        job_config, schedule, problem = check_input(sys.argv[1:])
        report = agreed_report(problem)
        if report is not None:
            exit_together(report, EXIT_INVALID_INPUT)
    # torchtitan's main parses sys.argv again: give it the same arguments.
    sys.argv[1:] = with_phases_section(sys.argv[1:])
    if uses_embedded_assets(job_config):
        ensure_assets()
    trainer = (
        torchtitan.train.Trainer
        if schedule is None
        else functools.partial(PhasedTrainer, schedule=schedule)
    )
    try:
        torchtitan.train.main(trainer)
    except (ScheduleMismatchError, CheckpointLoadError) as exc:
        exit_together(
            f"titan_phases: cannot resume, nothing was changed: {exc}", EXIT_INVALID_INPUT
        )
    except TrainingStopped as exc:
        exit_together(f"titan_phases: {exc}", exc.exit_code)
    exit_process(0)


if __name__ == "__main__":
    main()
