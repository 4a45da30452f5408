"""Rendering results as BENCHMARKS.md's generated section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.cyclic import targets as cyclic_targets
from bench.report import (
    BEGIN,
    CYCLIC_BEGIN,
    CYCLIC_END,
    END,
    fmt,
    layout_markers,
    merge_blocks,
    render,
    update_markdown,
)
from bench.summary import layout_targets, targets
from bench.tests.synthetic import cyclic_row


@pytest.fixture
def layout(model_summary: dict[str, Any]) -> dict[str, Any]:
    layout = {**model_summary, "title": "FSDP2 x TP2", "ranks": 4,
              "args": ["--parallelism.tensor_parallel_degree", "2"]}
    return {**layout, "targets": layout_targets(layout)}


@pytest.fixture
def results(model_summary: dict[str, Any], layout: dict[str, Any]) -> dict[str, Any]:
    return {
        "generated": "2026-01-01T00:00:00", "command": "python -m bench.run", "wall_s": 600.0,
        "machine": {"cpu": "CPU", "cores": 2, "ram_gib": 24.0, "load_before": 1.0,
                    "load_after": 2.0,
                    "cpu_busy_before_jobs": {"median": 0.1, "low": 0.0, "high": 0.5, "n": 4}},
        "versions": {"python": "3.11", "torch": "2.13", "torchtitan": "0.2.2",
                     "titan_phases": "git abc"},
        "config": {"job": "job", "steps": "steps", "settings": {"nproc": 2}},
        "main": "2", "targets": targets(model_summary),
        "models": {"2": {**model_summary,
                         "overhead": {**model_summary["overhead"], "controller_due_us": 0.3}}},
        "layouts": {"fsdp2_tp2": layout},
    }


def test_fmt() -> None:
    stat = {"median": 0.5, "low": 0.25, "high": 1.0, "n": 3}
    assert fmt(stat, 2) == "0.50 [0.25, 1.00]"
    assert fmt(stat, 1, pct=True) == "+50.0% [+25.0%, +100.0%]"
    assert fmt({**stat, "n": 1}, 1, scale=1000) == "500.0"
    assert fmt({**stat, "n": 0}) == "–"


def test_render_has_every_section(results: dict[str, Any]) -> None:
    text = render(results)
    assert text.startswith(BEGIN) and text.rstrip().endswith(END)
    for heading in ("Configuration", "Targets", "Step time per phase", "Transitions",
                    "Optimizer state per rank", "Controller overhead", "Scaling"):
        assert f"### {heading}" in text
    assert "**missed**" in text  # the synthetic transition costs 1.2 steps
    assert "| 0 -> 1 | 20.0 [20.0, 20.0] |" in text


def test_render_a_layout(results: dict[str, Any]) -> None:
    text = render(results)
    section = text.split("### Step time per phase: llama3 `tiny` (2 blocks), FSDP2 x TP2, "
                         "4 ranks on CPU", 1)[1]
    assert "4 ranks on 2 cores: the CPU is oversubscribed" in section
    assert "these jobs took 1.0 min of the run" in section  # 3 jobs of 10 s, 2 repeats
    # phase 0 against stock on the same layout: 0.5 and 0.525 over the two repeats
    assert "| phased, phase 0 | 40 | " in section and "| 0.512 [0.500, 0.525] | 0.500 |" in section
    state = section.split("### Optimizer state per rank: FSDP2 x TP2", 1)[1]
    # no 1-D FSDP formula on a 2-D layout
    assert "8 B x params" not in state and "| 0 | 40 | 1 | 164, 164 | 164, 164 | yes |" in state
    assert ("Target: FSDP2 x TP2: optimizer state bytes per rank exactly as expected, every "
            "phase: met." in state)
    begin, end = layout_markers("fsdp2_tp2")
    assert text.index(begin) < text.index("FSDP2 x TP2, 4 ranks") < text.index(end)
    assert "From the run of `python -m bench.run` on 2026-01-01T00:00:00 (10.0 min;" in section


def test_render_a_layout_alone(results: dict[str, Any]) -> None:
    text = render({**results, "main": None, "models": {}})
    assert "### Transitions" not in text and "### Controller overhead" not in text
    assert "### Scaling" not in text
    assert "### Optimizer state per rank: FSDP2 x TP2" in text


def test_update_markdown_keeps_the_prose(tmp_path: Path, results: dict[str, Any]) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Title\n\nintro\n\n{BEGIN}\nold\n{END}\n\n## After\n")
    update_markdown(path, results)
    text = path.read_text()
    assert text.startswith("# Title\n\nintro\n\n" + BEGIN)
    assert "old" not in text and text.endswith(f"{END}\n\n## After\n")
    update_markdown(path, results)
    assert path.read_text() == text


def test_merge_blocks_keeps_the_other_runs_figures(
    tmp_path: Path, results: dict[str, Any]
) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Title\n\n{BEGIN}\nfull run\n{END}\n\n## After\n")
    alone = {**results, "generated": "2026-02-02T00:00:00", "main": None, "models": {}}
    merge_blocks(path, alone)
    text = path.read_text()
    begin, end = layout_markers("fsdp2_tp2")
    assert text.startswith(f"# Title\n\n{BEGIN}\nfull run\n{begin}")
    assert text.endswith(f"{end}\n\n{END}\n\n## After\n")
    assert "on 2026-02-02T00:00:00" in text
    merge_blocks(path, {**alone, "generated": "2026-03-03T00:00:00"})
    again = path.read_text()
    assert "on 2026-03-03T00:00:00" in again and "2026-02-02" not in again
    assert again == text.replace("2026-02-02", "2026-03-03")


def test_merge_blocks_needs_a_generated_section(tmp_path: Path, results: dict[str, Any]):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Title\n")
    with pytest.raises(ValueError, match="no generated section"):
        merge_blocks(path, results)


def test_a_full_run_renders_the_block_merge_replaces(results: dict[str, Any]) -> None:
    begin, end = layout_markers("fsdp2_tp2")
    text = render(results)
    assert text.count(begin) == 1 and text.index(end) < text.index(END)


def test_render_a_pipeline_layout(results: dict[str, Any], layout: dict[str, Any]) -> None:
    pipeline = {"schedule": "1F1B", "microbatches": 4, "microbatch_size": 1,
                "stages": [["tok_embeddings", "layers.0"], ["layers.1", "norm", "output"]]}
    pp = {**layout, "title": "PP2 (1F1B)", "ranks": 2, "metrics_rank": 1, "pipeline": pipeline,
          "args": ["--parallelism.pipeline_parallel_degree", "2"]}
    text = render({**results, "layouts": {"pp2": pp}})
    begin, end = layout_markers("pp2")
    section = text.split(begin, 1)[1].split(end, 1)[0]
    assert "PP2 (1F1B), 2 ranks on CPU" in section and "oversubscribed" not in section
    assert ("Pipeline: schedule 1F1B, 4 microbatches of 1 sample per step (the local batch). "
            "stage 0: `tok_embeddings`, `layers.0`; stage 1: `layers.1`, `norm`, `output`. "
            "Step times and peak RSS are rank 1's") in section
    assert "peak RSS GiB (rank 1)" in section
    assert "Pipeline:" not in render(results)  # layouts without PP


@pytest.fixture
def with_cyclic(results: dict[str, Any]) -> dict[str, Any]:
    row = {**cyclic_row(), "depth": 2, "flavor": "tiny", "stock_model": "llama3",
           "phased_model": "llama3_phases", "ranks": 2, "steps_per_phase": 4,
           "cycle_args": ["--phases.cycle.enable"],
           "matmul_gflops": {"float32": 90.0, "bfloat16": 160.0}}
    row["targets"] = cyclic_targets(row)
    machine = {**results["machine"], "cpu_flags": ["avx2", "avx512_bf16"]}
    return {**results, "machine": machine, "cyclic": row}


def test_render_the_cyclic_row(with_cyclic: dict[str, Any]) -> None:
    text = render(with_cyclic)
    section = text.split(CYCLIC_BEGIN, 1)[1].split(CYCLIC_END, 1)[0]
    assert CYCLIC_END in text and text.index(CYCLIC_END) < text.index(END)
    assert "### Block-cyclic fine-tuning: llama3 `tiny` (2 blocks), 2 ranks FSDP2 on CPU" in section
    assert "vector flags avx2, avx512_bf16; one thread's 90 GFLOP/s in float32 and 160" in section
    # phase 1 trains block 0 at 0.8 of stock: its FLOP ideal 0.8, plan's 1.0
    assert ("| phase 1 | block 0 | 60 | 1.500 [1.000, 2.000] | 0.800 [0.800, 0.800] | 0.800 | "
            "1.00 [1.00, 1.00] | 1.000 | 0.80 [0.80, 0.80] | 20.0 [10.0, 30.0] | "
            "0.50 [0.50, 0.50] |") in section
    # bytes: both phases alike, so one row per job
    assert ("| bfloat16 storage + fp32 masters, float32 compute | 0-1 | 200 / 200 | 100 / 100 | "
            "50 / 50 | 204 / 204 | 554 / 554 | yes |") in section
    assert "| bfloat16 | float32 | yes | 0.00 / 0.00 | 1.03 [0.98, 1.08] |" in section
    assert "| 1 | 0 | 1.500 [1.000, 2.000] | 1.05 [1.00, 1.10] |" in section
    assert ("Target: block-cyclic, bf16_storage: params, fp32 masters, grads and optimizer "
            "state bytes per rank exactly as planned, every phase: met.") in section


def test_cyclic_bytes_that_differ_from_plan_show_both(with_cyclic: dict[str, Any]) -> None:
    row = with_cyclic["cyclic"]
    fp32 = row["variants"]["fp32"]
    phase = fp32["phases"][1]
    grads = {"expected": [100, 100], "measured": [[100, 96]], "exact": False}
    wrong = {**phase, "held": {**phase["held"], "grad_bytes": grads}}
    fp32 = {**fp32, "phases": [fp32["phases"][0], wrong]}
    text = render({**with_cyclic, "cyclic": {**row, "variants": {**row["variants"],
                                                                   "fp32": fp32}}})
    assert "| float32 storage, float32 compute | 0 | 400 / 400 |" in text
    assert ("| float32 storage, float32 compute | 1 | 400 / 400 | 0 / 0 | 100 / 96 | 204 / 204 "
            "| 704 / 700 | **no**, plan: 400 / 400 ; 0 / 0 ; 100 / 100 ; 204 / 204 |") in text


def test_merge_blocks_replaces_the_cyclic_block(
    tmp_path: Path, with_cyclic: dict[str, Any]
) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Title\n\n{BEGIN}\nfull run\n{END}\n")
    alone = {**with_cyclic, "main": None, "models": {}, "layouts": {}}
    merge_blocks(path, alone)
    merge_blocks(path, {**alone, "generated": "2026-03-03T00:00:00"})
    text = path.read_text()
    assert text.count(CYCLIC_BEGIN) == 1 and "on 2026-03-03T00:00:00" in text
    assert text.startswith(f"# Title\n\n{BEGIN}\nfull run\n{CYCLIC_BEGIN}")
