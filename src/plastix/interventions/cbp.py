"""CBP: continual backprop (Dohare et al. 2024), selective re-initialization after every update.

Each neuron i of the chosen layers carries a running *contribution utility* and an *age*, updated
after every optimizer update through the per-update hook (``Intervention.on_update``)::

    u_i ← η · u_i + (1 − η) · E_x|h_i| · mean_k |w_out,ik|      age_i ← age_i + 1

where ``E_x|h_i|`` is taken on the batch of that update and ``w_out`` are all of neuron i's outgoing
weights (every consumer slice of the topology). Neurons older than ``maturity`` are *eligible*; the
layer accumulates ``replacement_rate × (number eligible)`` per update, and whenever the total
reaches 1 it replaces that many (its integer part) eligible neurons with the lowest utility: fresh
incoming weights from the initializer, bias 0, zero outgoing weights (so the output does not jump),
optimizer moments of those elements zeroed (element by element), utility and age back to 0.

Defaults are those of the paper's RL experiments (``loss-of-plasticity`` repository,
``lop/rl/cfg/ant/cbp.yml``: replacement rate 1e-4, maturity 10,000, contribution utility) with
decay η = 0.99. Left out: the bias-corrected utility and the mean-corrected ("adapted")
contribution variant with its bias transfer to the next layer.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from plastix.interventions.base import InitParams, Intervention, Tally, TrainState
from plastix.interventions.redo import _lowest, recycle_neurons
from plastix.jit import any_run
from plastix.nn.topology import NeuronLayer, Params, Topology, get_path


@dataclasses.dataclass(frozen=True)
class CBPConfig:
    """CBP settings (it acts after every update; it has no period and no trigger).

    Attributes:
      replacement_rate: ρ, fraction of the eligible neurons replaced per update (accumulated).
      maturity: updates a neuron must have lived (since its last replacement) to be eligible.
      decay: η of the utility's exponential average.
      layers: neuron layers to treat (default: every neuron layer).
    """

    replacement_rate: float = 1e-4
    maturity: int = 10_000
    decay: float = 0.99
    layers: tuple[str, ...] = ()

    def __post_init__(self):
        if not 0 <= self.replacement_rate <= 1:
            raise ValueError(f"CBPConfig.replacement_rate must be in [0, 1], got {self.replacement_rate}")
        if self.maturity < 0:
            raise ValueError(f"CBPConfig.maturity must be >= 0 updates, got {self.maturity}")
        if not 0 <= self.decay < 1:
            raise ValueError(f"CBPConfig.decay must be in [0, 1), got {self.decay}")
        object.__setattr__(self, "layers", tuple(self.layers))


class CBPLayerState(NamedTuple):
    """Running statistics of one layer's N neurons.

    Attributes:
      utility: ``(N,)`` running contribution utility.
      age: ``(N,)`` int32 updates since creation or last replacement.
      pending: scalar, replacements accumulated but not yet made.
      replaced: neurons of the layer replaced so far (logged as ``intervention/cbp_replaced``).
    """

    utility: Array
    age: Array
    pending: Array
    replaced: Tally


def mean_outgoing(layer: NeuronLayer, params: Params, n: int) -> Array:
    """``mean_k |w_out,ik|`` over every outgoing weight of each neuron (all consumer slices): ``(N,)``."""
    parts = [c.per_unit(jnp.abs(get_path(params, c.path)), n) for c in layer.consumers]
    return jnp.mean(jnp.concatenate(parts, axis=0), axis=0)


def cbp(config: CBPConfig, topology: Topology, init_params: InitParams) -> Intervention:
    """CBP as an :class:`Intervention` whose work happens in ``on_update``.

    Raises:
      ValueError: a name in ``config.layers`` that is not a neuron layer (naming the allowed ones),
        or a chosen layer without consumers (its utility would be undefined).
    """
    for name in config.layers:
        if name not in topology.names:
            raise ValueError(f"CBPConfig.layers: {name!r} is not a neuron layer; allowed values are {topology.names}")
    layers = tuple(layer for layer in topology.layers if not config.layers or layer.name in config.layers)
    for layer in layers:
        if not layer.consumers:
            raise ValueError(f"CBPConfig.layers: layer {layer.name!r} declares no consumers (no outgoing weights)")

    def init(params: Params) -> dict[str, CBPLayerState]:
        state = {}
        for layer in layers:
            n = layer.size(params)
            state[layer.name] = CBPLayerState(
                jnp.zeros(n), jnp.zeros(n, jnp.int32), jnp.zeros(()), Tally(jnp.zeros((), jnp.int32), "cbp_replaced")
            )
        return state

    def on_update(key: Array, state: TrainState, activity) -> TrainState:
        mean_h = activity()
        stats, masks, new_stats = state.intervention_state, {}, {}
        for layer in layers:
            s = stats[layer.name]
            contribution = mean_h[layer.name] * mean_outgoing(layer, state.params, s.utility.shape[0])
            utility = config.decay * s.utility + (1 - config.decay) * contribution
            age = s.age + 1
            eligible = age > config.maturity
            pending = s.pending + config.replacement_rate * jnp.sum(eligible)
            count = jnp.floor(pending).astype(jnp.int32)
            replace = _lowest(jnp.where(eligible, utility, jnp.inf), count) & eligible
            masks[layer.name] = replace
            new_stats[layer.name] = CBPLayerState(
                jnp.where(replace, 0.0, utility),
                jnp.where(replace, 0, age),
                pending - jnp.sum(replace),
                s.replaced.add(jnp.sum(replace)),
            )
        any_replaced = sum(jnp.sum(m) for m in masks.values()) > 0
        # Most updates replace nothing in any run: no initializer draw, no surgery then. When some
        # run does, every run does the surgery, which leaves a run with all-false masks unchanged.
        state = jax.lax.cond(
            any_run(any_replaced), lambda s: recycle_neurons(s, topology, masks, init_params(key)), lambda s: s, state
        )
        return state.replace(intervention_state=new_stats)

    def apply(key, state, scores, context):
        return state

    return Intervention(init, apply, on_update)
