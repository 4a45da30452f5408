"""The cyclic row's figures on synthetic runs: ratios per phase against stock, the FLOP ideals
and the fp32 job, switch costs, bytes against plan, per-rank peak RSS, and the targets."""

from __future__ import annotations

from typing import Any

import pytest

from bench.cyclic import summarize, targets, Variant, VARIANTS
from bench.tests.synthetic import (
    cyclic_facts,
    cyclic_job,
    cyclic_row,
    FP32_HELD,
    stock_job,
)


@pytest.fixture
def row() -> dict[str, Any]:
    return cyclic_row()


def test_phases_against_stock_and_the_ideals(row: dict[str, Any]) -> None:
    assert [p["blocks"] for p in row["phases"]] == [[1], [0]]
    low = row["variants"]["fp32"]["phases"][1]
    assert low["ratio"]["median"] == pytest.approx(0.8)  # 1.0 / 1.25 and 2.0 / 2.5
    assert low["over_needed"]["median"] == pytest.approx(1.0)  # needed 0.8
    assert low["over_plan"]["median"] == pytest.approx(0.8)  # plan charges frozen weights: 1.0
    assert row["variants"]["fp32"]["phases"][0]["over_plan"]["median"] == pytest.approx(0.8)


def test_switch_cost(row: dict[str, Any]) -> None:
    fp32 = row["variants"]["fp32"]
    assert fp32["phases"][0]["transition"] is None
    switch = fp32["phases"][1]["transition"]
    assert (switch["switch_ms"]["low"], switch["switch_ms"]["high"]) == pytest.approx((10, 30))
    assert switch["first_step_extra_s"]["low"] == pytest.approx(0.5)
    assert switch["cost_in_steps"]["median"] == pytest.approx(0.5)
    assert fp32["switch_ms"]["median"] == pytest.approx(20)


def test_dtype_ratios_within_a_repeat(row: dict[str, Any]) -> None:
    bf16 = row["variants"]["bf16_storage"]
    assert bf16["phases"][1]["ratio_to_reference"]["low"] == pytest.approx(1.0)
    assert bf16["phases"][1]["ratio_to_reference"]["high"] == pytest.approx(1.1)
    assert bf16["ratio_to_reference"]["median"] == pytest.approx(1.05)
    assert bf16["mean_steady_s"]["low"] == pytest.approx(0.75)
    assert (bf16["masters"], bf16["storage"], bf16["compute"]) == (True, "bfloat16", "float32")


def test_peak_rss_per_rank(row: dict[str, Any]) -> None:
    # rank 0 peaks at its last step (0.9 + 8 / 100 in the first repeat, 1.08 in the second)
    rank0, rank1 = row["variants"]["bf16_storage"]["rank_peak_rss_gib"]
    assert (rank0["low"], rank0["high"]) == pytest.approx((0.98, 1.08))
    assert rank1["median"] == pytest.approx(1.45)
    assert [s["median"] for s in row["stock"]["rank_peak_rss_gib"]] == pytest.approx([2.0, 2.1])
    phase = row["variants"]["fp32"]["phases"][0]
    assert phase["rank_peak_rss_gib"][0]["median"] == pytest.approx(1.04)


def test_bytes_against_plan(row: dict[str, Any]) -> None:
    held = row["variants"]["bf16_storage"]["phases"][0]["held"]
    assert held["master_bytes"] == {"expected": [100, 100], "measured": [[100, 100]],
                                    "exact": True}
    assert all(c["verdict"] == "met" for c in targets(row))


def test_bytes_that_differ_from_plan_miss() -> None:
    wrong = {**FP32_HELD, "grad_bytes": (100, 96)}
    variants = {"fp32": [cyclic_job(1.0, FP32_HELD), cyclic_job(1.0, wrong)]}
    row = summarize([stock_job(1.0), stock_job(1.0)], variants,
                    {"fp32": cyclic_facts(FP32_HELD)}, skip=2)
    grads = row["variants"]["fp32"]["phases"][1]["held"]["grad_bytes"]
    assert grads["measured"] == [[100, 96], [100, 100]] and not grads["exact"]
    (check,) = targets(row)
    assert check["target"].startswith("block-cyclic, fp32: params, fp32 masters")
    assert check["verdict"] == "missed"


def test_bytes_not_reported_miss() -> None:
    bare = cyclic_job(1.0, {})
    row = summarize([stock_job(1.0)], {"fp32": [bare]}, {"fp32": cyclic_facts(FP32_HELD)}, skip=2)
    assert not row["variants"]["fp32"]["bytes_exact"]


def test_every_repeat_needs_every_job() -> None:
    with pytest.raises(ValueError, match="every repeat"):
        summarize([stock_job(1.0)], {"fp32": []}, {"fp32": cyclic_facts(FP32_HELD)}, skip=2)


def test_variant_args() -> None:
    assert Variant("x", "float32", "float32").args == (
        "--training.mixed_precision_param", "float32")
    assert Variant("y", "bfloat16", "bfloat16").args == (
        "--training.dtype", "bfloat16", "--phases.fp32_master_weights",
        "--training.mixed_precision_param", "bfloat16")
    assert VARIANTS[0].name == "fp32" and not VARIANTS[0].masters
