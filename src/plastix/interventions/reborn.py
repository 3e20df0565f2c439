"""ReBorn (Qin et al. 2024): dormant neurons are reborn as scaled copies of over-active ones.

For each chosen ReLU layer, from the dormant scores ``s_i = E|h_i| / mean_k E|h_k|`` of the
scoring batch (the diagnostics' own, DESIGN.md):

- *dormant* neurons: ``s_i <= τ`` (the diagnostics' τ-dormant set, 0.1 by default);
- *over-active* neurons: ``s_i > β`` (``beta``, default 3);
- each over-active neuron o gives to at most ``max_receivers`` (5) dormant neurons d, in random
  order, spread round-robin over the over-active neurons: ``d``'s incoming weights and bias become
  ``α_d ·`` those of ``o`` (``α_d ~ U(0.3, 0.8)``), so ``h_d = α_d · h_o`` (ReLU is positively
  homogeneous); ``o``'s outgoing weights are split by random softmax fractions ``f`` over ``o`` and
  its receivers: ``o`` keeps ``f_o · w_out(o)``, each receiver gets ``f_d · w_out(o) / α_d``, so
  their summed contribution is exactly ``o``'s before;
- dormant neurons left without a donor are recycled as ReDo does (fresh incoming weights, bias 0,
  zero outgoing weights).

So the network computes, right after ReBorn, exactly what it computed with the dormant neurons
pruned (their outgoing weights zeroed; identical when they are fully dead): the property tests
check. The optimizer moments of every touched element are zeroed.

ReBorn's public code (xmu-rl-3dv/ReBorn) applies it to the mixer's hidden layers every 20,000 env
steps on the 32 latest episodes; here the scores come from the loop's scoring batch and the
default layers are every dense ReLU layer of the ``mixer`` group (``groups`` / ``layers`` choose).
The weight sharing needs a positively homogeneous activation, so only ReLU layers are allowed.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from plastix.interventions.base import (
    InitParams,
    Intervention,
    TrainState,
    _no_state,
    mark,
    zeros_like_bool,
)
from plastix.interventions.redo import recycle_neurons
from plastix.nn.topology import NeuronLayer, Topology, get_path, set_path

RELU = (nn.relu, jax.nn.relu)


@dataclasses.dataclass(frozen=True)
class ReBornConfig:
    """ReBorn settings (defaults from the paper and its public configuration).

    Attributes:
      period: updates between two applications with ``trigger="period"`` (ReBorn: every 20,000 env
        steps; the MARL study converts that to updates).
      tau: dormant threshold on the dormant score; ``None``: the diagnostics' τ (0.1).
      beta: over-active threshold: a neuron with dormant score ``> beta`` gives its weights.
      max_receivers: at most this many dormant neurons per over-active neuron.
      alpha_low, alpha_high: ``α ~ U(alpha_low, alpha_high)`` scales a receiver's incoming weights.
      groups: network groups whose dense ReLU layers are treated (``()``: every group).
      layers: layer names to treat instead (must be dense ReLU neuron layers); overrides ``groups``.
      reset_optimizer: zero the optimizer moments of touched elements.
    """

    period: int = 1000
    tau: float | None = None
    beta: float = 3.0
    max_receivers: int = 5
    alpha_low: float = 0.3
    alpha_high: float = 0.8
    groups: tuple[str, ...] = ("mixer",)
    layers: tuple[str, ...] = ()
    reset_optimizer: bool = True

    def __post_init__(self):
        if self.period < 1:
            raise ValueError(f"ReBornConfig.period must be >= 1 update, got {self.period}")
        if self.tau is not None and not 0 <= self.tau < float("inf"):
            raise ValueError(f"ReBornConfig.tau must be a finite number >= 0 or None, got {self.tau}")
        if not self.beta > 0:
            raise ValueError(f"ReBornConfig.beta must be > 0 (over-active: score > beta·mean), got {self.beta}")
        if self.max_receivers < 1:
            raise ValueError(f"ReBornConfig.max_receivers must be >= 1, got {self.max_receivers}")
        if not 0 < self.alpha_low <= self.alpha_high:
            raise ValueError(
                f"ReBornConfig.alpha_low / alpha_high must satisfy 0 < low <= high, got "
                f"{self.alpha_low} / {self.alpha_high}"
            )
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "layers", tuple(self.layers))


def reborn_layers(config: ReBornConfig, topology: Topology) -> tuple[NeuronLayer, ...]:
    """The layers ReBorn treats; errors name the field and the allowed values."""
    allowed = tuple(layer.name for layer in topology.layers if layer.kind == "dense" and layer.activation in RELU)
    if config.layers:
        for name in config.layers:
            if name not in allowed:
                raise ValueError(
                    f"ReBornConfig.layers: {name!r} is not a dense ReLU neuron layer (weight sharing preserves "
                    f"the function only there); allowed values are {allowed}"
                )
        return tuple(topology[name] for name in config.layers)
    for group in config.groups:
        if group not in topology.groups:
            raise ValueError(
                f"ReBornConfig.groups: {group!r} is not a group of this network; allowed values are "
                f"{topology.groups} (or () for every group)"
            )
    chosen = tuple(topology[name] for name in allowed if not config.groups or topology[name].group in config.groups)
    if not chosen:
        raise ValueError(f"ReBornConfig.groups {config.groups}: no dense ReLU neuron layer there; choose `layers`")
    return chosen


class RebornPlan(NamedTuple):
    """What ReBorn does to the N neurons of one layer (all ``(N,)``).

    Attributes:
      source: the neuron whose weights unit i takes (its donor; itself when not a receiver).
      in_scale: factor on the copied incoming weights (``α`` for receivers, 1 otherwise).
      out_scale: factor on the copied outgoing weights (``f/α`` receivers, ``f`` donors, 1 otherwise).
      receives: dormant neurons that receive a donor's weights.
      gives: over-active neurons with at least one receiver (their outgoing weights are scaled).
      recycle: dormant neurons without a donor (recycled as by ReDo).
    """

    source: Array
    in_scale: Array
    out_scale: Array
    receives: Array
    gives: Array
    recycle: Array


def reborn_plan(key: Array, dormant: Array, over_active: Array, config: ReBornConfig) -> RebornPlan:
    """Assign dormant neurons to over-active donors and draw ``α`` and the outgoing fractions.

    The dormant neurons, in a random order, go round-robin to the over-active neurons (in index
    order) until each has ``max_receivers``; the rest are recycled. Static shapes, jittable.
    """
    n = dormant.shape[0]
    k_order, k_alpha, k_frac = jax.random.split(key, 3)
    dormant = dormant & ~over_active
    n_over = jnp.sum(over_active)
    donors = jnp.argsort(~over_active, stable=True)  # over-active neurons first, in index order
    order = jnp.where(dormant, jax.random.uniform(k_order, (n,)), 2.0)
    rank = jnp.argsort(jnp.argsort(order, stable=True), stable=True)  # 0.. among the dormant ones
    receives = dormant & (rank < config.max_receivers * n_over)
    source = jnp.where(receives, donors[rank % jnp.maximum(n_over, 1)], jnp.arange(n))
    alpha = jax.random.uniform(k_alpha, (n,), minval=config.alpha_low, maxval=config.alpha_high)
    in_scale = jnp.where(receives, alpha, 1.0)
    members = receives | over_active
    weight = jnp.where(members, jnp.exp(jax.random.normal(k_frac, (n,))), 0.0)
    total = jax.ops.segment_sum(weight, source, num_segments=n)  # per donor: its own + its receivers'
    fraction = weight / jnp.maximum(total[source], 1e-30)
    out_scale = jnp.where(receives, fraction / in_scale, jnp.where(over_active, fraction, 1.0))
    gives = over_active & (jax.ops.segment_sum(receives.astype(jnp.int32), source, num_segments=n) > 0)
    out_scale = jnp.where(over_active & ~gives, 1.0, out_scale)
    return RebornPlan(source, in_scale, out_scale, receives, gives, dormant & ~receives)


def reborn(config: ReBornConfig, topology: Topology, init_params: InitParams) -> Intervention:
    """ReBorn as an :class:`Intervention` (``make_intervention`` adds its trigger).

    Raises:
      ValueError: layers or groups that do not exist or are not dense ReLU layers.
    """
    layers = reborn_layers(config, topology)

    def apply(key: Array, state: TrainState, scores, context) -> TrainState:
        k_init, k_plan = jax.random.split(key)
        fresh = init_params(k_init)
        plans = {}
        for k, layer in zip(jax.random.split(k_plan, len(layers)), layers):
            s = scores.layers[layer.name]
            dormant = s.dormant if config.tau is None else s.dormant_score <= config.tau
            plans[layer.name] = reborn_plan(k, dormant, s.dormant_score > config.beta, config)
        params, touched = state.params, zeros_like_bool(state.params)
        # 1. weight sharing: row and column copies commute, so the order of layers does not matter
        for layer in layers:
            plan = plans[layer.name]
            for piece, scale, units in [(p, plan.in_scale, plan.receives) for p in layer.incoming] + [
                (c, plan.out_scale, plan.receives | plan.gives) for c in layer.consumers
            ]:
                value = get_path(params, piece.path)
                shared = piece.take_units(value, plan.source) * piece.expand(scale, value.shape)
                hit = piece.mask(units, value.shape)
                params = set_path(params, piece.path, jnp.where(hit, shared.astype(value.dtype), value))
                touched = mark(touched, piece.path, hit)
        state = state.replace(params=params)
        if config.reset_optimizer:
            state = state.with_fresh_moments(touched)
        # 2. dormant neurons without a donor: ReDo's surgery (fresh incoming, zero outgoing)
        recycle = {name: plan.recycle for name, plan in plans.items()}
        return recycle_neurons(state, topology, recycle, fresh, config.reset_optimizer)

    return Intervention(_no_state, apply)
