"""``metrics.jsonl``: the file a phased job writes its metrics to, and the one way to read it.

The file is append-only, one JSON object per line, written by the metrics rank (see
:mod:`titan_phases.components.metrics` for the ``train`` and ``validation`` records' keys).
:class:`MetricsWriter` owns the writing; :func:`read_metrics` is the reader every consumer uses
(the timeline that ``titan-phases plot`` draws, the benchmark, the study, the tests). The rule
it implements:

* each process start begins with a ``{"type": "run_start", ...}`` line, so a resumed run's
  file holds several starts, and the steps a restart repeats after its last checkpoint appear
  once per start that logged them;
* the last record of a step wins (and the last transition into a phase);
* a torn last line is left out: the file's last line without its newline (a job still
  writing it), or a line that is not JSON right before a ``run_start`` (a process killed while
  writing it; the writer ends such a line before it starts its own).

**Limitations**
Any other line that is not a JSON object is an error, not skipped: the writer writes each
record and its newline in one call, so only a process's last line can be torn.
``end`` is that of the last process start, since a start that ended early (preempted, say)
and was then resumed did not end the run. Imports neither torch nor torchtitan, so that the
plot command reads a file without them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["METRICS_FILE", "Metrics", "MetricsWriter", "read_metrics"]

METRICS_FILE = "metrics.jsonl"

Record = dict[str, Any]


def _ends_mid_line(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


class MetricsWriter:
    """Appends records to the metrics file at ``path``, each line flushed as it is written so
    that a killed job loses nothing it logged; a ``run_start`` line marks this process start."""

    def __init__(self, path: str | os.PathLike) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = Path(path)
        torn = _ends_mid_line(self.path)
        self._file = open(path, "a", buffering=1)
        if torn:
            self._file.write("\n")
        self.write({"type": "run_start", "time": time.time(), "pid": os.getpid()})

    def write(self, record: Record) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class Metrics:
    """What a metrics file holds, read by the rule of :func:`read_metrics`."""

    records: tuple[Record, ...] = ()
    """Every complete record in file order, ``run_start`` lines included."""
    starts: int = 0
    """Process starts: 1 for a run that never stopped."""
    train: dict[int, Record] = field(default_factory=dict)
    """``{step: the last train record of that step}``, in step order."""
    validation: dict[int, Record] = field(default_factory=dict)
    """``{step: the last validation record of that step}``, in step order."""
    transitions: dict[int, Record] = field(default_factory=dict)
    """``{phase entered: the last transition record into it}``, in phase order."""
    end: Record | None = None
    """The ``end`` record of the last process start: why training ended early, if it did."""

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> Metrics:
        """Complete records in file order, read by the rule of :func:`read_metrics`."""
        records = tuple(records)
        by_kind: dict[str, dict[int, Record]] = {"train": {}, "validation": {}, "transition": {}}
        starts, end = 0, None
        for record in records:
            kind = record.get("type")
            if kind == "run_start":
                starts, end = starts + 1, None
            elif kind == "end":
                end = record
            elif kind in by_kind:
                key = record["to_phase"] if kind == "transition" else record["step"]
                by_kind[kind][key] = record
        return cls(
            records=records, starts=starts,
            train=dict(sorted(by_kind["train"].items())),
            validation=dict(sorted(by_kind["validation"].items())),
            transitions=dict(sorted(by_kind["transition"].items())),
            end=end,
        )

    def since_last_start(self) -> Metrics:
        """Only what the last process start wrote."""
        last = max((i for i, r in enumerate(self.records) if r.get("type") == "run_start"),
                   default=0)
        return Metrics.from_records(self.records[last:])

    def of_type(self, kind: str) -> list[Record]:
        """Every record of ``kind`` in file order, repeated steps included."""
        return [r for r in self.records if r.get("type") == kind]


def _record(line: str) -> Record | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read_metrics(path: str | os.PathLike) -> Metrics:
    """The metrics file at ``path`` (the file, or the job's dump folder that holds it).

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: a line other than a torn last one is not a JSON object (names the file
            and the line).
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    # The text after the last newline is empty, or the line a running job is writing.
    lines = enumerate(path.read_text().split("\n")[:-1], start=1)
    parsed = [(number, _record(line)) for number, line in lines if line.strip()]
    records = []
    for (number, record), (_, following) in zip(parsed, [*parsed[1:], (0, None)]):
        if record is not None:
            records.append(record)
        elif following is None or following.get("type") != "run_start":
            raise ValueError(f"{path}:{number}: not a JSON object")
    return Metrics.from_records(records)
