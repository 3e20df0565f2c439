"""Figures: curves over training with shaded 95% bootstrap CIs across seeds."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt  # headless machines fall back to Agg; importing sets no backend
import pandas as pd

from plastix.report.stats import curve_ci

COLORS = {"fixed": "#1f77b4", "shuffled": "#d62728", "fresh": "#2ca02c", "none": "#7f7f7f", "redo": "#9467bd"}


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
    groups = order if order is not None else sorted(df[hue].unique())
    for i, group in enumerate(groups):
        part = df[df[hue] == group].dropna(subset=[y])
        if part.empty:  # e.g. a layer that this setting's network does not have
            continue
        table = part.pivot_table(index="seed", columns=x, values=y) * scale
        mean, low, high = curve_ci(table.to_numpy())
        color = COLORS.get(group, f"C{i}")
        ax.plot(table.columns, mean, label=group, color=color, lw=1.8)
        ax.fill_between(table.columns, low, high, color=color, alpha=0.2, lw=0)
    ax.set_xlabel(x)
    ax.grid(alpha=0.3)


def save_figure(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
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
    axes[0][0].legend(frameon=False, title=legend_title)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return save_figure(fig, path)
