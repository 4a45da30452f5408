"""Launches of ranks and jobs from tests: only tests marked ``e2e`` may start one, and each
launch's wall time is logged.

A launch is anything that starts ranks or a job: torchrun, ``run_train.sh``, processes spawned
by ``torch.multiprocessing``, a study or benchmark that runs jobs, a virtualenv built by the
offline-install tests. Each costs seconds of imports per process on a small machine, which is
what the quick tier (``./run_tests.sh -m "not e2e"``) leaves out.

The launch helpers (``tests.dist.run_ranks``, ``tests.trainer.jobs.run_job`` and
:func:`run`) go through :func:`launch`, which fails the running test unless it is marked
``e2e`` and times the launch. A launch that bypasses them is still caught: a subprocess whose
command line starts one of the launchers above, or any ``multiprocessing`` process started in a
test without the marker, fails that test too. The check applies to the test being run,
including the session or module fixtures it sets up first.

At the end of the session the slowest ten launches are printed, with the number of launches
and their summed wall time; ``--launch-log PATH`` writes every launch as a JSON line.

Loaded by the repository's root ``conftest.py`` as a pytest plugin.
"""

from __future__ import annotations

import json
import multiprocessing.process
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

# Module names run with ``-m`` and file names that start ranks or jobs, or build a virtualenv.
_LAUNCHING_MODULES = {
    "torch.distributed.run", "titan_phases.train", "studies.forgetting", "bench.run", "venv",
}
_LAUNCHING_FILES = ("torchrun", "run_train.sh", "bootstrap.sh", "build_wheelhouse.sh")


@dataclass(frozen=True)
class Launch:
    test: str
    what: str
    seconds: float


_current: pytest.Item | None = None
_launches: list[Launch] = []


def _refuse_unless_e2e(what: str) -> None:
    if _current is not None and _current.get_closest_marker("e2e") is None:
        pytest.fail(
            f"{_current.nodeid} launches {what} but is not marked e2e: add "
            "@pytest.mark.e2e (or pytestmark = pytest.mark.e2e), so that the quick tier "
            "(-m 'not e2e') leaves it out",
            pytrace=False,
        )


@contextmanager
def launch(what: str) -> Iterator[None]:
    """Count what runs inside as one launch of ``what`` by the running test (which must be
    marked ``e2e``) and log its wall time."""
    _refuse_unless_e2e(what)
    test = _current.nodeid if _current is not None else "(outside a test)"
    started = time.monotonic()
    try:
        yield
    finally:
        _launches.append(Launch(test, what, time.monotonic() - started))


def run(what: str, command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(command, **kwargs)`` as one launch of ``what``."""
    with launch(what):
        return subprocess.run(command, **kwargs)


def _starts_a_launcher(args: Sequence[Any]) -> bool:
    words = [str(a) for a in args]
    after_m = {b for a, b in zip(words, words[1:]) if a == "-m"}
    return bool(after_m & _LAUNCHING_MODULES) or any(
        name in word for word in words for name in _LAUNCHING_FILES
    )


def _audit(event: str, args: tuple) -> None:
    if event == "subprocess.Popen" and _starts_a_launcher(args[1] or ()):
        _refuse_unless_e2e(" ".join(map(str, args[1]))[:200])


_process_start = multiprocessing.process.BaseProcess.start


def _checked_process_start(self: multiprocessing.process.BaseProcess) -> None:
    _refuse_unless_e2e(f"a {type(self).__name__}")
    _process_start(self)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--launch-log", metavar="PATH",
                     help="write every launch of ranks or jobs as a JSON line to PATH")


def pytest_configure(config: pytest.Config) -> None:
    # An audit hook cannot be removed; it does nothing outside a test without the marker.
    sys.addaudithook(_audit)
    multiprocessing.process.BaseProcess.start = _checked_process_start


def pytest_unconfigure(config: pytest.Config) -> None:
    multiprocessing.process.BaseProcess.start = _process_start


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator:
    global _current
    _current = item
    try:
        return (yield)
    finally:
        _current = None


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    path = config.getoption("--launch-log")
    if path:
        with open(Path(path), "w") as log:
            for entry in _launches:
                log.write(json.dumps(asdict(entry)) + "\n")
    if not _launches:
        return
    total = sum(entry.seconds for entry in _launches)
    terminalreporter.section(f"launches: {len(_launches)}, {total:.0f} s of wall time in all")
    for entry in sorted(_launches, key=lambda e: e.seconds, reverse=True)[:10]:
        what = entry.what if len(entry.what) <= 100 else entry.what[:97] + "..."
        terminalreporter.write_line(f"{entry.seconds:7.1f}s  {entry.test}  {what}")
