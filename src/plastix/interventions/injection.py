"""Injection slots: extra units added to a layer's output without changing the network's function.

The shared machinery of KNIFE (:mod:`plastix.interventions.knife`, one neuron at a time) and of
plasticity injection (Nikishin et al. 2023, a whole output layer at once). A *target* is a dense
layer ``h = σ(x @ W + b)`` with ``D`` inputs and ``N`` units: a neuron layer built with
:class:`~plastix.nn.topology.Neurons` (activation inside the module) or a linear output head
(``nn.Dense``, σ = identity). Each of its units gets ``K`` pre-allocated *slots*; a used slot k of
unit i adds ::

    h_i += gate[k, i] · σ(x·U[k, :, i] + v[k, i]) − comp_gate[k, i] · σ(x·U⁰[k, :, i] + v⁰[k, i])

where ``U, v`` is the *active* unit (trainable) and ``U⁰, v⁰`` the *compensation* unit, a frozen
copy of the active one made at injection, so right after an injection both terms cancel exactly
and every output of the network is unchanged. (A linear head, σ = identity, adds all its slots as
one layer with kernel ``Σ_k gate·U_k − comp_gate·U⁰_k``: one matmul instead of ``2K``; equal values
and gradients up to float rounding, exact at injection.) ``comp_gate`` opens with ``gate`` unless
the injection is made without compensation (KNIFE's ablation): being data, not a program flag, runs
with and without compensation share one compiled program. The slots live in the parameter tree
under ``params["plastix_injection"][<module path>]`` (``kernel (K, D, N)``, ``bias (K, N)``,
``comp_kernel``, ``comp_bias``, ``gate`` and ``comp_gate (K, N)`` of 0/1), so target networks,
checkpoints and the optimizer see them like any parameter; which elements train is the train
state's element-wise trainable mask (:class:`~plastix.interventions.base.TrainState`):
compensation units and gates never train (nor get weight gradients), an active unit trains from
its injection on, and the injected unit's previous weights (the *knowledge*: its original incoming
weights and any earlier active slot) are frozen from then on.

The learner's forward pass adds the slots through :func:`injection_forward`, which intercepts the
target modules' ``__call__`` (``Intervention.forward``); nothing in the networks changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from plastix.interventions.base import Intervention, TrainState, _no_state, zeros_like_bool
from plastix.nn.topology import (
    Neurons,
    Params,
    Path,
    Slice,
    Topology,
    _tag,
    get_path,
    has_path,
    set_path,
    set_path_create,
)

SLOTS = "plastix_injection"
"""Top-level key of the parameter tree under which the injection slots live."""
SLOT_PARAMS = ("kernel", "bias", "comp_kernel", "comp_bias", "gate", "comp_gate")
FROZEN_SLOT_PARAMS = ("comp_kernel", "comp_bias", "gate", "comp_gate")
"""Slot parameters that never train (compensation units and gates): no weight gradients either."""


def _identity(x: Array) -> Array:
    return x


@dataclasses.dataclass(frozen=True)
class Target:
    """One dense layer that can receive injected units.

    Attributes:
      name: the topology's layer name (a neuron layer, or an output head's module).
      module: path of the module whose ``__call__`` returns ``h``.
      activation: σ (identity for a linear head).
      neuron: a neuron layer (module must be :class:`~plastix.nn.topology.Neurons`) or a linear head.
    """

    name: str
    module: Path
    activation: Callable[[Array], Array]
    neuron: bool

    @property
    def kernel(self) -> Path:
        return self.module + ("kernel",)

    @property
    def bias(self) -> Path:
        return self.module + ("bias",)


def neuron_targets(topology: Topology, names: Sequence[str] = ()) -> tuple[Target, ...]:
    """Dense neuron layers of ``topology`` (all of them, or those named in ``names``).

    Raises:
      ValueError: a name that is not a layer, or a layer that is not dense, naming the allowed values.
    """
    dense = [layer for layer in topology.layers if layer.kind == "dense"]
    allowed = tuple(layer.name for layer in dense)
    for name in names:
        if name not in allowed:
            raise ValueError(f"layers: {name!r} is not a dense neuron layer; allowed values are {allowed}")
    chosen = [layer for layer in dense if not names or layer.name in names]
    return tuple(Target(layer.name, layer.module, layer.activation, True) for layer in chosen)


def head_targets(topology: Topology, names: Sequence[str] = ()) -> tuple[Target, ...]:
    """Linear output heads (modules of the parameter layers that feed nothing), or those named."""
    heads = {_tag(m): m for p in topology.param_layers if not p.feeds for m in p.params}
    for name in names:
        if name not in heads:
            raise ValueError(f"layers: {name!r} is not an output head module; allowed values are {tuple(heads)}")
    return tuple(Target(n, m, _identity, False) for n, m in heads.items() if not names or n in names)


def add_slots(params: Params, targets: Sequence[Target], slots: int) -> tuple[Params, Params]:
    """``params`` with ``slots`` empty injection slots per unit of every target, and the initial
    trainable mask: everything trains except the slots, whose active units train once injected;
    their compensation units and gates never do (``False``, a :attr:`TrainState.fixed` parameter,
    so the optimizer keeps no state for them)."""
    if slots < 1:
        raise ValueError(f"slots: got {slots}, must be >= 1 (injection slots per unit)")
    if SLOTS in params:
        raise ValueError(f"the parameter tree already has {SLOTS!r}: only one injection method per network")
    trainable = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
    tree, frozen = {}, {}
    for t in targets:
        kernel = get_path(params, t.kernel)
        if kernel.ndim != 2:
            raise ValueError(f"layer {t.name}: injection needs a dense kernel (D, N), got shape {kernel.shape}")
        d, n = kernel.shape
        zeros = {
            "kernel": jnp.zeros((slots, d, n), kernel.dtype),
            "bias": jnp.zeros((slots, n), kernel.dtype),
            "comp_kernel": jnp.zeros((slots, d, n), kernel.dtype),
            "comp_bias": jnp.zeros((slots, n), kernel.dtype),
            "gate": jnp.zeros((slots, n), kernel.dtype),
            "comp_gate": jnp.zeros((slots, n), kernel.dtype),
        }
        for key, value in zeros.items():
            tree = set_path_create(tree, t.module + (key,), value)
            never = key in FROZEN_SLOT_PARAMS  # the Python False: a TrainState.fixed parameter
            frozen = set_path_create(frozen, t.module + (key,), False if never else jnp.zeros(value.shape, bool))
    return {**params, SLOTS: tree}, {**trainable, SLOTS: frozen}


def slot_topology(topology: Topology, targets: Sequence[Target]) -> Topology:
    """``topology`` with each neuron target's slot weights (active kernel and bias) added to the
    layer's incoming slices, so the diagnostics (masked by the trainable tree) see the active units."""
    by_name = {t.name: t for t in targets if t.neuron}
    layers = []
    for layer in topology.layers:
        t = by_name.get(layer.name)
        if t is not None:
            slots = (Slice((SLOTS, *t.module, "kernel")), Slice((SLOTS, *t.module, "bias"), bias=True))
            layer = dataclasses.replace(layer, incoming=layer.incoming + slots)
        layers.append(layer)
    return dataclasses.replace(topology, layers=tuple(layers))


def injection_forward(targets: Sequence[Target]):
    """``wrap(apply_fn) -> apply_fn`` that adds every target's used slots to its output ``h``.

    ``apply_fn(variables, *inputs, **kwargs)`` is a Flax apply; the slots are read from
    ``variables["params"]`` (:data:`SLOTS`), so online and target parameters each use their own.
    """
    by_module = {t.module: t for t in targets}

    def wrap(apply_fn):
        def apply(variables, *inputs, **kwargs):
            slots = variables.get("params", {}).get(SLOTS)
            if slots is None:
                return apply_fn(variables, *inputs, **kwargs)

            def interceptor(next_fun, f_args, f_kwargs, context):
                out = next_fun(*f_args, **f_kwargs)
                target = by_module.get(tuple(context.module.path))
                if target is None or context.method_name != "__call__":
                    return out
                if target.neuron and not isinstance(context.module, Neurons):
                    raise ValueError(
                        f"injection into layer {target.name}: its module {type(context.module).__name__} returns "
                        "z, not h = σ(z); build dense neuron layers with plastix.nn.Neurons"
                    )
                s = dict(get_path(slots, target.module))
                for frozen in FROZEN_SLOT_PARAMS:
                    s[frozen] = jax.lax.stop_gradient(s[frozen])
                x = f_args[0]

                if not target.neuron:  # linear head: Σ_k gate·(x U_k + v_k) − comp_gate·(x U⁰_k + v⁰_k) is one layer
                    return out + x @ _linear_sum(s, "kernel") + _linear_sum(s, "bias")

                def unit(kernel: str, bias: str, k: int) -> Array:  # (..., N)
                    return target.activation(x @ s[kernel][k] + s[bias][k])

                for k in range(s["gate"].shape[0]):  # one plain dense layer per slot (XLA:CPU fuses these best)
                    active = s["gate"][k] * unit("kernel", "bias", k)
                    out = out + (active - s["comp_gate"][k] * unit("comp_kernel", "comp_bias", k))
                return out

            with nn.intercept_methods(interceptor):
                return apply_fn(variables, *inputs, **kwargs)

        return apply

    return wrap


def _linear_sum(s: dict, part: str) -> Array:
    """``Σ_k gate[k]·s[part][k] − comp_gate[k]·s["comp_" + part][k]``: a linear head's slots as one
    kernel ``(D, N)`` or bias ``(N,)``. One matmul instead of ``2K``; right after an injection the
    new slot's two terms cancel exactly (``U = U⁰``, both gates 1), so the head's output is unchanged
    bit for bit, and each active kernel's gradient is ``gate[k]·xᵀg`` as with separate layers."""
    gate, comp_gate = s["gate"], s["comp_gate"]  # (K, N)
    if part == "kernel":
        gate, comp_gate = gate[:, None, :], comp_gate[:, None, :]
    return jnp.sum(gate * s[part] - comp_gate * s["comp_" + part], axis=0)


def slot_parts(targets: Sequence[Target], slots: int) -> dict:
    """The :class:`~plastix.interventions.base.Intervention` fields of a method that adds ``slots``
    injection slots to every unit of ``targets``: ``extend``, ``forward``, ``extend_topology`` and
    ``slots`` (as ``Intervention(init, apply, **slot_parts(...))``)."""
    targets = tuple(targets)
    return {
        "extend": lambda params: add_slots(params, targets, slots),
        "forward": injection_forward(targets),
        "extend_topology": lambda base: slot_topology(base, targets),
        "slots": (targets, slots),
    }


def union_slot_parts(members: Sequence[tuple[tuple[Target, ...], int]]) -> dict:
    """:func:`slot_parts` for the union of several methods' slots (``Intervention.slots`` of each),
    which must all have the same number of slots per unit: a bundle of KNIFE and plasticity
    injection allocates both (each member injects into its own targets only; a slot never used
    is closed and adds exactly 0 to its unit)."""
    counts = {k for _, k in members}
    if len(counts) != 1:
        raise ValueError(f"injection slots per unit differ between the bundled methods: {sorted(counts)}")
    targets = tuple(dict.fromkeys(t for ts, _ in members for t in ts))
    return slot_parts(targets, counts.pop())


def inject(
    state: TrainState,
    picks: Sequence[tuple[Target, Array]],
    fresh: Params,
    freeze_knowledge: bool | Array = True,
    compensation: bool | Array = True,
    copy_current: bool | Array = False,
) -> TrainState:
    """Inject one new active unit (and its compensation copy) into each selected unit of each target.

    ``picks`` is ``[(target, units), ...]`` with ``units`` bool ``(N,)`` of the target's units. Each
    selected unit with a free slot gets, in its first free slot k, an active unit with the incoming
    weights of ``fresh`` (``fresh[target.kernel]``, bias 0; with ``copy_current``: a copy of the
    unit's current original weights and bias) and an identical frozen compensation unit; its
    gate opens. Its knowledge (original incoming weights and earlier slots) is frozen when
    ``freeze_knowledge``. The optimizer moments of the new slot start at zero. Units without a free
    slot are left as they are. Shapes never change; with no unit selected the state is unchanged.
    Without ``compensation`` (KNIFE's ablation) the slot's ``comp_gate`` stays closed: the output
    changes by the new active unit's output. The three flags may be bool scalars computed under
    ``jit`` (KNIFE's ablations are data, so they share one compiled program). All targets are done
    in one pass over the optimizer state (tracing and compiling a pass per target made KNIFE's
    program markedly larger).
    """
    freeze = jnp.asarray(freeze_knowledge, bool)
    params, trainable = state.params, state.trainable
    if trainable is None:
        raise ValueError("inject: the train state has no trainable mask; build it with the method's extend()")
    # Optimizer moments to zero: the new active unit's (it starts fresh) and the knowledge this
    # injection freezes. Elements frozen before have zero moments already (TrainState keeps them at
    # 0), so every other leaf passes through as it is and costs no select in the compiled program.
    touched = zeros_like_bool(params)
    for target, units in picks:
        s = get_path(params[SLOTS], target.module)
        k_slots, _, _ = s["kernel"].shape
        used = s["gate"] > 0  # (K, N)
        has_free = ~jnp.all(used, axis=0)
        first_free = jnp.argmax(~used, axis=0)
        chosen = units & has_free
        new_slot = (jnp.arange(k_slots)[:, None] == first_free[None, :]) & chosen[None, :]  # (K, N)
        w_now, b_now = get_path(params, target.kernel), get_path(params, target.bias)
        w_new = jnp.where(copy_current, w_now, get_path(fresh, target.kernel))
        b_new = jnp.where(copy_current, b_now, jnp.zeros_like(b_now))
        hit_k = new_slot[:, None, :]
        updated = {
            "kernel": jnp.where(hit_k, w_new[None], s["kernel"]),
            "comp_kernel": jnp.where(hit_k, w_new[None], s["comp_kernel"]),
            "bias": jnp.where(new_slot, b_new[None], s["bias"]),
            "comp_bias": jnp.where(new_slot, b_new[None], s["comp_bias"]),
            "gate": jnp.where(new_slot, jnp.ones_like(s["gate"]), s["gate"]),
            "comp_gate": jnp.where(new_slot, jnp.asarray(compensation, s["gate"].dtype), s["comp_gate"]),
        }
        for key, value in updated.items():
            params = set_path(params, (SLOTS, *target.module, key), value)
        knowledge = used & chosen[None, :] & freeze  # earlier slots freeze
        for key, hit, old in (("kernel", hit_k, knowledge[:, None, :]), ("bias", new_slot, knowledge)):
            path = (SLOTS, *target.module, key)
            shape = get_path(params, path).shape
            hit, old = jnp.broadcast_to(hit, shape), jnp.broadcast_to(old, shape)
            touched = set_path(touched, path, hit | old)  # the new active unit, and earlier slots now frozen
            trainable = set_path(trainable, path, (get_path(trainable, path) & ~old) | hit)
        for path, bias in ((target.kernel, False), (target.bias, True)):  # the unit's original incoming weights
            if has_path(params, path):
                hit = Slice(path, bias=bias).mask(chosen & freeze, get_path(params, path).shape)
                touched = set_path(touched, path, get_path(touched, path) | hit)
                trainable = set_path(trainable, path, get_path(trainable, path) & ~hit)
    return state.replace(params=params, trainable=trainable).with_fresh_moments(touched)


@dataclasses.dataclass(frozen=True)
class InjectionConfig:
    """Plasticity injection (Nikishin et al. 2023): a new trainable copy of the output heads.

    At each trigger every unit of the chosen heads is injected (:func:`inject`): the current head
    is frozen, a freshly initialized trainable head is added and a frozen copy of it subtracted, so
    the outputs are unchanged and learning continues in the new head.

    Attributes:
      period: updates between injections with ``trigger="period"`` or ``"both"``.
      layers: head modules to inject into (default: every output head of the topology).
      slots: how many injections each head can take.
    """

    period: int = 1000
    layers: tuple[str, ...] = ()
    slots: int = 1

    def __post_init__(self):
        if self.period < 1:
            raise ValueError(f"InjectionConfig.period must be >= 1 update, got {self.period}")
        if self.slots < 1:
            raise ValueError(f"InjectionConfig.slots: got {self.slots}, must be >= 1 (injections per head)")
        object.__setattr__(self, "layers", tuple(self.layers))


def plasticity_injection(config: InjectionConfig, topology: Topology, init_params) -> Intervention:
    """Plasticity injection as an :class:`Intervention` (``make_intervention`` adds its trigger)."""
    try:
        targets = head_targets(topology, config.layers)
    except ValueError as e:
        raise ValueError(f"InjectionConfig.{e}") from None
    if not targets:
        raise ValueError("InjectionConfig: the topology declares no output head (ParamLayer that feeds nothing)")

    def apply(key: Array, state: TrainState, scores, context) -> TrainState:
        every_unit = [(t, jnp.ones(get_path(state.params, t.kernel).shape[-1], bool)) for t in targets]
        return inject(state, every_unit, init_params(key))

    return Intervention(_no_state, apply, **slot_parts(targets, config.slots))
