"""IQM with 95% stratified bootstrap CIs (rliable), and final-value extraction from run tables."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from plastix.report.stats import Estimate


def iqm_ci(scores: Mapping[str, np.ndarray], reps: int = 2000, seed: int = 0) -> dict[str, Estimate]:
    """Interquartile mean and its 95% stratified bootstrap CI per group (rliable).

    Args:
      scores: ``{group: (runs, tasks)}`` score matrices (tasks = environments; runs = seeds).
      reps: bootstrap replicates.

    Returns:
      ``{group: Estimate(iqm, low, high, runs)}``.
    """
    from rliable import library as rly
    from rliable import metrics

    state = np.random.get_state()  # rliable draws from numpy's global generator: seed it, then restore it
    np.random.seed(seed)
    try:
        point, interval = rly.get_interval_estimates(
            {k: np.asarray(v, float) for k, v in scores.items()},
            lambda x: np.array([metrics.aggregate_iqm(x)]),
            reps=reps,
        )
    finally:
        np.random.set_state(state)
    return {
        k: Estimate(float(point[k][0]), float(interval[k][0, 0]), float(interval[k][1, 0]), len(scores[k]))
        for k in scores
    }


def final_values(df: pd.DataFrame, column: str, by: list[str]) -> pd.DataFrame:
    """The last non-NaN value of ``column`` per ``by + [seed]`` group (e.g. the final evaluation)."""
    part = df.dropna(subset=[column]).sort_values("period")
    return part.groupby(by + ["seed"], sort=False)[column].last().reset_index()
