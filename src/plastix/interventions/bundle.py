"""Several plasticity methods in one compiled program, one method per vmapped run.

The papers' studies compare methods (none, ReDo, ReGraMa, ReBorn, CBP, Reset, ...) on the same
learner; run one after another, each method is its own XLA program, compiled and stepped alone.
Most methods differ only in what they do at the end of a period (``apply``) or after an update
(``on_update``), not in the network's parameters or forward pass. A *bundle* puts such methods
into one :class:`~plastix.interventions.base.Intervention`: its state holds every member's state
and the index of the member this run uses (``BundleState.member``, an int32 scalar, so a
``vmap`` over runs can give each run its own method). Every member's ``apply`` is computed and
the run's own result selected element-wise (as ``vmap`` does with a ``lax.cond`` anyway), so run
``i`` computes what a run of member ``member[i]`` alone computes, from the same key.

Members must build the same parameters and forward pass (same ``extend``, ``forward`` and
``extend_topology``): :func:`program_key` says which methods may share a program (the registry's
``Method.program``), and :class:`PlasticityBundle` refuses members whose keys differ. Methods with
injection slots (KNIFE, plasticity injection) share a program when they have as many slots per
unit: the bundle allocates the union of their slots (``Intervention.slots``), each member injects
into its own; a closed slot adds exactly 0, so a member computes what it computes alone up to
float rounding (the extra terms can change how XLA fuses a layer's sums). A per-update
hook (CBP) runs for every run of a bundle at every update, so :func:`group_key`, which decides
what experiments put together, keeps such methods apart unless their settings are identical.

On a CPU a bundle saves compilation (one program instead of one per method) but not compute: the
runs' work grows linearly with their number either way. Where many small runs leave an
accelerator idle, it also runs them in parallel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax import Array

from plastix.interventions.base import Intervention, TrainState, _keep, gated_apply, tree_select
from plastix.interventions.injection import union_slot_parts
from plastix.interventions.weight_decay import OptimizerConfig


class BundleState(flax.struct.PyTreeNode):
    """Intervention state of a bundle.

    Attributes:
      member: int32 scalar, the index of the member method this run uses (``(runs,)`` when vmapped).
      states: every member's own intervention state, in member order.
    """

    member: Array
    states: tuple


def _put(states: tuple, i: int, value: Any) -> tuple:
    return states[:i] + (value,) + states[i + 1 :]


def bundle(members: Sequence[Intervention]) -> Intervention:
    """One intervention that behaves as ``members[state.member]``.

    ``extend``, ``forward`` and ``extend_topology`` are the first member's (all members must have
    the same; see :func:`program_key`), or for methods with injection slots those of the union of
    the members' slots. Members without a per-update hook cost nothing per update. Members that
    declare the same ``Intervention.shares`` key (KNIFE and its ablations) run one ``apply``.
    """
    members = tuple(members)
    if not members:
        raise ValueError("bundle: needs at least one member intervention")

    def init(params) -> BundleState:
        return BundleState(jnp.zeros((), jnp.int32), tuple(m.init(params) for m in members))

    def each(state: TrainState, call, groups, context=None) -> TrainState:
        """``call(member, state)`` once per group of members (indices), each run getting its own
        member's result: a group shares one call, made on each run's own member state. With
        ``context`` given, members gated by a trigger (``Intervention.gate``; ``call`` then makes
        the ungated call) are gated in the same select that picks the group's runs."""
        inner: BundleState = state.intervention_state
        result = state
        for group in groups:
            mine = inner.member == group[0]
            for i in group[1:]:
                mine = mine | (inner.member == i)

            def act(result, group=group):
                own = inner.states[group[0]]
                for i in group[1:]:
                    own = tree_select(inner.member == i, inner.states[i], own)
                out = call(members[group[0]], result.replace(intervention_state=own))
                if len(group) == 1:
                    states = _put(inner.states, group[0], out.intervention_state)
                else:
                    states = inner.states
                    for i in group:
                        states = _put(states, i, tree_select(inner.member == i, out.intervention_state, states[i]))
                return out.replace(intervention_state=inner.replace(states=states))

            gate = members[group[0]].gate
            if context is not None and gate is not None:
                trigger = gate[0]
                result = gated_apply(trigger, mine & trigger.fires(context), result, act)
            else:
                result = tree_select(mine, act(result), result)
        return result

    shared: dict = {}
    for i, member in enumerate(members):
        shared.setdefault(("alone", i) if member.shares is None else ("shared", member.shares), []).append(i)
    apply_groups = [tuple(group) for group in shared.values()]
    hook_groups = [(i,) for i, m in enumerate(members) if m.on_update is not _keep]

    def apply(key, state, scores, context):
        def call(member, s):  # gated members ungated: ``each`` gates them
            return (member.gate[1] if member.gate else member.apply)(key, s, scores, context)

        return each(state, call, apply_groups, context)

    def on_update(key, state, activity):
        return each(state, lambda m, s: m.on_update(key, s, activity), hook_groups)

    first = members[0]
    on_update_fn = on_update if any(m.on_update is not _keep for m in members) else _keep
    slotted = [m.slots for m in members if m.slots is not None]
    if slotted and len(slotted) < len(members):
        raise ValueError("bundle: methods with injection slots cannot share a program with methods without")
    if slotted:  # KNIFE and plasticity injection: the union of the members' slots
        return Intervention(init, apply, on_update_fn, **union_slot_parts(slotted))
    return Intervention(init, apply, on_update_fn, first.extend, first.forward, first.extend_topology)


def assign_members(tree: Any, member: Array) -> Any:
    """``tree`` (e.g. a training carry) with every :class:`BundleState`'s ``member`` set to ``member``.

    Args:
      tree: any pytree; with runs vmapped, ``member`` has the runs' leading shape ``(runs,)``.
      member: int32, which member each run uses.
    """

    def assign(x):
        return x.replace(member=jnp.asarray(member, jnp.int32)) if isinstance(x, BundleState) else x

    return jax.tree.map(assign, tree, is_leaf=lambda x: isinstance(x, BundleState))


def program_key(config: Any) -> Hashable:
    """What decides a :class:`~plastix.interventions.methods.PlasticityConfig`'s compiled program
    beyond its ``apply``: the parameters its method adds and its forward pass (``Method.program``),
    and the optimizer's weight decay. Configs with equal keys can share one program (a bundle)."""
    spec = config.spec
    settings = config.intervention
    shape = None if spec.program is None or settings is None else spec.program(settings)
    return shape, config.weight_decay


def group_key(config: Any) -> Hashable:
    """:func:`program_key`, and for a method that acts after every update (``default_trigger``
    ``update``, e.g. CBP) its settings too: configs with equal keys are worth running as one bundle
    (a member's per-update hook would otherwise cost every run of the bundle)."""
    hook = config.intervention if config.spec.default_trigger == "update" else None
    return program_key(config), hook


@dataclasses.dataclass(frozen=True)
class PlasticityBundle:
    """Several :class:`~plastix.interventions.methods.PlasticityConfig` run as one program (one
    member per vmapped run; see the module docstring). Stands where a learner takes a
    ``PlasticityConfig``.

    Attributes:
      members: the configs, in the order of ``BundleState.member``; all with one :func:`program_key`.
    """

    members: tuple

    def __post_init__(self):
        object.__setattr__(self, "members", tuple(self.members))
        if not self.members:
            raise ValueError("PlasticityBundle.members: needs at least one PlasticityConfig")
        keys = {program_key(m) for m in self.members}
        if len(keys) > 1:
            raise ValueError(
                "PlasticityBundle.members: these methods build different parameters or forward passes and "
                f"cannot share a program: {[m.method for m in self.members]} (program keys {sorted(map(str, keys))})"
            )

    @property
    def method(self) -> str:
        return "+".join(m.method for m in self.members)

    @property
    def needs_scores(self) -> bool:
        return any(m.needs_scores for m in self.members)

    def check_loop_period(self, loop_period: int) -> None:
        for m in self.members:
            m.check_loop_period(loop_period)

    def optimizer(self, base: OptimizerConfig) -> OptimizerConfig:
        return self.members[0].optimizer(base)  # one weight decay for all (part of the program key)

    def unused_settings(self) -> tuple[str, ...]:
        return ()
