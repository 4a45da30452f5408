"""``titan-phases plot``: a run's timeline as one PNG.

Three panels over the training steps, sharing the step axis, with the phases as shaded bands
labelled with the reason each began: training and validation loss; the lr of every param
group (log scale); the number of trainable parameters. The data is a
:class:`~titan_phases.interop.timeline.Timeline`.

**Limitations**
matplotlib is an optional dependency (``pip install titan_phases[plot]``); without it
:func:`plot_timeline` raises :class:`PlotUnavailable` with that instruction. The Agg backend
is used, so no display is needed.
"""

from __future__ import annotations

from typing import Any

from titan_phases.interop.timeline import Timeline

__all__ = ["FIGURE_INCHES", "PlotUnavailable", "plot_timeline", "DPI"]

FIGURE_INCHES = (10.0, 9.0)
DPI = 100
_BAND_COLOURS = ("#dbe9f6", "#fbe3d6", "#dff2dc", "#eadff2", "#f6f0d4", "#e2e2e2")


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(
            "titan-phases plot needs matplotlib, an optional dependency: "
            "pip install 'titan_phases[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shade_phases(axes: list[Any], timeline: Timeline) -> None:
    for band in timeline.phases:
        colour = _BAND_COLOURS[band.phase % len(_BAND_COLOURS)]
        start, end = band.span
        for ax in axes:
            ax.axvspan(start, end, color=colour, lw=0)
        label = f"phase {band.phase}" + (f"\n{band.reason}" if band.reason else "")
        axes[0].annotate(
            label, xy=(start, 1.0), xycoords=("data", "axes fraction"),
            xytext=(3, -3), textcoords="offset points", va="top", fontsize=8,
        )


def plot_timeline(timeline: Timeline, title: str) -> Any:
    """The timeline's figure (a matplotlib ``Figure``); its lines hold exactly the series of
    ``timeline``: loss, validation loss, one lr line per param group, trainable params."""
    plt = _pyplot()
    figure, (loss_ax, lr_ax, params_ax) = plt.subplots(
        3, 1, sharex=True, figsize=FIGURE_INCHES, dpi=DPI, height_ratios=(3, 2, 1.2)
    )
    _shade_phases([loss_ax, lr_ax, params_ax], timeline)
    loss_ax.plot(timeline.steps, timeline.loss, label="training loss", color="#1f4e79")
    if timeline.validation_steps:
        loss_ax.plot(timeline.validation_steps, timeline.validation_loss, "o-",
                     label="validation loss", color="#c0504d", markersize=3)
    loss_ax.set_ylabel("loss")
    loss_ax.legend(loc="upper right", fontsize=8)
    for group, (steps, lrs) in sorted(timeline.lrs.items()):
        lr_ax.plot(steps, lrs, label=f"group {group} (phase {group})")
    if timeline.lrs:
        lr_ax.set_yscale("log")
        lr_ax.legend(loc="lower left", fontsize=8, ncol=min(len(timeline.lrs), 4))
    lr_ax.set_ylabel("lr")
    params_ax.plot(*timeline.trainable_params_line(), color="#4f6228", drawstyle="steps-post",
                   label="trainable params")
    params_ax.set_ylabel("trainable\nparams")
    params_ax.set_xlabel("step")
    notes = [f"{timeline.starts} process starts"] if timeline.starts > 1 else []
    if timeline.end:
        notes.append(f"ended early: {timeline.end}")
    figure.suptitle(title + (f"\n({'; '.join(notes)})" if notes else ""), fontsize=10)
    figure.tight_layout()
    return figure
