"""Rank measures of a feature matrix (usually the penultimate layer's activations)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from plastix.metrics.neurons import EPS


@jax.custom_batching.custom_vmap
def eigvalsh(matrix: Array) -> Array:
    """Eigenvalues (ascending) of a symmetric ``(n, n)`` matrix; under ``vmap`` on CPU one matrix at a time.

    A batched LAPACK eigen-solve (what ``vmap`` over seeds makes of ``jnp.linalg.eigvalsh``) fans
    out into XLA:CPU's intra-op thread pool from a thread of that pool and waits for it; two such
    calls at once (the diagnostics of two networks, e.g. SAC's actor and critic) occupy every
    thread of a 2-core machine's pool and the run deadlocks (jaxlib 0.10, ``jax::ParallelBatchMap``).
    On CPU the batch is therefore a ``lax.map`` of single solves, which never enter the pool; other
    backends keep the batched solver.
    """
    return jnp.linalg.eigvalsh(matrix, symmetrize_input=False)


@eigvalsh.def_vmap
def _eigvalsh_batched(axis_size: int, in_batched: list[bool], matrix: Array):
    (batched,) = in_batched
    if not batched:
        return eigvalsh(matrix), False
    if jax.default_backend() == "cpu":
        return jax.lax.map(eigvalsh, matrix), True
    return jnp.linalg.eigvalsh(matrix, symmetrize_input=False), True


def _singular_values(features: Array) -> Array:
    """Singular values, descending, from the eigenvalues of the smaller Gram matrix.

    ``σ_k = sqrt(λ_k(FᵀF))``: a symmetric eigen-solve of a ``min(B, D)``-square matrix is much
    cheaper than an SVD on GPUs, and the squared conditioning only blurs singular values below
    ~1e-3·σ_max, which carry no weight in either rank measure.
    """
    features = jnp.asarray(features, dtype=jnp.float32)
    if features.ndim != 2:
        raise ValueError(f"expected features of shape (batch, dim), got {features.shape}")
    gram = features.T @ features if features.shape[1] <= features.shape[0] else features @ features.T
    eigenvalues = eigvalsh(gram)
    return jnp.sqrt(jnp.clip(eigenvalues, 0.0, None))[::-1]


def effective_rank(features: Array) -> Array:
    """Effective rank (Roy & Vetterli 2007): ``exp(H(p))``, ``p_k = σ_k / Σσ``.

    Args:
      features: ``(batch, dim)``.

    Returns:
      scalar in ``[1, min(batch, dim)]`` (1.0 for an all-zero matrix).
    """
    sigma = _singular_values(features)
    p = sigma / (jnp.sum(sigma) + EPS)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.exp(entropy)


def srank(features: Array, delta: float = 0.01) -> Array:
    """srank (Kumar et al. 2021): smallest k with ``Σ_{i<=k} σ_i / Σσ >= 1 - δ``.

    Args:
      features: ``(batch, dim)``.
      delta: tolerated share of the singular-value mass, in ``[0, 1)``.

    Returns:
      int32 scalar in ``[0, min(batch, dim)]`` (0 for an all-zero matrix).
    """
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"srank: delta must be in [0, 1), got {delta}")
    sigma = _singular_values(features)  # sorted descending
    total = jnp.sum(sigma)
    cumulative = jnp.cumsum(sigma) / jnp.where(total > 0, total, 1.0)
    k = jnp.sum(cumulative < 1.0 - delta - 1e-7) + 1
    return jnp.where(total > 0, k, 0).astype(jnp.int32)
