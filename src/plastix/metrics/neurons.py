"""Per-neuron scores: arrays in, ``(N,)`` arrays out.

Every function here is pure and jittable and works on the last axis as the neuron axis, so the
same call serves dense layers (``(batch, N)``), conv layers (``(batch, H, W, N)``) and recurrent
layers (``(time, batch, N)``): expectations run over every leading axis.

Definitions follow DESIGN.md (the contract); ``EPS = 1e-9`` guards every division.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

EPS = 1e-9


def normalize_by_layer_mean(values: Array) -> Array:
    """``values / (mean(values) + 1e-9)`` for a ``(N,)`` vector of non-negative values."""
    return values / (jnp.mean(values) + EPS)


def _sample_weights(x: Array, valid: Array | None) -> Array | None:
    """``valid`` broadcast to ``x.shape[:-1]`` as float32, or None."""
    if valid is None:
        return None
    valid = jnp.asarray(valid)
    lead = x.shape[:-1]
    if valid.shape != lead[: valid.ndim]:
        raise ValueError(f"valid mask {valid.shape} does not match the leading axes {lead} of the activations")
    valid = valid.reshape(valid.shape + (1,) * (len(lead) - valid.ndim))
    return jnp.broadcast_to(valid, lead).astype(jnp.float32)


def mean_abs(x: Array, valid: Array | None = None) -> Array:
    """``E|x|`` over every axis but the last, over valid samples only: ``(..., N) -> (N,)``."""
    x = jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError("expected an array with a neuron axis (..., N), got a scalar")
    w = _sample_weights(x, valid)
    if w is None:
        return jnp.mean(jnp.abs(x).reshape(-1, x.shape[-1]), axis=0)
    total = jnp.sum(jnp.abs(x) * w[..., None], axis=tuple(range(x.ndim - 1)))
    return total / jnp.maximum(jnp.sum(w), 1.0)


def dormant_scores(h: Array, valid: Array | None = None) -> Array:
    """τ-dormant scores of one layer (Sokar et al. 2023, Eq. 1).

    ``s_i = E_x|h_i| / (mean_k E_x|h_k| + 1e-9)``; neuron i is τ-dormant iff ``s_i <= τ``.

    Args:
      h: activations ``(..., N)``; batch, spatial and time axes lead, neurons last.
      valid: optional boolean mask of the leading axes (or of their first axes, e.g. ``(T, B)``
        for ``(T, B, N)``, ``(B,)`` for ``(B, H, W, N)``); padded samples do not count.

    Returns:
      ``(N,)`` scores with layer mean 1 (0 for a layer whose activations are all zero).
    """
    return normalize_by_layer_mean(mean_abs(h, valid))


def grama_scores(kernel_grad: Array) -> Array:
    """GraMa scores from the gradient of a layer's incoming kernel.

    ``g_i = mean_j |∂L/∂W_ji|`` over neuron i's incoming weights (every axis but the last),
    divided by the layer mean of ``g`` (+1e-9).

    Args:
      kernel_grad: ``∂L/∂W``; dense ``(fan_in, N)``, conv ``(kh, kw, c_in, N)``.

    Returns:
      ``(N,)`` scores with layer mean 1.
    """
    return normalize_by_layer_mean(mean_abs(kernel_grad))


def preactivation_grama_scores(dz: Array, valid: Array | None = None) -> Array:
    """GraMa scores from pre-activation gradients: ``E_x|∂L/∂z_i|`` over layer mean (+1e-9).

    Args:
      dz: ``∂L/∂z`` of shape ``(..., N)``, one row per sample (and position / time step).
      valid: optional mask of valid samples (see :func:`dormant_scores`).

    Returns:
      ``(N,)`` scores with layer mean 1.
    """
    return dormant_scores(dz, valid)


def _per_neuron_sq_norm(kernel: Array, bias: Array | None) -> Array:
    kernel = jnp.asarray(kernel)
    sq = jnp.sum(jnp.square(kernel).reshape(-1, kernel.shape[-1]), axis=0)
    if bias is not None:
        sq = sq + jnp.square(jnp.asarray(bias))
    return sq


def stagnation_ratios(
    kernel: Array,
    delta_kernel: Array,
    bias: Array | None = None,
    delta_bias: Array | None = None,
) -> Array:
    """Stagnation ratio of each neuron: ``‖Δ_i‖ / (‖w_i‖ + 1e-9)``.

    ``w_i`` gathers neuron i's incoming kernel entries (every axis but the last) and its bias;
    ``Δ_i`` the same entries of a gradient (``source="grad"``) or of the last optimizer update
    (``source="update"``).

    Args:
      kernel: incoming kernel ``(..., N)``.
      delta_kernel: gradient or update of the kernel, same shape.
      bias: optional bias ``(N,)``.
      delta_bias: gradient or update of the bias ``(N,)``; required when ``bias`` is given.

    Returns:
      ``(N,)`` non-negative ratios.
    """
    if (bias is None) != (delta_bias is None):
        raise ValueError("stagnation_ratios: give both `bias` and `delta_bias`, or neither")
    if jnp.shape(kernel) != jnp.shape(delta_kernel):
        raise ValueError(
            f"stagnation_ratios: kernel {jnp.shape(kernel)} and delta_kernel "
            f"{jnp.shape(delta_kernel)} must have the same shape"
        )
    weight_norm = jnp.sqrt(_per_neuron_sq_norm(kernel, bias))
    delta_norm = jnp.sqrt(_per_neuron_sq_norm(delta_kernel, delta_bias))
    return delta_norm / (weight_norm + EPS)


def stagnant_scores(
    kernel: Array,
    delta_kernel: Array,
    bias: Array | None = None,
    delta_bias: Array | None = None,
) -> Array:
    """Relative stagnation: :func:`stagnation_ratios` divided by their layer mean (+1e-9).

    A neuron is stagnant iff its score is ``<= κ`` (relative mode, κ = 0.1 by default).

    Returns:
      ``(N,)`` scores with layer mean 1.
    """
    return normalize_by_layer_mean(stagnation_ratios(kernel, delta_kernel, bias, delta_bias))


def overlap_coefficient(mask_a: Array, mask_b: Array) -> Array:
    """Overlap coefficient ``|A ∩ B| / min(|A|, |B|)`` of two neuron sets given as boolean masks.

    1.0 when both sets are empty, 0.0 when exactly one is.

    Args:
      mask_a: boolean ``(N,)`` (or any shape; all elements count).
      mask_b: boolean, same shape as ``mask_a``.

    Returns:
      scalar float32 in ``[0, 1]``.
    """
    a = jnp.asarray(mask_a, dtype=bool)
    b = jnp.asarray(mask_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"overlap_coefficient: masks differ in shape, {a.shape} vs {b.shape}")
    n_a = jnp.sum(a)
    n_b = jnp.sum(b)
    inter = jnp.sum(a & b)
    smaller = jnp.minimum(n_a, n_b)
    ratio = inter / jnp.maximum(smaller, 1)
    both_empty = (n_a == 0) & (n_b == 0)
    return jnp.where(both_empty, 1.0, jnp.where(smaller == 0, 0.0, ratio)).astype(jnp.float32)


def ever_active(h: Array, valid: Array | None = None) -> Array:
    """Boolean ``(N,)``: neuron i is positive for at least one valid input (and position / time step).

    Args:
      h: activations ``(..., N)``.
      valid: optional mask of valid samples (see :func:`dormant_scores`).
    """
    h = jnp.asarray(h)
    positive = h > 0
    w = _sample_weights(h, valid)
    if w is not None:
        positive = positive & (w[..., None] > 0)
    return jnp.any(positive.reshape(-1, h.shape[-1]), axis=0)


def active_fraction(h: Array) -> Array:
    """Fraction of neurons that are positive for at least one input: ``mean_i [E_x 1(h_i > 0) > 0]``.

    Args:
      h: activations ``(..., N)``.

    Returns:
      scalar in ``[0, 1]``.
    """
    return jnp.mean(ever_active(h).astype(jnp.float32))
