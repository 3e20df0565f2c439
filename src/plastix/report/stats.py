"""Small statistics for reports: means with percentile-bootstrap confidence intervals over seeds."""

from __future__ import annotations

import numpy as np


def mean_ci(values, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` (one per seed) and a percentile-bootstrap CI of that mean.

    Args:
      values: ``(n_seeds,)`` numbers; NaNs are dropped.
      confidence: coverage of the interval, in ``(0, 1)``.
      n_boot: bootstrap resamples.
      seed: seed of the resampling (results are reproducible).

    Returns:
      ``(mean, low, high)``; with a single value the interval collapses to it.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return mean, float(low), float(high)


def curve_ci(values: np.ndarray, confidence: float = 0.95, n_boot: int = 1000, seed: int = 0):
    """Per-step mean and bootstrap CI of ``values (n_seeds, n_steps)``: three ``(n_steps,)`` arrays."""
    values = np.asarray(values, dtype=np.float64)
    stats = np.array([mean_ci(values[:, t], confidence, n_boot, seed) for t in range(values.shape[1])])
    return stats[:, 0], stats[:, 1], stats[:, 2]
