"""Small statistics for reports: means with percentile-bootstrap confidence intervals over seeds."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MIN_SEEDS_FOR_CI = 5
"""Below this many seeds a bootstrap interval is printed with a warning mark (:data:`FEW_SEEDS_MARK`)."""
FEW_SEEDS_MARK = "‡"


class Estimate(NamedTuple):
    """A point estimate and its confidence interval, with the number of seeds it comes from."""

    value: float
    low: float
    high: float
    n: int


def few_seeds_note(n_min: int) -> str:
    """The report line explaining :data:`FEW_SEEDS_MARK` (empty when every estimate has enough seeds)."""
    if n_min >= MIN_SEEDS_FOR_CI:
        return ""
    return (
        f"{FEW_SEEDS_MARK} interval from fewer than {MIN_SEEDS_FOR_CI} seeds (here as few as {n_min}): a bootstrap "
        "over so few values is degenerate; read it as the spread of those seeds, not as a 95% confidence interval."
    )


def format_estimate(e: Estimate, percent: bool = False, digits: int = 1) -> str:
    """``"12.3% [10.1, 14.0]"``; marked with :data:`FEW_SEEDS_MARK` below :data:`MIN_SEEDS_FOR_CI` seeds."""
    k, unit = (100, "%") if percent else (1, "")
    if e.n == 0:
        return "–"
    if e.n == 1:
        return f"{e.value * k:.{digits}f}{unit} (1 seed, no CI){FEW_SEEDS_MARK}"
    mark = FEW_SEEDS_MARK if e.n < MIN_SEEDS_FOR_CI else ""
    return f"{e.value * k:.{digits}f}{unit} [{e.low * k:.{digits}f}, {e.high * k:.{digits}f}]{mark}"


def _bootstrap(x: np.ndarray, confidence: float, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means of the columns of ``x (n ≥ 2, k)`` (no NaN) and their percentile-bootstrap CIs; every
    column is resampled with the same draw of ``n`` row indices per resample."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = x.shape[0]
    boots = x[np.random.default_rng(seed).integers(0, n, (n_boot, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha], axis=0)
    return x.mean(axis=0), low, high


def mean_ci(values, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """Mean of ``values`` (one per seed) and a percentile-bootstrap CI of that mean.

    Args:
      values: ``(n_seeds,)`` numbers; NaNs are dropped.
      confidence: coverage of the interval, in ``(0, 1)``.
      n_boot: bootstrap resamples.
      seed: seed of the resampling (results are reproducible).

    Returns:
      :class:`Estimate` ``(mean, low, high, n)``; with a single value the interval collapses to it.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if x.size == 1:
        return Estimate(mean, mean, mean, 1)
    _, low, high = _bootstrap(x[:, None], confidence, n_boot, seed)
    return Estimate(mean, float(low[0]), float(high[0]), int(x.size))


def curve_ci(values: np.ndarray, confidence: float = 0.95, n_boot: int = 1000, seed: int = 0):
    """Per-step mean and bootstrap CI of ``values (n_seeds, n_steps)``: three ``(n_steps,)`` arrays,
    each step's as :func:`mean_ci` gives it (the steps with every seed are resampled together)."""
    values = np.asarray(values, dtype=np.float64)
    n, steps = values.shape
    mean, low, high = np.empty(steps), np.empty(steps), np.empty(steps)
    together = ~np.isnan(values).any(axis=0) if n >= 2 else np.zeros(steps, bool)
    if together.any():
        mean[together], low[together], high[together] = _bootstrap(values[:, together], confidence, n_boot, seed)
    for t in np.flatnonzero(~together):  # steps with a missing seed, or a single seed
        mean[t], low[t], high[t] = mean_ci(values[:, t], confidence, n_boot, seed)[:3]
    return mean, low, high
