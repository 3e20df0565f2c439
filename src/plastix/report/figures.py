"""Figures: curves over training with shaded 95% bootstrap CIs across seeds."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt  # headless machines fall back to Agg; importing sets no backend
import numpy as np
import pandas as pd
from matplotlib.colors import to_hex

from plastix.report.stats import curve_ci

COLORS = {"fixed": "#1f77b4", "shuffled": "#d62728", "fresh": "#2ca02c", "none": "#7f7f7f", "redo": "#9467bd"}
"""Fixed colors of settings that recur across figures (``none`` is always gray)."""
LINESTYLES = ("-", "--", ":", "-.")


def curve_styles(groups: Sequence[str]) -> dict[str, dict]:
    """A distinct ``{"color", "ls"}`` per group: names in :data:`COLORS` keep their color; the others
    take, in order, matplotlib's ten colors that no fixed color of ``groups`` uses, then the same
    colors dashed, dotted, dash-dotted (past ~40 groups, styles repeat). Given the same ``groups``,
    every panel draws a group alike, so one legend serves a whole figure (:func:`figure_legend`)."""
    fixed = {g: COLORS[g] for g in groups if g in COLORS}
    taken = {to_hex(c) for c in fixed.values()}
    free = [c for c in (f"C{i}" for i in range(10)) if to_hex(c) not in taken]
    styles, k = {}, 0
    for g in groups:
        if g in fixed:
            styles[g] = {"color": fixed[g], "ls": "-"}
        else:
            styles[g] = {"color": free[k % len(free)], "ls": LINESTYLES[(k // len(free)) % len(LINESTYLES)]}
            k += 1
    return styles


def plot_curves(
    ax,
    df: pd.DataFrame,
    y: str,
    hue: str = "setting",
    x: str = "epoch",
    scale: float = 1.0,
    order: Sequence[str] | None = None,
) -> None:
    """Plot ``y`` against ``x``, one line per ``hue`` value, mean over seeds with a shaded 95% CI.

    ``df`` needs columns ``x``, ``y``, ``hue`` and ``seed`` (one row per seed and step).
    """
    groups = list(order) if order is not None else sorted(df[hue].unique())
    styles = curve_styles(groups)
    drawn = 0
    for group in groups:
        part = df[df[hue] == group].dropna(subset=[y])
        if part.empty:  # e.g. a layer that this setting's network does not have
            continue
        table = part.pivot_table(index="seed", columns=x, values=y) * scale
        mean, low, high = curve_ci(table.to_numpy())
        style = styles[group]
        ax.plot(table.columns, mean, label=group, color=style["color"], ls=style["ls"], lw=1.8)
        ax.fill_between(table.columns, low, high, color=style["color"], alpha=0.2, lw=0)
        drawn += 1
    if not drawn:  # a panel left blank would read as a plotting error
        ax.text(0.5, 0.5, f"no {y} here", transform=ax.transAxes, ha="center", va="center", color="0.45", fontsize=8)
    ax.set_xlabel(x)
    ax.grid(alpha=0.3)


def figure_legend(fig, axes, title: str | None = None, fontsize: float = 7) -> None:
    """One legend for the whole figure, right of its panels (above them in a figure taller than
    wide): every labeled line of ``axes`` (any shape), each label once, in the order first drawn.
    Unlike a legend in the first panel, it neither hides that panel's curves nor goes missing when
    that panel is empty; panels must draw a label alike (:func:`plot_curves` with the same ``order``)."""
    handles: dict = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if not handles:
        return
    width, height = fig.get_size_inches()
    if height > width:  # a tall grid: above it, where a reader starts, not halfway down its side
        place = {"loc": "lower center", "bbox_to_anchor": (0.5, 1.0), "ncol": min(len(handles), 6)}
    else:
        place = {"loc": "center left", "bbox_to_anchor": (1.0, 0.5)}
    fig.legend(list(handles.values()), list(handles), frameon=False, title=title, fontsize=fontsize, **place)


def save_figure(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps a legend placed outside the panels
    plt.close(fig)
    return path


def curve_grid(
    df: pd.DataFrame,
    panels: Sequence[tuple[str, str]],
    path: str,
    scale: float = 1.0,
    ylabel: str = "",
    order: Sequence[str] | None = None,
    suptitle: str | None = None,
    legend_title: str | None = None,
) -> str:
    """One panel per ``(column, title)``, curves per setting; writes a PNG and returns its path."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels):
        plot_curves(ax, df, column, scale=scale, order=order)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
    figure_legend(fig, axes, title=legend_title, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return save_figure(fig, path)
