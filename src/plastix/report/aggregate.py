"""IQM and probability of improvement with 95% stratified bootstrap CIs (rliable's definitions,
vectorized), and final values of run tables."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from plastix.report.stats import Estimate


def iqm(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along ``axis``: the mean of the middle values once ``int(n / 4)`` are cut from
    each end (scipy's ``trim_mean(x, 0.25)``, rliable's ``aggregate_iqm``); NaN if any value is NaN."""
    x = np.sort(np.asarray(scores, float), axis=axis)  # NaNs sort last; they are propagated below
    n = x.shape[axis]
    cut = int(0.25 * n)
    middle = np.take(x, np.arange(cut, n - cut), axis=axis).mean(axis=axis)
    return np.where(np.isnan(x).any(axis=axis), np.nan, middle)


def iqm_ci(scores: Mapping[str, np.ndarray], reps: int = 2000, seed: int = 0) -> dict[str, Estimate]:
    """Interquartile mean and its 95% stratified bootstrap CI per group, as rliable computes them.

    rliable's ``get_interval_estimates(..., aggregate_iqm, method="percentile")`` resamples the runs
    of every task with replacement and calls the IQM once per replicate in Python (about 10 ms for
    2,000 replicates of one group, seconds for a study's table). This draws the same resamples from
    the same random stream (one ``RandomState(seed)``, groups in order) and computes every
    replicate's IQM at once: the same numbers (tested against rliable), hundreds of times faster.

    Args:
      scores: ``{group: (runs, tasks)}`` score matrices (tasks = environments; runs = seeds).
      reps: bootstrap replicates.
      seed: seed of the resampling (results are reproducible; numpy's global generator is untouched).

    Returns:
      ``{group: Estimate(iqm, low, high, runs)}``.
    """
    if reps < 1:
        raise ValueError(f"iqm_ci: reps must be >= 1, got {reps}")
    rng = np.random.RandomState(seed)
    out = {}
    for group, matrix in scores.items():
        matrix = np.asarray(matrix, float)
        if matrix.ndim != 2 or matrix.size == 0:
            raise ValueError(f"iqm_ci: scores[{group!r}] must be a non-empty (runs, tasks) matrix, got {matrix.shape}")
        runs, tasks = matrix.shape
        block = max(1, 2_000_000 // max(matrix.size, 1))  # replicates per draw, bounding memory
        replicates = []
        for start in range(0, reps, block):
            n = min(block, reps - start)
            rows = rng.randint(0, runs, size=(n, runs, tasks))  # the same stream as rliable's np.random.choice
            replicates.append(iqm(matrix[rows, np.arange(tasks)].reshape(n, -1)))
        low, high = np.percentile(np.concatenate(replicates), [2.5, 97.5])
        out[group] = Estimate(float(iqm(matrix.reshape(-1))), float(low), float(high), runs)
    return out


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) as rliable defines it: per task, the Mann-Whitney U statistic of ``x``'s runs against
    ``y``'s over the number of pairs (a tie counts 1/2), averaged over tasks.

    Args:
      x, y: ``(runs, tasks)`` score matrices of the two methods (runs may differ, tasks must not).
    """
    x, y = _score_matrix("x", x), _score_matrix("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"probability_of_improvement: x has {x.shape[1]} tasks and y {y.shape[1]}; they must match")
    return float(_pairs_greater(x[None], y[None])[0])


def _score_matrix(name: str, matrix) -> np.ndarray:
    matrix = np.asarray(matrix, float)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"{name} must be a non-empty (runs, tasks) score matrix, got shape {matrix.shape}")
    if np.isnan(matrix).any():
        raise ValueError(f"{name} has NaN scores: drop the runs without a score first")
    return matrix


def _pairs_greater(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(n, runs_x, tasks)`` and ``(n, runs_y, tasks)`` → ``(n,)``: the share of pairs with x > y
    (ties 1/2) per task, averaged over tasks."""
    greater = (x[:, :, None, :] > y[:, None, :, :]).mean(axis=(1, 2))
    tied = (x[:, :, None, :] == y[:, None, :, :]).mean(axis=(1, 2))
    return (greater + 0.5 * tied).mean(axis=-1)


def improvement_ci(x: np.ndarray, y: np.ndarray, reps: int = 2000, seed: int = 0) -> Estimate:
    """:func:`probability_of_improvement` of ``x`` over ``y`` and its 95% percentile CI from the
    stratified independent bootstrap rliable uses for this metric (every task's runs of ``x`` and of
    ``y`` resampled with replacement, separately): the same resamples, drawn from one
    ``RandomState(seed)`` in rliable's order, with every replicate's pair counts computed at once.
    0.5 means no difference; a CI above (below) 0.5 says a run of X scores higher (lower) than a
    run of Y more often than chance.

    Args:
      x, y: ``(runs, tasks)`` score matrices, no NaN.
      reps: bootstrap replicates.
      seed: seed of the resampling (reproducible; numpy's global generator is untouched).

    Returns:
      ``Estimate(P, low, high, min(runs_x, runs_y))``.
    """
    if reps < 1:
        raise ValueError(f"improvement_ci: reps must be >= 1, got {reps}")
    point = probability_of_improvement(x, y)
    x, y = np.asarray(x, float), np.asarray(y, float)
    (rx, tasks), ry = x.shape, y.shape[0]
    rng = np.random.RandomState(seed)
    block = max(1, 2_000_000 // (rx * ry * tasks))  # replicates per batch, bounding memory
    replicates = []
    for start in range(0, reps, block):
        n = min(block, reps - start)
        if rx == ry:  # rliable's per-replicate draws, x's then y's, are one draw of the same bound
            rows = rng.randint(0, rx, size=(n, 2, rx, tasks))
            ix, iy = rows[:, 0], rows[:, 1]
        else:
            draws = [(rng.randint(0, rx, (rx, tasks)), rng.randint(0, ry, (ry, tasks))) for _ in range(n)]
            ix, iy = np.stack([d[0] for d in draws]), np.stack([d[1] for d in draws])
        xs, ys = x[ix, np.arange(tasks)], y[iy, np.arange(tasks)]  # (n, runs, tasks)
        replicates.append(_pairs_greater(xs, ys))
    low, high = np.percentile(np.concatenate(replicates), [2.5, 97.5])
    return Estimate(point, float(low), float(high), min(rx, ry))


def final_values(df: pd.DataFrame, column: str, by: list[str]) -> pd.DataFrame:
    """The last non-NaN value of ``column`` per ``by + [seed]`` group (e.g. the final evaluation)."""
    part = df.dropna(subset=[column]).sort_values("period")
    return part.groupby(by + ["seed"], sort=False)[column].last().reset_index()
