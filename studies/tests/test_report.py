"""STUDIES.md's generated section, and the cross-check's tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest

from studies.forgetting.evaluate import cross_check, CrossCheckError
from studies.forgetting.report import (
    BEGIN,
    END,
    fmt,
    matched_a_loss,
    mib,
    pareto,
    render,
    update_markdown,
)


def _spread(mean: float, n: int = 3) -> dict[str, float]:
    return {"mean": mean, "std": 0.1, "min": mean - 0.2, "max": mean + 0.1, "n": n}


def test_fmt() -> None:
    assert fmt(_spread(1.5)) == "1.500 ± 0.100 [1.300, 1.600]"
    assert fmt(_spread(0.5, n=1), signed=True) == "+0.500"


def test_pareto() -> None:
    finals = {"full": (1.0, 5.0), "head": (2.0, 3.0), "worse": (2.5, 3.5), "same": (1.0, 5.0)}
    assert pareto(finals) == ["full", "head", "same"]
    # A third value (bytes per rank): "worse" now wins on it.
    assert pareto({"a": (1.0, 5.0, 9), "b": (2.0, 3.0, 9), "c": (2.5, 3.5, 1)}) == ["a", "b", "c"]


def test_mib() -> None:
    assert mib([2 * 1024**2, 2 * 1024**2]) == "2.00"
    assert mib([1024**2, 3 * 1024**2]) == "1.00-3.00"


def _results() -> dict:
    points = [{"step": s, "b_loss": _spread(b), "a_loss": _spread(a), "flops": _spread(f),
               "time_s": _spread(t)} for s, b, a, f, t in ((0, 5.0, 3.0, 0.0, 0.0),
                                                            (10, 4.0, 3.4, 1e12, 8.0))]
    mb = 1024**2
    full_peak = [{"phase": 0, "params": 4 * mb, "masters": 0, "grads": 4 * mb,
                  "optimizer_state": 8 * mb, "total": 16 * mb}] * 2
    low_peak = [{"phase": 1, "params": 2 * mb, "masters": mb, "grads": mb // 2,
                 "optimizer_state": 2 * mb, "total": 5 * mb + mb // 2}] * 2
    run = {"strategy": "full", "points": [
        {"step": 0, "b_loss": 5.0, "a_loss": 3.0, "b_loss_logged": None},
        {"step": 10, "b_loss": 4.0, "a_loss": 3.4, "b_loss_logged": 4.0000001}],
        "bytes": {"peak": full_peak, "checked": 2}}
    low_run = {"strategy": "low", "points": [
        {"step": 0, "b_loss": 5.0, "a_loss": 3.0, "b_loss_logged": None},
        {"step": 10, "b_loss": 4.5, "a_loss": 3.2, "b_loss_logged": 4.5,
         "saved": {"b_loss": 4.4999, "a_loss": 3.2002}}],
        "bytes": {"peak": low_peak, "checked": 4}}
    low_points = [{**p, "b_loss": _spread(b), "a_loss": _spread(a)}
                  for p, b, a in zip(points, (5.0, 4.5), (3.0, 3.2))]
    return {
        "generated": "2026-01-01T00:00:00", "command": "python -m studies.forgetting",
        "wall_s": 60.0,
        "machine": {"cpu": "CPU", "cores": 2, "ram_gib": 24.0, "load_before": 1.0,
                    "load_after": 1.5},
        "versions": {"python": "3.11", "torch": "2.13", "torchtitan": "0.2.2",
                     "titan_phases": "git abc"},
        "settings": {"eval_every": 10, "steps": 10, "validation_steps": 4, "seeds": [0, 1, 2]},
        "budget": {"steps": 10, "ranks": 2, "local_batch_size": 4, "seq_len": 256,
                   "tokens": 20480},
        "pretrain": {"steps": 100, "wall_s": 90.0, "a_loss": 3.0, "b_loss": 5.0},
        "strategies": {"full": {"description": "everything", "storage_dtype": "float32",
                                "variant_of": None},
                       "low": {"description": "less", "storage_dtype": "bfloat16",
                               "variant_of": "full"}},
        "summary": {
            "full": {"points": points, "bytes_peak": full_peak, "final": {
                **{q: points[-1][q] for q in ("b_loss", "a_loss", "flops", "time_s")},
                "a_increase": _spread(0.4)}},
            "low": {"points": low_points, "bytes_peak": low_peak, "final": {
                **{q: low_points[-1][q] for q in ("b_loss", "a_loss", "flops", "time_s")},
                "a_increase": _spread(0.2)}},
        },
        "runs": [run, low_run],
        "seed_check": {"strategy": "full", "debug_seeds": [0, 1000], "losses_compared": 12,
                       "identical": True, "max_abs_loss_diff": 0.0},
    }


def test_update_markdown_replaces_only_the_generated_section(tmp_path: Path) -> None:
    path = tmp_path / "STUDIES.md"
    path.write_text(f"# Title\n\nhand-written\n\n{BEGIN}\nthe previous run\n{END}\n\n"
                    "## Reading\n\nmine\n")
    update_markdown(path, _results(), Path("docs/images"))
    text = path.read_text()
    assert text.startswith("# Title\n\nhand-written\n\n" + BEGIN)
    assert text.endswith(END + "\n\n## Reading\n\nmine\n")
    assert "the previous run" not in text
    assert "![B loss against A loss per strategy](docs/images/study_tradeoff.png)" in text
    assert "| `full` | everything | 4.000 ± 0.100 [3.800, 4.100] |" in text
    assert "all 2 checked points (largest relative difference 2.5e-08)" in text
    assert "all 12 logged losses identical" in text
    assert "![Final losses against bytes per rank](docs/images/study_bytes.png)" in text


def test_bytes_table_and_observations() -> None:
    text = render(_results(), Path("docs/images"))
    assert "| `full` | float32 | 4.00 | 0.00 | 4.00 | 8.00 | 16.00 | 100% |" in text
    assert "| `low` | bfloat16 | 2.00 | 1.00 | 0.50 | 2.00 | 5.50 | 34% |" in text
    assert "every phase on every rank of all 2 runs (6 phase-rank entries)" in text
    assert "Fewest bytes per rank: `low` (5.50 MiB, 34% of `full`)." in text
    assert "B loss, A loss and bytes per rank together (final means): `full`, `low`." in text
    assert ("`low` against `full` (weights in bfloat16 against float32): 5.50 against 16.00 MiB "
            "per rank; final B loss 4.5000 against 4.0000 (+0.5000), A loss 3.2000 against "
            "3.4000 (-0.2000).") in text
    assert "`low`'s final checkpoints as saved" in text
    assert "B loss -1.0e-04, A loss +2.0e-04 (largest difference over 1 seed(s))" in text


def test_cross_check_tolerance() -> None:
    cross_check(4.0000001, 4.0, "here")
    with pytest.raises(CrossCheckError, match="here"):
        cross_check(4.001, 4.0, "here")


def test_matched_a_loss() -> None:
    points = [{"b_loss": _spread(b), "a_loss": _spread(a)}
              for b, a in ((5.0, 3.0), (3.0, 4.0), (2.0, 6.0))]
    assert matched_a_loss(points, 4.0) == pytest.approx(3.5)
    assert matched_a_loss(points, 2.5) == pytest.approx(5.0)
    assert matched_a_loss(points, 1.0) is None
