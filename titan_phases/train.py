"""``python -m titan_phases.train``: run a torchtitan job with a phase schedule.

Launched by ``run_train.sh`` through ``torchrun``. On machines without an accelerator the CPU
runtime is switched on first, before torchtitan's trainer module copies its device settings.
The job config and schedule are validated on every rank before any process group exists;
invalid input exits with code 2 and the full list of problems.

A model whose TrainSpec is not phase-aware (e.g. torchtitan's own ``llama3``) runs on
torchtitan's stock Trainer, with the embedded datasets and the CPU runtime available.
"""

import importlib
import sys

from titan_phases.runtime.cpu import activate_if_no_accelerator

activate_if_no_accelerator()

import torchtitan.train  # noqa: E402
from torchtitan.config import ConfigManager  # noqa: E402
from torchtitan.protocols.train_spec import get_train_spec  # noqa: E402
from torchtitan.tools.logging import init_logger  # noqa: E402

from titan_phases.components.phase_controller import ScheduleMismatchError  # noqa: E402
from titan_phases.config.parsing import with_phases_section  # noqa: E402
from titan_phases.data.assets import ensure_assets  # noqa: E402
from titan_phases.data.datasets import uses_embedded_assets  # noqa: E402
from titan_phases.schedule import ScheduleError  # noqa: E402
from titan_phases.train_spec import is_phased, register_train_specs  # noqa: E402
from titan_phases.trainer import PhasedTrainer, schedule_for  # noqa: E402

EXIT_INVALID_INPUT = 2


def main() -> None:
    init_logger()
    register_train_specs()
    try:
        # torchtitan's main parses sys.argv again: give it the same arguments.
        sys.argv[1:] = with_phases_section(sys.argv[1:])
        job_config = ConfigManager().parse_args(sys.argv[1:])
        if job_config.experimental.custom_import:
            importlib.import_module(job_config.experimental.custom_import)
        spec = get_train_spec(job_config.model.name)
    except (OSError, ValueError, ImportError) as exc:
        print(f"titan_phases: invalid job config, nothing was run: {exc}", file=sys.stderr)
        sys.exit(EXIT_INVALID_INPUT)
    if uses_embedded_assets(job_config):
        ensure_assets()
    if not is_phased(spec):
        torchtitan.train.main(torchtitan.train.Trainer)
        return
    try:
        schedule_for(job_config)
    except ScheduleError as exc:
        print(f"titan_phases: invalid job or schedule, nothing was run:\n{exc}", file=sys.stderr)
        sys.exit(EXIT_INVALID_INPUT)
    try:
        torchtitan.train.main(PhasedTrainer)
    except ScheduleMismatchError as exc:
        print(f"titan_phases: cannot resume, nothing was changed: {exc}", file=sys.stderr)
        sys.exit(EXIT_INVALID_INPUT)


if __name__ == "__main__":
    main()
