"""metrics.jsonl's one reader: process starts, the last record of a step, torn last lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from titan_phases.components.metrics_file import (
    Metrics,
    METRICS_FILE,
    MetricsWriter,
    read_metrics,
)


def _train(step: int, loss: float, phase: int = 0) -> dict:
    return {"type": "train", "step": step, "loss": loss, "phase": phase}


def _transition(step: int, to_phase: int, reason: str = "max_transition_step") -> dict:
    return {"type": "transition", "step": step, "from_phase": to_phase - 1, "to_phase": to_phase,
            "reason": reason}


FIRST_START = [
    {"type": "run_start", "pid": 1},
    _train(1, 4.0), _train(2, 3.5),
    {"type": "validation", "step": 2, "loss": 3.6},
    _train(3, 3.2), _transition(3, 1), _train(4, 3.1, phase=1),
    {"type": "end", "step": 4, "reason": "preempted (SIGTERM)"},
]
# Resumed from the checkpoint of step 2: steps 3 and 4 and the transition again, with other
# values (a restart on other kernels, say), then on to step 5.
SECOND_START = [
    {"type": "run_start", "pid": 2},
    _train(3, 3.25), _transition(3, 1, "validation plateau"), _train(4, 3.0, phase=1),
    {"type": "validation", "step": 4, "loss": 3.1}, _train(5, 2.9, phase=1),
]


def _write(path: Path, records: list[dict], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_a_run_that_never_stopped(tmp_path: Path):
    metrics = read_metrics(_write(tmp_path / METRICS_FILE, FIRST_START))
    assert metrics.starts == 1
    assert {step: r["loss"] for step, r in metrics.train.items()} == {1: 4.0, 2: 3.5, 3: 3.2,
                                                                      4: 3.1}
    assert list(metrics.validation) == [2]
    assert metrics.transitions == {1: _transition(3, 1)}
    assert metrics.end == FIRST_START[-1]
    assert list(metrics.records) == FIRST_START


def test_a_resumed_run_keeps_the_last_record_of_each_repeated_step(tmp_path: Path):
    metrics = read_metrics(_write(tmp_path / METRICS_FILE, FIRST_START + SECOND_START))
    assert metrics.starts == 2
    assert {step: r["loss"] for step, r in metrics.train.items()} == {
        1: 4.0, 2: 3.5, 3: 3.25, 4: 3.0, 5: 2.9,
    }
    assert list(metrics.train) == [1, 2, 3, 4, 5]
    assert metrics.transitions[1]["reason"] == "validation plateau"
    assert list(metrics.validation) == [2, 4]
    # The first start's early end did not end the run: the second start went on.
    assert metrics.end is None
    # Readers that need every record get them in file order, repeated steps included.
    assert [r["loss"] for r in metrics.of_type("train")] == [4.0, 3.5, 3.2, 3.1, 3.25, 3.0, 2.9]
    assert list(metrics.records) == FIRST_START + SECOND_START


def test_the_last_start_alone(tmp_path: Path):
    last = read_metrics(_write(tmp_path / METRICS_FILE, FIRST_START + SECOND_START)
                        ).since_last_start()
    assert last.starts == 1
    assert list(last.train) == [3, 4, 5]
    assert list(last.validation) == [4]
    assert list(last.records) == SECOND_START


def test_a_torn_last_line_of_a_job_still_writing_is_left_out(tmp_path: Path):
    path = _write(tmp_path / METRICS_FILE, FIRST_START[:3], tail='{"type": "train", "step": 3, "lo')
    metrics = read_metrics(path)
    assert list(metrics.train) == [1, 2]
    assert list(metrics.records) == FIRST_START[:3]
    # A complete record whose newline is not written yet is left out too.
    path = _write(tmp_path / METRICS_FILE, FIRST_START[:3], tail=json.dumps(_train(3, 3.2)))
    assert list(read_metrics(path).train) == [1, 2]


def test_a_line_torn_by_a_killed_process_is_ended_by_the_restart_and_left_out(tmp_path: Path):
    path = _write(tmp_path / METRICS_FILE, FIRST_START[:3], tail='{"type": "train", "st')
    writer = MetricsWriter(path)
    writer.write(_train(3, 3.2))
    writer.close()
    metrics = read_metrics(path)
    assert metrics.starts == 2
    assert {step: r["loss"] for step, r in metrics.train.items()} == {1: 4.0, 2: 3.5, 3: 3.2}


def test_a_damaged_line_elsewhere_is_an_error_naming_the_file_and_line(tmp_path: Path):
    path = tmp_path / METRICS_FILE
    lines = [json.dumps(r) for r in FIRST_START]
    lines[2] = lines[2][:10]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{path}:3: not a JSON object"):
        read_metrics(path)


def test_the_dump_folder_stands_for_its_metrics_file(tmp_path: Path):
    _write(tmp_path / METRICS_FILE, FIRST_START)
    assert read_metrics(tmp_path) == read_metrics(tmp_path / METRICS_FILE)
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "elsewhere")


def test_records_in_memory_follow_the_same_rule():
    assert Metrics.from_records(FIRST_START + SECOND_START).train[3]["loss"] == 3.25
    assert Metrics.from_records([]) == Metrics()


def test_the_writer_starts_each_process_with_a_run_start_and_flushes_every_line(tmp_path: Path):
    path = tmp_path / "run" / METRICS_FILE
    writer = MetricsWriter(path)
    writer.write(_train(1, 4.0))
    # Readable while the writer is open: a kill loses nothing it logged.
    metrics = read_metrics(path)
    assert metrics.starts == 1 and metrics.records[0]["pid"] > 0 and list(metrics.train) == [1]
    writer.close()
    MetricsWriter(path).close()
    assert read_metrics(path).starts == 2


def test_reading_imports_neither_torch_nor_torchtitan():
    code = (
        "import sys\n"
        "import titan_phases.components.metrics_file\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchtitan')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
