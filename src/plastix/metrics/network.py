"""Network-level diagnostics: every metric of every neuron layer from one forward/backward pass.

``diagnose`` runs the network once on a scoring batch with zero perturbations added to every
pre-activation, differentiates the loss with respect to the parameters and those perturbations,
and turns activations ``h``, kernel gradients ``∂L/∂W`` and pre-activation gradients ``∂L/∂z``
into per-neuron scores and masks (see :mod:`plastix.metrics.neurons`). Network-wide fractions
count neurons, they do not average layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from plastix.metrics import neurons as nm
from plastix.metrics.representation import effective_rank, srank
from plastix.nn.topology import ApplyFn, Params, Topology, capture, get_path, preactivation_shapes

STAGNATION_SOURCES = ("grad", "update")


@dataclasses.dataclass(frozen=True)
class DiagnosticsConfig:
    """Thresholds of the diagnostics (DESIGN.md defaults).

    Attributes:
      tau: τ-dormant threshold on dormant scores (paper also uses 0.025 and 0).
      grama_tau: threshold on both GraMa scores.
      kappa: relative stagnation threshold on stagnant scores.
      rho: absolute stagnation threshold on raw ratios; when set, absolute mode replaces relative.
      stagnation_source: ``"grad"`` (Δ = gradient) or ``"update"`` (Δ = last optimizer update).
      srank_delta: δ of srank.
    """

    tau: float = 0.1
    grama_tau: float = 0.1
    kappa: float = 0.1
    rho: float | None = None
    stagnation_source: str = "grad"
    srank_delta: float = 0.01

    def __post_init__(self):
        for field in ("tau", "grama_tau", "kappa"):
            if getattr(self, field) < 0:
                raise ValueError(f"DiagnosticsConfig.{field} must be >= 0, got {getattr(self, field)}")
        if self.rho is not None and self.rho < 0:
            raise ValueError(f"DiagnosticsConfig.rho must be >= 0 or None, got {self.rho}")
        if self.stagnation_source not in STAGNATION_SOURCES:
            raise ValueError(
                f"DiagnosticsConfig.stagnation_source: got {self.stagnation_source!r}, "
                f"allowed values are {STAGNATION_SOURCES}"
            )
        if not 0 <= self.srank_delta < 1:
            raise ValueError(f"DiagnosticsConfig.srank_delta must be in [0, 1), got {self.srank_delta}")


class LayerDiagnostics(NamedTuple):
    """Scores and masks of one neuron layer with N neurons (all ``(N,)`` unless scalar)."""

    dormant_score: Array
    grama_score: Array
    preact_grama_score: Array
    stagnation_ratio: Array
    stagnant_score: Array
    dormant: Array  # bool (N,)
    grama_dormant: Array  # bool (N,)
    preact_grama_dormant: Array  # bool (N,)
    stagnant: Array  # bool (N,)
    active: Array  # bool (N,): positive for at least one valid scoring input
    weight_norm: Array  # scalar: ‖incoming slices‖₂ (kernel columns and bias, every gate of a GRU, ...)
    grad_norm: Array  # scalar: ‖∂L/∂(incoming slices that train)‖₂


class GroupDiagnostics(NamedTuple):
    """Fractions of one group of layers (a network: agent, mixer, q0, ...) and its feature layer's ranks."""

    dormant_fraction: Array
    grama_fraction: Array
    preact_grama_fraction: Array
    stagnant_fraction: Array
    active_fraction: Array
    effective_rank: Array
    srank: Array
    overlap_stagnant_dormant: Array
    overlap_stagnant_grama: Array
    overlap_dormant_grama: Array


OVERLAPS = {
    "overlap_stagnant_dormant": ("stagnant", "dormant"),
    "overlap_stagnant_grama": ("stagnant", "grama_dormant"),
    "overlap_dormant_grama": ("dormant", "grama_dormant"),
}
"""Overlap coefficients reported per group and for the whole network: field → the two neuron
masks compared (:func:`plastix.metrics.overlap_coefficient`, DESIGN.md: 1.0 when both sets are
empty, 0 when one is)."""


def group_overlaps(layers: Mapping[str, LayerDiagnostics]) -> dict[str, Array]:
    """The :data:`OVERLAPS` of the neurons of ``layers`` taken together."""
    masks = {m: jnp.concatenate([getattr(layer, m) for layer in layers.values()]) for m in MASK_FIELDS}
    return {field: nm.overlap_coefficient(masks[a], masks[b]) for field, (a, b) in OVERLAPS.items()}


class Diagnostics(NamedTuple):
    """Diagnostics of a whole learner: per-layer results, per-group and network-wide fractions and
    overlap coefficients (:data:`OVERLAPS`).

    ``effective_rank`` / ``srank`` at the top level are those of the first group's feature layer;
    every group's are in ``groups``.
    """

    layers: dict[str, LayerDiagnostics]
    dormant_fraction: Array
    grama_fraction: Array
    preact_grama_fraction: Array
    stagnant_fraction: Array
    active_fraction: Array
    effective_rank: Array
    srank: Array
    loss: Array
    overlap_stagnant_dormant: Array
    overlap_stagnant_grama: Array
    overlap_dormant_grama: Array
    groups: dict[str, GroupDiagnostics] = {}


MASK_FIELDS = ("dormant", "grama_dormant", "preact_grama_dormant", "stagnant", "active")
FRACTION_FIELDS = {
    "dormant": "dormant_fraction",
    "grama_dormant": "grama_fraction",
    "preact_grama_dormant": "preact_grama_fraction",
    "stagnant": "stagnant_fraction",
    "active": "active_fraction",
}


def network_fraction(layers: Mapping[str, LayerDiagnostics], field: str) -> Array:
    """Share of all neurons whose mask ``field`` is True (neurons counted, not layers averaged)."""
    masks = [getattr(layer, field) for layer in layers.values()]
    return sum(jnp.sum(m) for m in masks) / sum(m.shape[0] for m in masks)


def _per_unit(slices, tree: Params | None, n: int, weights_only: bool = False, like: Params | None = None) -> Array:
    """The layer's incoming elements in ``tree`` grouped by unit: ``(K, N)`` (``tree=None``: all
    True, shaped like ``like``)."""
    parts = []
    for s in slices:
        if weights_only and s.bias:
            continue
        value = jnp.ones(jnp.shape(get_path(like, s.path)), bool) if tree is None else get_path(tree, s.path)
        parts.append(s.per_unit(value, n))
    return jnp.concatenate(parts, axis=0)


def _masked_norm(values: Array, mask: Array) -> Array:
    """Column norms ``(N,)`` of ``values (K, N)`` over the elements where ``mask`` is True."""
    return jnp.linalg.norm(jnp.where(mask, values, 0), axis=0)


def _valid_for(valid: Array | Mapping[str, Array] | None, name: str) -> Array | None:
    if isinstance(valid, Mapping):
        return valid.get(name)
    return valid


def diagnose(
    topology: Topology,
    apply_fn: ApplyFn,
    params: Params,
    inputs: Any,
    loss_fn: Callable[[Any], Array],
    config: DiagnosticsConfig = DiagnosticsConfig(),
    updates: Params | None = None,
    valid: Array | Mapping[str, Array] | None = None,
    trainable: Params | None = None,
) -> Diagnostics:
    """Every diagnostic of every neuron layer, from one forward and one backward pass.

    Args:
      topology: the network's neuron layers (in one or more groups).
      apply_fn: ``apply_fn(variables, inputs, mutable=...)`` with the signature of
        :meth:`flax.linen.Module.apply`, e.g. ``model.apply`` or
        ``lambda v, x, **kw: model.apply(v, x / 255.0, **kw)``.
      params: the parameters (the nested dict the topology's paths index).
      inputs: the scoring batch, e.g. ``(256, ...)`` observations.
      loss_fn: ``loss_fn(output) -> scalar``, the training loss on this batch (targets closed
        over); its gradients feed GraMa and the stagnation ratio (``source="grad"``). Padded
        steps must contribute zero to it.
      config: thresholds.
      updates: the last optimizer update (same tree as ``params``); required when
        ``config.stagnation_source == "update"``.
      valid: which samples count, for padded episodes: a boolean array matching the leading
        axes of every layer's ``z`` (or their first axes, e.g. ``(T, B)`` for ``(T, B, N)``), or
        ``{layer name: mask}``. Invalid samples are left out of every expectation, of active
        units and of the feature matrix.
      trainable: the train state's trainable mask (``None``: every element trains). A neuron's
        stagnation ratio and weight GraMa score are taken over the incoming elements that can
        still learn: after a KNIFE injection (whose slots the topology lists as incoming slices,
        see ``Intervention.extend_topology``) that is the active unit, not the frozen knowledge
        and compensation units; the dormant score reads the neuron's whole output ``h``.

    Returns:
      :class:`Diagnostics`; jittable and vmappable.
    """
    if config.stagnation_source == "update" and updates is None:
        raise ValueError("diagnose: DiagnosticsConfig.stagnation_source='update' needs the last optimizer `updates`")

    shapes = preactivation_shapes(apply_fn, topology, params, inputs)
    zeros = {name: jnp.zeros(s.shape, s.dtype) for name, s in shapes.items()}

    def loss_with_perturbations(p, perturbations):
        output, z, h = capture(apply_fn, topology, perturbations, activations=True)(p, inputs)
        return loss_fn(output), h

    (loss, activations), (grads, dz) = jax.value_and_grad(loss_with_perturbations, argnums=(0, 1), has_aux=True)(
        params, zeros
    )
    delta_tree = grads if config.stagnation_source == "grad" else updates

    layers: dict[str, LayerDiagnostics] = {}
    for layer in topology.layers:
        h = activations[layer.name]
        mask = _valid_for(valid, layer.name)
        n = h.shape[-1]
        weights = _per_unit(layer.incoming, params, n)
        learns = _per_unit(layer.incoming, trainable, n, like=params)
        deltas = _per_unit(layer.incoming, delta_tree, n)
        weight_grads = _per_unit(layer.incoming, grads, n, weights_only=True)
        weight_learns = _per_unit(layer.incoming, trainable, n, weights_only=True, like=params)
        all_grads = _per_unit(layer.incoming, grads, n)

        dormant = nm.dormant_scores(h, mask)
        mean_weight_grad = jnp.sum(jnp.where(weight_learns, jnp.abs(weight_grads), 0), axis=0) / jnp.maximum(
            jnp.sum(weight_learns, axis=0), 1
        )
        grama = nm.normalize_by_layer_mean(mean_weight_grad)
        preact = nm.preactivation_grama_scores(dz[layer.name], mask)
        ratio = _masked_norm(deltas, learns) / (_masked_norm(weights, learns) + nm.EPS)
        stagnant_score = nm.normalize_by_layer_mean(ratio)
        stagnant = ratio <= config.rho if config.rho is not None else stagnant_score <= config.kappa
        layers[layer.name] = LayerDiagnostics(
            dormant_score=dormant,
            grama_score=grama,
            preact_grama_score=preact,
            stagnation_ratio=ratio,
            stagnant_score=stagnant_score,
            dormant=dormant <= config.tau,
            grama_dormant=grama <= config.grama_tau,
            preact_grama_dormant=preact <= config.grama_tau,
            stagnant=stagnant,
            active=nm.ever_active(h, mask),
            weight_norm=jnp.linalg.norm(weights),
            grad_norm=jnp.linalg.norm(jnp.where(learns, all_grads, 0)),
        )

    def features_of(name: str) -> Array:
        h = activations[name]
        w = nm._sample_weights(h, _valid_for(valid, name))
        if w is not None:  # zero rows leave the non-zero singular values unchanged
            h = h * w[..., None]
        if topology[name].kind == "conv":  # one row per input, every position and channel a feature
            return h.reshape(h.shape[0], -1)
        return h.reshape(-1, h.shape[-1])  # one row per sample (and time step)

    groups: dict[str, GroupDiagnostics] = {}
    for group in topology.groups:
        members = {layer.name: layers[layer.name] for layer in topology.in_group(group)}
        if not members:
            continue
        features = features_of(topology.features[group])
        groups[group] = GroupDiagnostics(
            **{frac: network_fraction(members, mask) for mask, frac in FRACTION_FIELDS.items()},
            effective_rank=effective_rank(features),
            srank=srank(features, config.srank_delta),
            **group_overlaps(members),
        )
    first = next(iter(groups.values()))
    return Diagnostics(
        layers=layers,
        **{frac: network_fraction(layers, mask) for mask, frac in FRACTION_FIELDS.items()},
        effective_rank=first.effective_rank,
        srank=first.srank,
        loss=loss,
        **group_overlaps(layers),
        groups=groups,
    )


def summarize(diagnostics: Diagnostics) -> dict[str, Array]:
    """Flat scalar summary ``{"dormant_fraction": ..., "layer/<name>/dormant_fraction": ...}``.

    Works on stacked diagnostics too (leading axes are kept), which is how run loops log them.
    """
    out = {
        "loss": diagnostics.loss,
        "effective_rank": diagnostics.effective_rank,
        "srank": diagnostics.srank,
    }
    for field in (*FRACTION_FIELDS.values(), *OVERLAPS):
        out[field] = getattr(diagnostics, field)
    for name, layer in diagnostics.layers.items():
        for mask, frac in FRACTION_FIELDS.items():
            out[f"layer/{name}/{frac}"] = jnp.mean(getattr(layer, mask), axis=-1)
        out[f"layer/{name}/weight_norm"] = layer.weight_norm
        out[f"layer/{name}/grad_norm"] = layer.grad_norm
    if len(diagnostics.groups) > 1:
        for group, g in diagnostics.groups.items():
            for field, value in g._asdict().items():
                out[f"group/{group}/{field}"] = value
    return out
