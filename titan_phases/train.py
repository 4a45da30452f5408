"""``python -m titan_phases.train``: run a torchtitan job with a phase schedule.

Launched by ``run_train.sh`` through ``torchrun``. On machines without an accelerator the CPU
runtime is switched on first, before torchtitan's trainer module copies its device settings.
The job config and schedule are validated on every rank before torchtitan sets up
``torch.distributed``; the ranks agree on what they found (:mod:`titan_phases.agreement`), and
invalid input exits every rank with code 2 and the full list of problems. So does a checkpoint
that the schedule cannot resume. Every rank leaves through
:func:`titan_phases.runtime.process_exit.exit_process`, which skips interpreter finalization
(gloo threads that outlive their process group can abort it).

A model whose TrainSpec is not phase-aware (e.g. torchtitan's own ``llama3``) runs on
torchtitan's stock Trainer, with the embedded datasets and the CPU runtime available.
"""

import contextlib
import importlib
import io
import sys

from titan_phases.runtime.cpu import activate_if_no_accelerator

activate_if_no_accelerator()

import torchtitan.train  # noqa: E402
from torchtitan.config import ConfigManager, JobConfig  # noqa: E402
from torchtitan.protocols.train_spec import get_train_spec  # noqa: E402
from torchtitan.tools.logging import init_logger  # noqa: E402

from titan_phases.agreement import agreed_report, exit_together, input_check_group  # noqa: E402
from titan_phases.components.phase_controller import ScheduleMismatchError  # noqa: E402
from titan_phases.config.parsing import with_phases_section  # noqa: E402
from titan_phases.data.assets import ensure_assets  # noqa: E402
from titan_phases.data.datasets import uses_embedded_assets  # noqa: E402
from titan_phases.runtime.process_exit import exit_process  # noqa: E402
from titan_phases.schedule import ScheduleError  # noqa: E402
from titan_phases.train_spec import is_phased, register_train_specs  # noqa: E402
from titan_phases.trainer import PhasedTrainer, schedule_for  # noqa: E402

EXIT_INVALID_INPUT = 2


class _CommandLineError(Exception):
    """tyro rejected the arguments; the message is what it would have printed."""


def _parse(argv: list[str]) -> JobConfig:
    # tyro prints its error and exits; capture it so that every rank can report it.
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            return ConfigManager().parse_args(with_phases_section(argv))
    except SystemExit as exc:
        if exc.code in (0, None):  # --help
            sys.stdout.write(captured.getvalue())
            raise
        raise _CommandLineError(captured.getvalue().rstrip()) from None


def check_input(argv: list[str]) -> tuple[JobConfig | None, str | None]:
    """Parse the job config and validate its schedule; return it, or what is wrong with it."""
    try:
        job_config = _parse(argv)
        if job_config.experimental.custom_import:
            importlib.import_module(job_config.experimental.custom_import)
        spec = get_train_spec(job_config.model.name)
    except (OSError, ValueError, ImportError) as exc:
        return None, f"titan_phases: invalid job config, nothing was run: {exc}"
    except _CommandLineError as exc:
        return None, f"titan_phases: invalid command line, nothing was run:\n{exc}"
    if is_phased(spec):
        try:
            schedule_for(job_config)
        except ScheduleError as exc:
            return None, f"titan_phases: invalid job or schedule, nothing was run:\n{exc}"
    return job_config, None


def main() -> None:
    init_logger()
    register_train_specs()
    with input_check_group():
        job_config, problem = check_input(sys.argv[1:])
        report = agreed_report(problem)
        if report is not None:
            exit_together(report, EXIT_INVALID_INPUT)
    # torchtitan's main parses sys.argv again: give it the same arguments.
    sys.argv[1:] = with_phases_section(sys.argv[1:])
    if uses_embedded_assets(job_config):
        ensure_assets()
    phased = is_phased(get_train_spec(job_config.model.name))
    try:
        torchtitan.train.main(PhasedTrainer if phased else torchtitan.train.Trainer)
    except ScheduleMismatchError as exc:
        exit_together(f"titan_phases: cannot resume, nothing was changed: {exc}", EXIT_INVALID_INPUT)
    exit_process(0)


if __name__ == "__main__":
    main()
