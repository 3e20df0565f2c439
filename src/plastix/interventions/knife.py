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

import flax.struct
import jax
import jax.numpy as jnp
from jax import Array

from plastix.interventions.base import InitParams, Intervention, TrainState, check_choice
from plastix.interventions.injection import inject, neuron_targets, slot_parts
from plastix.interventions.redo import _lowest
from plastix.nn.topology import Topology

KNIFE_SELECTIONS = ("stagnant", "dormant", "grama", "random", "all")
ACTIVE_INITS = ("fresh", "copy")


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


class KnifeSettings(flax.struct.PyTreeNode):
    """KNIFE's settings that are data, not program (its intervention state): KNIFE and its
    ablations compute the same program, so a bundle runs their ``apply`` once for all of them.

    Attributes:
      selection: int32 scalar, index into :data:`KNIFE_SELECTIONS`.
      compensation, freeze_knowledge: bool scalars (:class:`KnifeConfig`).
      copy_active: bool scalar, ``active_init == "copy"``.
    """

    selection: Array
    compensation: Array
    freeze_knowledge: Array
    copy_active: Array

    @classmethod
    def of(cls, config: KnifeConfig) -> KnifeSettings:
        return cls(
            jnp.asarray(KNIFE_SELECTIONS.index(config.selection), jnp.int32),
            jnp.asarray(config.compensation),
            jnp.asarray(config.freeze_knowledge),
            jnp.asarray(config.active_init == "copy"),
        )


def knife_selection(key: Array, selection: Array, layer_scores) -> Array:
    """Neurons of one layer to inject (bool ``(N,)``) from its :class:`~plastix.metrics.LayerDiagnostics`.

    ``selection``: int32 scalar (possibly traced), the index of the rule in :data:`KNIFE_SELECTIONS`.
    """
    stagnant = layer_scores.stagnant
    options = {
        "stagnant": stagnant,
        "dormant": layer_scores.dormant,
        "grama": layer_scores.grama_dormant,
        "random": _lowest(jax.random.uniform(key, stagnant.shape), jnp.sum(stagnant)),
        "all": jnp.ones_like(stagnant),
    }
    return jnp.stack([options[name] for name in KNIFE_SELECTIONS])[selection]


def knife(config: KnifeConfig, topology: Topology, init_params: InitParams) -> Intervention:
    """KNIFE as an :class:`Intervention` (``make_intervention`` adds its trigger).

    Its state is its :class:`KnifeSettings` (selection and ablation flags as data), so KNIFE and
    its ablations on the same layers declare one shared ``apply`` (``Intervention.shares``).

    Raises:
      ValueError: a name in ``config.layers`` that is not a dense neuron layer (naming the allowed ones).
    """
    try:
        targets = neuron_targets(topology, config.layers)
    except ValueError as e:
        raise ValueError(f"KnifeConfig.{e}") from None

    def init(params) -> KnifeSettings:
        return KnifeSettings.of(config)

    def apply(key: Array, state: TrainState, scores, context) -> TrainState:
        settings: KnifeSettings = state.intervention_state
        k_init, k_select = jax.random.split(key)
        picks = [
            (target, knife_selection(k, settings.selection, scores.layers[target.name]))
            for k, target in zip(jax.random.split(k_select, len(targets)), targets)
        ]
        fresh = init_params(k_init)
        return inject(state, picks, fresh, settings.freeze_knowledge, settings.compensation, settings.copy_active)

    return Intervention(init, apply, shares=("knife", targets), **slot_parts(targets, config.slots))
