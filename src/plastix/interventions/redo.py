"""ReDo: recycle dormant neurons (Sokar et al. 2023, Algorithm 1), and its selection variants.

For each selected neuron i of a layer: its incoming weights (every incoming :class:`Slice` of the
topology: kernel columns, each gate kernel of a GRU, the hypernetwork columns that generate a
mixer unit's weights) are re-drawn from the original initializer, its bias entries set to 0, its
outgoing weights (every consumer slice: rows / input channels of consumer kernels, through
conv→flatten→dense, a GRU's recurrent rows) set to 0, and the optimizer moments of exactly those
elements zeroed. Incoming weights of all layers are re-drawn first and outgoing
weights zeroed after, so a recycled neuron's outgoing weights are always 0: with τ = 0 the
network's outputs on the scoring batch are bit-for-bit unchanged.

ReGraMa is ReDo with ``score="grama"`` (neurons selected by gradient magnitude).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import Array

from plastix.interventions.base import (
    InitParams,
    Intervention,
    TrainState,
    _no_state,
    check_choice,
    mark,
    zeros_like_bool,
)
from plastix.nn.topology import Params, Topology, get_path, set_path

SELECTIONS = ("dormant", "random", "inverse", "scheduled")
SCORES = ("dormant", "grama", "preact_grama", "stagnant")
_MASK_FIELDS = {  # the diagnostics' own thresholded set for each score
    "dormant": "dormant",
    "grama": "grama_dormant",
    "preact_grama": "preact_grama_dormant",
    "stagnant": "stagnant",
}
_SCORE_FIELDS = {
    "dormant": "dormant_score",
    "grama": "grama_score",
    "preact_grama": "preact_grama_score",
    "stagnant": "stagnant_score",
}


@dataclasses.dataclass(frozen=True)
class ReDoConfig:
    """ReDo settings.

    Attributes:
      tau: threshold on the selection score; neurons with score ``<= tau`` are recycled. ``None``
        (default): the diagnostics' own threshold for that score, defined once in
        :class:`~plastix.metrics.DiagnosticsConfig` (``tau`` for ``dormant``, ``grama_tau`` for
        ``grama`` / ``preact_grama``, ``kappa`` / ``rho`` for ``stagnant``), so ReDo recycles
        exactly the neurons the diagnostics report. A number recycles at another threshold than
        the one reported (the paper's SAC: recycle τ = 0, report τ = 0.1).
      period: recycle every ``period`` updates (paper: 1,000 for DQN, 200,000 for SAC).
      selection: ``dormant`` (score <= τ), ``random`` (as many random neurons per layer),
        ``inverse`` (as many of the highest-scoring neurons), ``scheduled`` (the lowest-scoring
        fraction, cosine-decayed from ``scheduled_fraction`` to 0 over ``schedule_steps``).
      score: which score ranks neurons: ``dormant`` (ReDo), ``grama`` (ReGraMa),
        ``preact_grama`` or ``stagnant``.
      scheduled_fraction: starting fraction for ``scheduled``.
      schedule_steps: updates over which ``scheduled`` decays (required for it).
      reset_optimizer: zero the optimizer moments of touched elements (paper: yes).
    """

    tau: float | None = None
    period: int = 1000
    selection: str = "dormant"
    score: str = "dormant"
    scheduled_fraction: float = 0.1
    schedule_steps: int = 0
    reset_optimizer: bool = True

    def __post_init__(self):
        if self.tau is not None and not 0 <= self.tau < float("inf"):
            raise ValueError(f"ReDoConfig.tau must be a finite number >= 0 or None, got {self.tau}")
        if self.period < 1:
            raise ValueError(f"ReDoConfig.period must be >= 1 update, got {self.period}")
        check_choice("ReDoConfig.selection", self.selection, SELECTIONS)
        check_choice("ReDoConfig.score", self.score, SCORES)
        if not 0 <= self.scheduled_fraction <= 1:
            raise ValueError(f"ReDoConfig.scheduled_fraction must be in [0, 1], got {self.scheduled_fraction}")
        if self.selection == "scheduled" and self.schedule_steps < 1:
            raise ValueError("ReDoConfig.schedule_steps must be >= 1 when selection='scheduled'")


def _lowest(score: Array, count: Array) -> Array:
    """Boolean mask of the ``count`` lowest entries of ``score`` (ties broken by index)."""
    rank = jnp.argsort(jnp.argsort(score, stable=True), stable=True)
    return rank < count


def select_neurons(key: Array, config: ReDoConfig, score: Array, step: Array, below: Array | None = None) -> Array:
    """Neurons of one layer to recycle.

    Args:
      key: PRNG key (used by ``random``).
      config: ReDo settings.
      score: ``(N,)`` selection score (lower = more dormant).
      step: current update count (used by ``scheduled``).
      below: ``(N,)`` the diagnostics' thresholded set for this score, used when ``config.tau`` is None.

    Returns:
      boolean ``(N,)`` mask.
    """
    n = score.shape[0]
    if config.selection == "scheduled":
        progress = jnp.clip(step / config.schedule_steps, 0.0, 1.0)
        fraction = config.scheduled_fraction * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        # float32 rounding puts exact boundaries just below the integer (0.1·20·½ = 0.99999994): a
        # tolerance far below 1/n keeps them on it
        return _lowest(score, jnp.floor(fraction * n + 1e-4).astype(jnp.int32))
    if config.tau is not None:
        below = score <= config.tau
    elif below is None:
        raise ValueError("select_neurons: ReDoConfig.tau=None needs the diagnostics' mask `below`")
    count = jnp.sum(below)
    if config.selection == "dormant":
        return below
    if config.selection == "inverse":
        return _lowest(-score, count)
    if config.selection == "random":
        return _lowest(jax.random.uniform(key, (n,)), count)
    raise ValueError(f"ReDoConfig.selection: got {config.selection!r}, allowed values are {SELECTIONS}")


def zero_outgoing(params: Params, topology: Topology, masks: dict[str, Array]) -> Params:
    """Zero the outgoing weights (every consumer slice) of the neurons in ``masks`` ``{layer: bool (N,)}``.

    This prunes the neurons: the network then computes what it computes with those neurons
    removed. ReDo's output after recycling equals the output of this pruned network.
    """
    return _zero_outgoing(params, topology, masks, zeros_like_bool(params))[0]


def _zero_outgoing(params: Params, topology: Topology, masks: dict[str, Array], touched: Params):
    """:func:`zero_outgoing`, also marking the zeroed elements in ``touched``; returns both."""
    for layer in topology.layers:
        if layer.name not in masks:
            continue
        for consumer in layer.consumers:
            value = get_path(params, consumer.path)
            hit = consumer.mask(masks[layer.name], value.shape)
            params = set_path(params, consumer.path, jnp.where(hit, jnp.zeros_like(value), value))
            touched = mark(touched, consumer.path, hit)
    return params, touched


def recycle_neurons(
    state: TrainState,
    topology: Topology,
    masks: dict[str, Array],
    fresh_params: Params,
    reset_optimizer: bool = True,
) -> TrainState:
    """Recycle the neurons in ``masks``: the surgery of ReDo, for any selection.

    Args:
      state: train state whose ``params`` the topology indexes.
      topology: the network's neuron layers.
      masks: ``{layer name: bool (N,)}``; layers left out are untouched.
      fresh_params: a fresh draw of the network's initializers (same tree as ``params``).
      reset_optimizer: zero the optimizer moments of every touched element.

    Returns:
      the new train state (same shapes; ``step`` unchanged).
    """
    params = state.params
    touched = zeros_like_bool(params)
    for layer in topology.layers:  # 1. incoming slices: fresh draw for weights, 0 for biases
        if layer.name not in masks:
            continue
        for piece in layer.incoming:
            value = get_path(params, piece.path)
            hit = piece.mask(masks[layer.name], value.shape)
            new = jnp.zeros_like(value) if piece.bias else get_path(fresh_params, piece.path)
            params = set_path(params, piece.path, jnp.where(hit, new, value))
            touched = mark(touched, piece.path, hit)
    params, touched = _zero_outgoing(params, topology, masks, touched)  # 2. outgoing slices: 0 in every consumer
    state = state.replace(params=params)
    return state.with_fresh_moments(touched) if reset_optimizer else state


def redo(config: ReDoConfig, topology: Topology, init_params: InitParams) -> Intervention:
    """ReDo as an :class:`Intervention` (the loop triggers it; ``make_intervention`` adds the trigger).

    Args:
      config: thresholds and selection.
      topology: the neuron layers to recycle.
      init_params: ``key -> params``, a fresh draw of the network's original initializers.
    """
    field, mask_field = _SCORE_FIELDS[config.score], _MASK_FIELDS[config.score]

    def apply(key: Array, state: TrainState, scores, context) -> TrainState:
        init_key, select_key = jax.random.split(key)
        select_keys = jax.random.split(select_key, len(topology.layers))
        masks = {}
        for k, layer in zip(select_keys, topology.layers):
            layer_scores = scores.layers[layer.name]
            below = getattr(layer_scores, mask_field)
            masks[layer.name] = select_neurons(k, config, getattr(layer_scores, field), context.step, below)
        return recycle_neurons(state, topology, masks, init_params(init_key), config.reset_optimizer)

    return Intervention(_no_state, apply)
