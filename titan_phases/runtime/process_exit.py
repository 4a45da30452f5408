"""End a training process without tearing down the Python interpreter.

``torch.distributed.destroy_process_group()`` unregisters a gloo process group but does not
stop its C++ worker threads while anything still references the group, and FSDP2 leaves such
references in DTensor's module-level caches (sharding propagation, redistribute planners).
Those threads are then destroyed during interpreter finalization, which on torch 2.13 can
abort a process whose job had finished cleanly ("terminate called without an active
exception", SIGABRT); torchrun then reports the whole job as failed. It is a race: it hits a
rank that leaves right after its last collective, which in torchtitan is every rank but 0
(rank 0 sleeps two seconds first). ``tests/runtime/leave_after_collective.py`` reproduces it.

:func:`exit_process` does what a normal exit does for the program (stops thread pools, waits
for non-daemon threads, runs ``atexit`` handlers, flushes the standard streams) and then ends
the process with ``os._exit``, so finalization never runs.

**Limitations**
Objects still alive at that point are not finalized: their ``__del__`` methods and weakref
callbacks do not run. Whatever must reach disk has to be closed before (torchtitan's
``Trainer.close()`` closes the checkpointer and the metric writers). An uncaught exception
still leaves through the normal interpreter exit, so a job that already failed may report
SIGABRT instead of exit code 1; its traceback is printed before that either way.
Relies on two private CPython helpers, the ones a normal exit runs: ``threading._shutdown``
and ``atexit._run_exitfuncs``.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

EXIT_INVALID_INPUT = 2
"""Exit code of every titan_phases entry point for a user's mistake (config, schedule, flags,
files, a checkpoint the schedule cannot resume); nothing was run or written."""

EXIT_DIVERGED = 3
"""Training stopped at a non-finite loss, before saving that step (``phases.nonfinite_loss``)."""

EXIT_SAVE_FAILED = 74
"""A checkpoint could not be written (a full disk): training stopped at that save; the
checkpoints before it are intact. 74 is EX_IOERR of BSD's sysexits."""

EXIT_PREEMPTED = 75
"""SIGTERM: the step in progress was finished and saved in full; rerun the same command to
continue. 75 is EX_TEMPFAIL of BSD's sysexits, "try again later"."""

EXIT_INTERRUPTED = 130
"""SIGINT (Ctrl-C, which torchrun passes on to every rank): the step in progress was finished
and saved in full, as for SIGTERM; rerun the same command to continue. 130 is 128 + SIGINT,
what shells report for a command ended by Ctrl-C; unlike 75 it does not ask a scheduler to run
the job again."""


def exit_process(code: int) -> NoReturn:
    """Exit with ``code`` after the program's own exit work, skipping interpreter finalization."""
    # What the interpreter does first on exit: tell thread pools to stop (concurrent.futures
    # hooks in here, e.g. DCP's async save executor), then join the non-daemon threads.
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
