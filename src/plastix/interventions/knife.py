"""KNIFE: knowledge-preserving neuron injection for stagnant neurons (DESIGN.md, "Interventions → KNIFE").

Each selected neuron i of a dense layer becomes ``h_i = k_i(x) + a_i(x) − c_i(x)``: the *knowledge*
neuron ``k_i`` (its weights at injection, frozen from then on: zero gradient and zero optimizer
update), a freshly initialized trainable *active* neuron ``a_i`` and a frozen *compensation* neuron
``c_i``, a copy of ``a_i`` at injection, so every output of the network is unchanged at injection.
Outgoing weights are untouched and keep learning. The extra neurons are pre-allocated injection
slots (:mod:`plastix.interventions.injection`, ``slots`` per neuron): a neuron injected again at a
later switch freezes its earlier active neuron as part of its knowledge and opens its next slot;
a neuron whose slots are all used is left alone.

Selection (from the diagnostics of the scoring batch just before): ``stagnant`` (default; the
stagnant-neuron paper), ``dormant``, ``grama``, ``random`` (as many random neurons per layer as are
stagnant) or ``all`` (every neuron: layer-level plasticity injection). Default trigger: at each
task switch (``PlasticityConfig.trigger``: also ``period`` / ``both``, every ``period`` updates).
Ablations: ``compensation=False`` (no compensation neuron: the output jumps at injection),
``freeze_knowledge=False`` (the knowledge neuron keeps training), ``active_init="copy"`` (the active
neuron starts as a copy of the neuron's current weights instead of a fresh draw).

Targets: every dense neuron layer of the topology (agent network and mixer hypernetworks in the
MARL learners), or those named in ``layers``. Dense neuron layers must be built with
:class:`~plastix.nn.topology.Neurons` (all plastix networks are).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import Array

from plastix.interventions.base import InitParams, Intervention, TrainState, _no_state, check_choice
from plastix.interventions.injection import inject, neuron_targets, slot_parts
from plastix.interventions.redo import _lowest
from plastix.nn.topology import Topology

KNIFE_SELECTIONS = ("stagnant", "dormant", "grama", "random", "all")
ACTIVE_INITS = ("fresh", "copy")
_SELECTION_MASKS = {"stagnant": "stagnant", "dormant": "dormant", "grama": "grama_dormant", "random": "stagnant"}


@dataclasses.dataclass(frozen=True)
class KnifeConfig:
    """KNIFE settings.

    Attributes:
      slots: ``K``, injection slots per neuron (a neuron can be injected ``K`` times).
      selection: ``stagnant`` (default), ``dormant``, ``grama``, ``random`` (as many as stagnant) or
        ``all`` (layer-level injection).
      period: updates between injections with ``trigger="period"`` or ``"both"``.
      layers: dense neuron layers to inject into (default: every dense neuron layer).
      compensation: add the frozen compensation neuron (ablation: off).
      freeze_knowledge: freeze the knowledge neuron (ablation: off).
      active_init: ``fresh`` (a new draw of the layer's initializer, bias 0) or ``copy`` (ablation:
        the neuron's current weights).
    """

    slots: int = 1
    selection: str = "stagnant"
    period: int = 1000
    layers: tuple[str, ...] = ()
    compensation: bool = True
    freeze_knowledge: bool = True
    active_init: str = "fresh"

    def __post_init__(self):
        if self.slots < 1:
            raise ValueError(f"KnifeConfig.slots: got {self.slots}, must be >= 1 (injection slots per neuron)")
        if self.period < 1:
            raise ValueError(f"KnifeConfig.period must be >= 1 update, got {self.period}")
        check_choice("KnifeConfig.selection", self.selection, KNIFE_SELECTIONS)
        check_choice("KnifeConfig.active_init", self.active_init, ACTIVE_INITS)
        object.__setattr__(self, "layers", tuple(self.layers))


def knife_selection(key: Array, selection: str, layer_scores) -> Array:
    """Neurons of one layer to inject (bool ``(N,)``) from its :class:`~plastix.metrics.LayerDiagnostics`."""
    below = getattr(layer_scores, _SELECTION_MASKS.get(selection, "stagnant"))
    if selection == "all":
        return jnp.ones_like(below)
    if selection == "random":
        return _lowest(jax.random.uniform(key, below.shape), jnp.sum(below))
    return below


def knife(config: KnifeConfig, topology: Topology, init_params: InitParams) -> Intervention:
    """KNIFE as an :class:`Intervention` (``make_intervention`` adds its trigger).

    Raises:
      ValueError: a name in ``config.layers`` that is not a dense neuron layer (naming the allowed ones).
    """
    try:
        targets = neuron_targets(topology, config.layers)
    except ValueError as e:
        raise ValueError(f"KnifeConfig.{e}") from None

    def apply(key: Array, state: TrainState, scores, context) -> TrainState:
        k_init, k_select = jax.random.split(key)
        fresh = init_params(k_init) if config.active_init == "fresh" else None
        picks = [
            (target, knife_selection(k, config.selection, scores.layers[target.name]))
            for k, target in zip(jax.random.split(k_select, len(targets)), targets)
        ]
        return inject(state, picks, fresh, config.freeze_knowledge, config.compensation)

    return Intervention(_no_state, apply, **slot_parts(targets, config.slots))
