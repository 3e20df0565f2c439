"""The report of a sweep: every finished cell aggregated per setting, the missing cells named.

``plastix report <sweep dir>`` (also written when the last cell finishes) reads each done cell's
``metrics.parquet`` (verified against its checksum), labels its rows with the cell's settings and
writes into the sweep directory:

- ``report.md``: the status counts and the cells still missing; a ranking table of the settings by
  the IQM of the final evaluation return with its 95% stratified bootstrap CI (rliable; settings
  with equal IQM share a rank); per network the final dormant / stagnant / GraMa fractions;
- ``performance_profile.png``: the fraction of runs (seeds) whose final return exceeds τ, per
  setting, with 95% bootstrap bands (rliable's performance profiles; raw returns, one environment);
- ``eval_return.png``: evaluation return over env steps (mean and 95% CI over seeds);
- ``neuron_ratios.png``: per network the dormant, stagnant and GraMa fractions over env steps
  (mean and 95% CI over seeds), one curve per setting.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

RATIOS = {"dormant_fraction": "dormant", "stagnant_fraction": "stagnant", "grama_fraction": "GraMa"}


def sweep_metrics(root: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows of every done cell, status table)``; rows carry ``cell``, ``setting`` and label columns."""
    from plastix.experiments.rundir import RunDir
    from plastix.experiments.sweep import cell_path, load_cells, status_table

    cells = load_cells(root)
    status = status_table(root, cells)
    frames = []
    for cell in cells:
        if status.loc[status.cell == cell.id, "status"].item() != "done":
            continue
        df = RunDir(cell_path(root, cell)).metrics()
        df["cell"] = cell.id
        df["setting"] = " ".join(f"{k}={v}" for k, v in cell.labels.items()) or cell.id
        df["env"] = cell.config.env
        for k, v in cell.labels.items():
            df[k] = str(v)
        frames.append(df)
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), status


def performance_profile(finals: dict[str, np.ndarray], taus: np.ndarray, reps: int = 2000, seed: int = 0):
    """rliable performance profiles of final returns ``{setting: (runs,)}``.

    Returns:
      ``{setting: (mean, low, high)}``, each ``(len(taus),)``: fraction of runs above each τ, 95% band.
    """
    from rliable import library as rly

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        point, bands = rly.create_performance_profile(
            {k: np.asarray(v, float)[:, None] for k, v in finals.items()}, taus, reps=reps
        )
    finally:
        np.random.set_state(state)
    return {k: (point[k], bands[k][0], bands[k][1]) for k in finals}


def write_sweep_report(root: str) -> list[str]:
    """Write ``report.md`` and the figures of the sweep in ``root``; returns the files written.

    Works on a partly finished sweep (the missing cells are listed); with no finished cell it
    writes only the status part.
    """
    import matplotlib.pyplot as plt

    from plastix.experiments.marl import inactive_methods, ranking_table
    from plastix.report import (
        few_seeds_note,
        figure_legend,
        final_values,
        format_estimate,
        mean_ci,
        plot_curves,
        save_figure,
    )

    df, status = sweep_metrics(root)
    counts = status.status.value_counts()
    missing = status[status.status != "done"]
    lines = [
        f"# Sweep {os.path.basename(os.path.abspath(root))}",
        "",
        f"{counts.get('done', 0)} of {len(status)} cells done."
        + (" This report covers the done cells only." if len(missing) else ""),
        "",
    ]
    if len(missing):
        lines += ["Missing cells:", ""] + [f"- {r.cell}: {r.status} {r.detail}".rstrip() for r in missing.itertuples()]
        lines.append("")
    files: list[str] = []
    if df.empty:
        return _write(root, lines, files)
    settings = list(dict.fromkeys(df.setting))
    lines += ranking_table(df, settings, []) + inactive_methods(df, settings)
    nets = sorted({c.rsplit("/", 1)[0] for c in df.columns if c.endswith("/dormant_fraction") and "/layer/" not in c})
    ratio_cols = [(net, col, name) for net in nets for col, name in RATIOS.items() if f"{net}/{col}" in df]
    if ratio_cols:
        last = df[df.groupby("cell").period.transform("max") == df.period]
        header = [f"{net} {name}" for net, _, name in ratio_cols]
        lines += ["### Final neuron fractions (mean [95% bootstrap CI] over seeds)", ""]
        lines += ["| setting | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        for setting in settings:
            part = last[last.setting == setting]
            values = [
                format_estimate(mean_ci(part[f"{n}/{c}"].dropna().to_numpy()), percent=True) for n, c, _ in ratio_cols
            ]
            lines.append(f"| {setting} | " + " | ".join(values) + " |")
        lines.append("")
    n_min = int(df.groupby("setting").seed.nunique().min())
    lines += [few_seeds_note(n_min)]
    if "eval_return" in df:
        finals = final_values(df, "eval_return", ["setting"])
        scores = {s: finals.loc[finals.setting == s, "eval_return"].to_numpy() for s in settings}
        scores = {s: v for s, v in scores.items() if len(v)}
        if scores:
            everything = np.concatenate(list(scores.values()))
            taus = np.linspace(everything.min(), everything.max(), 41)
            profiles = performance_profile(scores, taus)
            fig, ax = plt.subplots(figsize=(5.2, 3.6))
            for i, (setting, (mean, low, high)) in enumerate(profiles.items()):
                ax.plot(taus, mean, color=f"C{i % 10}", label=setting, lw=1.6)
                ax.fill_between(taus, low, high, color=f"C{i % 10}", alpha=0.15, lw=0)
            ax.set_xlabel("final evaluation return τ")
            ax.set_ylabel("fraction of runs with return > τ")
            ax.grid(alpha=0.3)
            ax.legend(frameon=False, fontsize=7)
            files.append(save_figure(fig, os.path.join(root, "performance_profile.png")))
            fig, ax = plt.subplots(figsize=(5.2, 3.6))
            plot_curves(
                ax, df.dropna(subset=["eval_return"]), "eval_return", hue="setting", x="env_steps", order=settings
            )
            ax.set_ylabel("evaluation return")
            ax.legend(frameon=False, fontsize=7)
            files.append(save_figure(fig, os.path.join(root, "eval_return.png")))
    if ratio_cols:
        fig, axes = plt.subplots(len(nets), len(RATIOS), figsize=(4.0 * len(RATIOS), 3.2 * len(nets)), squeeze=False)
        for row, net in enumerate(nets):
            for col, (column, name) in enumerate(RATIOS.items()):
                ax = axes[row][col]
                if f"{net}/{column}" not in df:
                    ax.set_visible(False)
                    continue
                plot_curves(ax, df, f"{net}/{column}", hue="setting", x="env_steps", scale=100, order=settings)
                ax.set_title(f"{net}: {name} (%)", fontsize=10)
        figure_legend(fig, axes, title="setting")
        files.append(save_figure(fig, os.path.join(root, "neuron_ratios.png")))
    lines += ["", *[f"![{os.path.basename(f)}]({os.path.basename(f)})" for f in files], ""]
    return _write(root, lines, files)


def _write(root: str, lines: list[str], files: list[str]) -> list[str]:
    from plastix.experiments.rundir import write_text

    path = os.path.join(root, "report.md")
    write_text(path, "\n".join(lines))
    return files + [path]
