"""The study's two figures, from ``results.json``'s summary (means over seeds, min-max spread).

* ``study_tradeoff.png``: B validation loss (x, adaptation) against A validation loss (y,
  forgetting), one line per strategy through its validation points, from the pretrained model
  (step 0) to the end of the budget; error bars span the seeds' min to max.
* ``study_losses.png``: both losses against cumulative FLOPs (left) and cumulative training
  step time (right), one line per strategy, shaded between the seeds' min and max.

**Limitations**
Needs matplotlib (the project's optional ``plot`` extra); :func:`pyplot` raises
:class:`PlotUnavailable` without it. Uses the Agg backend (no display). Sizes are fixed
(:data:`SIZES`, at :data:`DPI`), so the PNGs' pixel sizes are too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 100
SIZES = {"tradeoff": (8.0, 6.0), "losses": (12.0, 8.0)}
"""Figure size in inches of each plot; pixels = inches x DPI."""
FILES = {"tradeoff": "study_tradeoff.png", "losses": "study_losses.png"}
_TERA = 1e12


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


def write_plots(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Draw both figures into ``out``; return ``{name: path}``."""
    plt = pyplot()
    paths = {}
    for name, draw in (("tradeoff", tradeoff), ("losses", losses)):
        figure = draw(results)
        paths[name] = out / FILES[name]
        figure.savefig(paths[name], dpi=DPI)
        plt.close(figure)
    return paths
