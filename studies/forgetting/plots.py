"""The study's two figures, from ``results.json``'s summary (means over seeds, min-max spread).

* ``study_tradeoff.png``: B validation loss (x, adaptation) against A validation loss (y,
  forgetting), one line per strategy through its validation points, from the pretrained model
  (step 0) to the end of the budget; error bars span the seeds' min to max.
* ``study_losses.png``: both losses against cumulative FLOPs (left) and cumulative training
  step time (right), one line per strategy, shaded between the seeds' min and max;
* ``study_bytes.png``: the final B loss (left) and A loss (right) against the bytes per rank
  (params + fp32 masters + grads + optimizer state, the peak over phases; the larger rank's),
  one point per strategy, error bars from the seeds' min to max.

**Limitations**
Needs matplotlib (the project's optional ``plot`` extra); :func:`pyplot` raises
:class:`PlotUnavailable` without it. Uses the Agg backend (no display). Sizes are fixed
(:data:`SIZES`, at :data:`DPI`), so the PNGs' pixel sizes are too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 100
SIZES = {"tradeoff": (8.0, 6.0), "losses": (12.0, 8.0), "bytes": (12.0, 5.5)}
"""Figure size in inches of each plot; pixels = inches x DPI."""
FILES = {"tradeoff": "study_tradeoff.png", "losses": "study_losses.png",
         "bytes": "study_bytes.png"}
_TERA = 1e12
_MIB = 1024**2


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or :class:`PlotUnavailable`."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("the study's plots need matplotlib: pip install "
                              "'titan_phases[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(points: list[dict[str, Any]], quantity: str) -> tuple[list[float], ...]:
    """Mean, min and max of ``quantity`` over the points."""
    return tuple([p[quantity][stat] for p in points] for stat in ("mean", "min", "max"))


def _subtitle(results: dict[str, Any]) -> str:
    budget, settings = results["budget"], results["settings"]
    return (f"llama3 debugmodel, pretrained {results['pretrain']['steps']} steps on A; "
            f"fine-tuned {budget['steps']} steps x {budget['tokens_per_step']:,} tokens on B; "
            f"mean over {len(settings['seeds'])} data order(s), bars/bands: min-max")


def tradeoff(results: dict[str, Any]) -> Any:
    plt = pyplot()
    figure, ax = plt.subplots(figsize=SIZES["tradeoff"], dpi=DPI)
    for name, summary in results["summary"].items():
        points = summary["points"]
        (bx, blo, bhi), (ay, alo, ahi) = _series(points, "b_loss"), _series(points, "a_loss")
        ax.errorbar(bx, ay, xerr=[[m - lo for m, lo in zip(bx, blo)],
                                  [hi - m for m, hi in zip(bx, bhi)]],
                    yerr=[[m - lo for m, lo in zip(ay, alo)], [hi - m for m, hi in zip(ay, ahi)]],
                    marker="o", ms=4, capsize=2, lw=1.5, label=name)
        ax.annotate(f"{points[-1]['step']}", (bx[-1], ay[-1]), xytext=(4, 4),
                    textcoords="offset points", fontsize=8)
    first = next(iter(results["summary"].values()))["points"][0]
    ax.plot([first["b_loss"]["mean"]], [first["a_loss"]["mean"]], "k*", ms=12,
            label="pretrained (step 0)")
    ax.set_xlabel("B (recipes) validation loss: adaptation, lower is better")
    ax.set_ylabel("A (Python docs) validation loss: forgetting, lower is better")
    ax.set_title("Adaptation vs retention", fontsize=11)
    figure.suptitle(_subtitle(results), fontsize=8, y=0.995)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return figure


def losses(results: dict[str, Any]) -> Any:
    plt = pyplot()
    figure, axes = plt.subplots(2, 2, figsize=SIZES["losses"], dpi=DPI, sharey="row")
    for name, summary in results["summary"].items():
        points = summary["points"]
        x_flops = [p["flops"]["mean"] / _TERA for p in points]
        x_time = [p["time_s"]["mean"] for p in points]
        for row, quantity in enumerate(("b_loss", "a_loss")):
            mean, low, high = _series(points, quantity)
            for col, x in enumerate((x_flops, x_time)):
                ax = axes[row][col]
                (line,) = ax.plot(x, mean, marker="o", ms=3, label=name)
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, lw=0)
    for col, label in enumerate(("cumulative FLOPs (TFLOP, FLOP model)",
                                 "cumulative training step time (s, mean over seeds)")):
        axes[1][col].set_xlabel(label)
    axes[0][0].set_ylabel("B (recipes) validation loss")
    axes[1][0].set_ylabel("A (Python docs) validation loss")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=9)
    figure.suptitle("Adaptation (top) and forgetting (bottom) against cost\n"
                    + _subtitle(results), fontsize=10)
    return figure


def bytes_per_rank(summary: dict[str, Any]) -> int:
    """A strategy's bytes per rank: its peak total, on the rank holding the most."""
    return max(rank["total"] for rank in summary["bytes_peak"])


def quality_vs_bytes(results: dict[str, Any]) -> Any:
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=SIZES["bytes"], dpi=DPI, sharex=True)
    for i, (name, summary) in enumerate(results["summary"].items()):
        x = bytes_per_rank(summary) / _MIB
        bf16 = results["strategies"][name]["storage_dtype"] == "bfloat16"
        for ax, quantity in zip(axes, ("b_loss", "a_loss")):
            spread = summary["final"][quantity]
            ax.errorbar([x], [spread["mean"]], yerr=[[spread["mean"] - spread["min"]],
                                                     [spread["max"] - spread["mean"]]],
                        marker="s" if bf16 else "o", ms=6, capsize=3, color=f"C{i}",
                        label=name + (" (bf16 weights)" if bf16 else ""))
            # Below the point for bf16 storage: its fp32 twin often sits just right of it.
            ax.annotate(name, (x, spread["mean"]), xytext=(5, -11 if bf16 else 4),
                        textcoords="offset points", fontsize=8)
    figure.subplots_adjust(wspace=0.3)
    axes[0].set_ylabel("final B (recipes) validation loss: adaptation, lower is better")
    axes[1].set_ylabel("final A (Python docs) validation loss: forgetting, lower is better")
    for ax in axes:
        ax.set_xlabel("bytes per rank (MiB, peak over phases)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("Quality against what each rank holds: weights + fp32 masters + grads + "
                    "optimizer state (measured, equal to titan-phases plan)\n"
                    + _subtitle(results), fontsize=10)
    return figure


def write_plots(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Draw every figure into ``out``; return ``{name: path}``."""
    plt = pyplot()
    paths = {}
    for name, draw in (("tradeoff", tradeoff), ("losses", losses), ("bytes", quality_vs_bytes)):
        figure = draw(results)
        paths[name] = out / FILES[name]
        figure.savefig(paths[name], dpi=DPI)
        plt.close(figure)
    return paths
