"""What every intervention shares: the train state it edits, the loop's context, triggers.

An intervention is a triple of pure functions, like an optax transformation::

    intervention.init(params) -> intervention_state         # kept in TrainState.intervention_state
    intervention.apply(key, train_state, scores, context) -> train_state
    intervention.on_update(key, train_state, activity) -> train_state
        # after every optimizer update (CBP's running utilities); identity by default

``scores`` is the :class:`plastix.metrics.Diagnostics` computed on a scoring batch just before.
``context`` (:class:`Context`) comes from the training loop: the update step, the task index and
whether a task switch happened in the period that just ended. Interventions do not decide when
they run: :func:`triggered` wraps one with a :class:`Trigger` (every ``F`` updates, at a task
switch, or both) and the loop calls it at the end of every period. ``apply`` never changes array
shapes, so it runs inside ``jit``, under ``vmap`` over seeds and inside ``lax.scan``.

Frozen elements: ``TrainState.trainable`` is an optional boolean tree with the parameters'
structure. :meth:`TrainState.apply_gradients` applies the whole optax chain (decoupled weight decay
included) and then keeps every frozen element bit-identical and its optimizer moments at zero
(reset after each step, or kept at zero by the chain itself when it is :class:`ZeroPreserving`;
KNIFE and plasticity injection freeze parts of a network this way).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import Array

from plastix.jit import when_any
from plastix.nn.topology import Params, Path, Topology, get_path, set_path

InitParams = Callable[[Array], Params]
"""``init_params(key) -> params``: a fresh draw of the network's original initializers."""


class ZeroPreserving(optax.GradientTransformationExtraArgs):
    """An optax transformation that declares: a parameter element whose gradient is 0 at every
    step keeps its state elements (moments, traces) at 0 once they are 0.

    True of Adam, RMSProp, SGD with momentum, gradient clipping and decoupled weight decay; false
    of an L2 penalty added to the gradient before a stateful step (the penalty of a frozen element
    is not 0). :meth:`TrainState.apply_gradients` zeroes the gradient of frozen elements, and
    :meth:`TrainState.with_trainable` zeroes their state when they freeze, so under such a chain
    their state stays 0 without being reset after every step (one masked write per moment leaf
    less per update). Wrap a chain only when this holds: ``ZeroPreserving(*chain)``.
    """


class TrainState(flax.struct.PyTreeNode):
    """Parameters, optimizer and intervention state of one network.

    Attributes:
      step: number of optimizer updates applied so far (int32 scalar).
      params: nested dict of parameters.
      opt_state: the optax state of ``tx`` over the parameters that can train (every one not in
        ``fixed``).
      intervention_state: whatever the intervention's ``init`` returned (``()`` if stateless).
      trainable: ``None`` (every element trains) or a boolean tree with the structure and shapes of
        ``params``; ``False`` elements are frozen (see :meth:`apply_gradients`).
      last_update: ``None``, or the update the last optimizer step applied (same tree as
        ``params``; zero for frozen elements), kept when created with ``keep_last_update=True``
        for the stagnation ratio with ``DiagnosticsConfig.stagnation_source="update"``.
      tx: the optax transformation (static).
      fixed: paths of parameters that never train (static; e.g. KNIFE's compensation units and
        gates): they have no optimizer state and an optimizer step leaves them as they are, at no
        cost. Declared by giving their ``trainable`` leaf as the Python ``False`` to :meth:`create`.
    """

    step: Array
    params: Params
    opt_state: Any
    intervention_state: Any = ()
    trainable: Params | None = None
    last_update: Params | None = None
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)
    fixed: frozenset = flax.struct.field(pytree_node=False, default=frozenset())

    @classmethod
    def create(
        cls,
        params: Params,
        tx: optax.GradientTransformation,
        intervention_state: Any = (),
        trainable: Params | None = None,
        keep_last_update: bool = False,
    ):
        """A fresh state. ``trainable``: ``None`` (all train) or a tree like ``params`` whose leaves
        are bool arrays (broadcast to the parameter's shape) or the Python ``False``: that parameter
        never trains (:attr:`fixed`)."""
        fixed = frozenset() if trainable is None else frozenset(_paths_where(trainable, lambda t: t is False))
        last = jax.tree.map(jnp.zeros_like, params) if keep_last_update else None
        state = cls(jnp.zeros((), jnp.int32), params, None, intervention_state, None, last, tx, fixed)
        state = state.replace(opt_state=tx.init(state.trainable_part(params)))
        return state if trainable is None else state.with_trainable(trainable)

    def trainable_part(self, tree: Params) -> Params:
        """``tree`` (structured like ``params``) with the :attr:`fixed` leaves left out (``None``):
        what the optimizer sees."""
        if not self.fixed:
            return tree
        return jax.tree_util.tree_map_with_path(lambda path, x: None if _path(path) in self.fixed else x, tree)

    def _with_trainable_part(self, tree: Params, part: Params) -> Params:
        """``tree`` with its non-fixed leaves taken from ``part`` (a :meth:`trainable_part` tree)."""
        if not self.fixed:
            return part
        new = {_path(path): x for path, x in jax.tree_util.tree_leaves_with_path(part)}
        return jax.tree_util.tree_map_with_path(lambda path, x: new.get(_path(path), x), tree)

    def with_trainable(self, trainable: Params | None) -> TrainState:
        """This state with the trainable mask ``trainable`` (moments of frozen elements zeroed now).
        A :attr:`fixed` parameter stays frozen whatever ``trainable`` says (it has no optimizer state)."""
        if trainable is None:
            if self.fixed:
                raise ValueError("TrainState.with_trainable(None): this state has parameters that never train")
            return self.replace(trainable=None)
        trainable = jax.tree_util.tree_map_with_path(
            lambda path, p, t: (
                jnp.zeros(jnp.shape(p), bool)
                if _path(path) in self.fixed
                else jnp.broadcast_to(jnp.asarray(t, bool), jnp.shape(p))
            ),
            self.params,
            trainable,
        )
        frozen = jax.tree.map(jnp.logical_not, trainable)
        return self.replace(trainable=trainable).with_fresh_moments(frozen)

    def with_fresh_moments(self, touched: Params) -> TrainState:
        """This state with the optimizer-state elements of the ``touched`` parameter elements (a
        bool tree like ``params``) set to zero (:func:`reset_optimizer_elements`)."""
        opt_state = reset_optimizer_elements(self.tx, self.opt_state, self.trainable_part(touched))
        return self.replace(opt_state=opt_state)

    def apply_gradients(self, grads: Params) -> TrainState:
        """One optimizer step; frozen elements (``trainable`` False) keep their value bit for bit.

        The gradient of a frozen element is zeroed before the optax chain, its update is dropped
        after the whole chain (so decoupled weight decay and momentum cannot move it either), and
        its optimizer moments are set back to zero (a :class:`ZeroPreserving` chain keeps them at
        zero by itself: no reset). :attr:`fixed` parameters are not seen by the optimizer at all.
        """
        grads, params = self.trainable_part(grads), self.trainable_part(self.params)
        if self.trainable is None:
            updates, opt_state = self.tx.update(grads, self.opt_state, params)
            new, last = optax.apply_updates(params, updates), updates
        else:
            trainable = self.trainable_part(self.trainable)
            grads = jax.tree.map(lambda g, t: jnp.where(t, g, jnp.zeros_like(g)), grads, trainable)
            updates, opt_state = self.tx.update(grads, self.opt_state, params)
            new = jax.tree.map(lambda p, u, t: jnp.where(t, (p + u).astype(p.dtype), p), params, updates, trainable)
            if not isinstance(self.tx, ZeroPreserving):  # otherwise zero gradients keep frozen moments at 0
                frozen = jax.tree.map(jnp.logical_not, trainable)
                opt_state = reset_optimizer_elements(self.tx, opt_state, frozen)
            last = None
            if self.last_update is not None:
                last = jax.tree.map(lambda u, t: jnp.where(t, u, jnp.zeros_like(u)), updates, trainable)
        if self.last_update is not None:  # fixed parameters: their last update stays 0
            last = self._with_trainable_part(self.last_update, last)
        return self.replace(
            step=self.step + 1,
            params=self._with_trainable_part(self.params, new),
            opt_state=opt_state,
            last_update=None if self.last_update is None else last,
        )


def _path(key_path) -> Path:
    """A pytree key path as the tuple of its dict keys (``("mixer", "hyper_w1", "kernel")``)."""
    return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in key_path)


def _paths_where(tree: Any, test: Callable[[Any], bool]) -> list[Path]:
    """Paths of the leaves of ``tree`` for which ``test(leaf)`` holds (Python scalars are leaves too)."""
    return [_path(p) for p, leaf in jax.tree_util.tree_leaves_with_path(tree) if test(leaf)]


class Context(NamedTuple):
    """What the training loop tells an intervention at the end of a period (all arrays, jittable).

    Attributes:
      step: optimizer updates so far (int32).
      task: index of the current task (int32; 0 without a task schedule).
      task_switched: whether a task switch happened during the period that just ended (bool).
    """

    step: Array
    task: Array
    task_switched: Array

    @classmethod
    def at(cls, step, task=0, task_switched=False) -> Context:
        return cls(jnp.asarray(step, jnp.int32), jnp.asarray(task, jnp.int32), jnp.asarray(task_switched, bool))


def _keep(key: Array, state: TrainState, activity: Callable[[], dict[str, Array]]) -> TrainState:
    return state


def _no_extension(params: Params) -> tuple[Params, None]:
    return params, None


def _same_forward(apply_fn: Callable) -> Callable:
    return apply_fn


def _same_topology(topology: Topology) -> Topology:
    return topology


class Intervention(NamedTuple):
    """The pure functions of one intervention.

    Attributes:
      init: ``init(params) -> state`` (kept in ``TrainState.intervention_state``).
      apply: ``apply(key, train_state, scores, context) -> train_state``.
      on_update: ``on_update(key, train_state, activity) -> train_state``, called by the learner
        after every optimizer update (identity by default). ``activity()`` returns ``{layer name:
        E|h_i| (N,)}`` on the batch of that update, taken at the parameters the gradient was taken
        at; it is computed only if the hook calls it (CBP's utilities read it).
      extend: ``extend(params) -> (params, trainable or None)``: parameters the method pre-allocates
        (KNIFE's injection slots) and the initial trainable mask, whose leaves may be the Python
        ``False`` for parameters that never train (:attr:`TrainState.fixed`: no optimizer state);
        identity by default.
      forward: ``forward(apply_fn) -> apply_fn``: how the method changes the network's forward pass
        (KNIFE adds its slots' units); identity by default. Learners run every forward pass through it.
      extend_topology: ``extend_topology(topology) -> topology``: the neuron layers as ``forward``
        computes them (KNIFE lists its slots' weights as incoming slices of the injected layers, so
        the diagnostics score an injected neuron by the part of it that learns); identity by default.
        Learners pass it to :func:`~plastix.metrics.diagnose`.
      slots: ``(targets, K)`` for methods whose ``extend`` / ``forward`` / ``extend_topology`` are
        injection slots (:func:`~plastix.interventions.injection.slot_parts`: KNIFE, plasticity
        injection), so that a bundle of such methods allocates the union of their slots; ``None``
        otherwise.
      shares: a hashable key, or ``None``. Interventions with equal keys have the same ``apply``
        code and keep whatever differs between them as data in their state (KNIFE's ablations):
        a bundle computes their ``apply`` once, on each run's own state, instead of once per member.
      gate: ``(trigger, ungated apply)`` when ``apply`` is that apply gated by a :class:`Trigger`
        (:func:`triggered`), so a bundle can gate its members in the same select that picks each
        run's member; ``None`` otherwise.
    """

    init: Callable[[Params], Any]
    apply: Callable[[Array, TrainState, Any, Context], TrainState]
    on_update: Callable[[Array, TrainState, Callable[[], dict[str, Array]]], TrainState] = _keep
    extend: Callable[[Params], tuple[Params, Params | None]] = _no_extension
    forward: Callable[[Callable], Callable] = _same_forward
    extend_topology: Callable[[Topology], Topology] = _same_topology
    slots: Any = None
    shares: Hashable | None = None
    gate: Any = None


def create_train_state(
    intervention: Intervention, params: Params, tx: optax.GradientTransformation, keep_last_update: bool = False
) -> TrainState:
    """The train state of a fresh network under ``intervention``: its ``extend``ed parameters and
    trainable mask, the optimizer state and the intervention state (what every learner starts from)."""
    params, trainable = intervention.extend(params)
    return TrainState.create(params, tx, intervention.init(params), trainable, keep_last_update)


def _no_state(params: Params) -> tuple:
    return ()


def no_intervention() -> Intervention:
    """The identity: training without intervention."""
    return Intervention(_no_state, lambda key, state, scores, context: state)


TRIGGERS = ("period", "task_switch", "both")


@dataclasses.dataclass(frozen=True)
class Trigger:
    """When the loop applies an intervention.

    Attributes:
      every: apply when ``context.step`` is a positive multiple of ``every`` updates (0: never by period).
      on_task_switch: apply at the end of a period in which the task switched.
    """

    every: int = 0
    on_task_switch: bool = False

    def __post_init__(self):
        if int(self.every) < 0:
            raise ValueError(f"Trigger.every must be >= 0 updates, got {self.every}")
        if self.every == 0 and not self.on_task_switch:
            raise ValueError("Trigger: set every > 0, on_task_switch=True, or both; this trigger never fires")

    @classmethod
    def named(cls, kind: str, period: int) -> Trigger:
        """``"period"`` (every ``period`` updates), ``"task_switch"`` or ``"both"``."""
        check_choice("PlasticityConfig.trigger", kind, TRIGGERS)
        return cls(every=0 if kind == "task_switch" else period, on_task_switch=kind != "period")

    def fires(self, context: Context) -> Array:
        """Boolean scalar: does the intervention run now?"""
        due = jnp.zeros((), bool)
        if self.every:
            due = due | ((context.step % self.every == 0) & (context.step > 0))
        if self.on_task_switch:
            due = due | context.task_switched
        return due


def tree_select(pred: Array, on_true: Any, on_false: Any) -> Any:
    """Element-wise ``pred ? on_true : on_false`` over two pytrees of equal structure (no ``cond``)."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def triggered(intervention: Intervention, trigger: Trigger) -> Intervention:
    """Apply ``intervention`` only when ``trigger.fires(context)``.

    A periodic trigger computes both branches and selects one with a mask (what ``vmap`` makes of
    a ``lax.cond`` whose predicate differs between runs anyway): such methods fire at most period
    ends, and a conditional would copy the whole train state out of its branch each time on
    XLA:CPU. A trigger that fires at task switches puts the surgery in a conditional that runs
    when it fires for any of the vmapped runs (:func:`~plastix.jit.any_run`; the others select
    their unchanged state), so between switches, i.e. at most period ends, it costs nothing.
    """

    def apply(key, state, scores, context):
        def act(state):
            return intervention.apply(key, state, scores, context)

        return gated_apply(trigger, trigger.fires(context), state, act)

    shares = None if intervention.shares is None else (intervention.shares, trigger)
    return intervention._replace(apply=apply, shares=shares, gate=(trigger, intervention.apply))


def gated_apply(trigger: Trigger, fires: Array, state: Any, act: Callable[[Any], Any]) -> Any:
    """``fires ? act(state) : state`` as :func:`triggered` computes it for ``trigger``: a select, in a
    conditional on :func:`~plastix.jit.any_run` for task-switch triggers. ``fires``: bool scalar
    (per run under ``vmap``); ``act`` must keep the tree structure of ``state``."""

    if not trigger.on_task_switch:
        return tree_select(fires, act(state), state)
    return when_any(fires, act, state)


def every(intervention: Intervention, period: int) -> Intervention:
    """``triggered(intervention, Trigger(every=period))``: every ``period`` updates."""
    if int(period) < 1:
        raise ValueError(f"period must be a positive number of updates, got {period}")
    return triggered(intervention, Trigger(every=int(period)))


class Tally(flax.struct.PyTreeNode):
    """A running count an intervention keeps in its state (e.g. the neurons CBP replaced so far).

    The loop logs, every period, the sum of all tallies of one name found anywhere in the agent
    state as ``intervention/<name>`` (:func:`tallies`), so a method that never acts shows as 0.

    Attributes:
      count: int32 scalar.
      name: the metric's name (static).
    """

    count: Array
    name: str = flax.struct.field(pytree_node=False, default="count")

    def add(self, n: Array) -> Tally:
        return self.replace(count=self.count + jnp.asarray(n, jnp.int32))


def tallies(tree: Any) -> dict[str, Array]:
    """``{name: summed count}`` of every :class:`Tally` in ``tree``."""
    found: dict[str, Array] = {}
    for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, Tally)):
        if isinstance(leaf, Tally):
            found[leaf.name] = found.get(leaf.name, 0) + leaf.count
    return found


def changed_elements(before: Any, after: Any) -> Array:
    """How many array elements differ between two pytrees of equal structure (int32 scalar): what a
    period-end intervention changed in the agent state (parameters, optimizer moments, masks)."""
    # Leaves of one dtype are compared as one flat vector: a compare-and-sum per leaf of the agent
    # state (hundreds in a bundled MARL program) compiled as that many fusions of their own.
    by_dtype: dict = {}
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        pairs = by_dtype.setdefault(jnp.result_type(a), ([], []))
        pairs[0].append(jnp.ravel(a))
        pairs[1].append(jnp.ravel(b))
    counts = [jnp.sum(jnp.concatenate(a) != jnp.concatenate(b), dtype=jnp.int32) for a, b in by_dtype.values()]
    return sum(counts, jnp.zeros((), jnp.int32))


def zeros_like_bool(params: Params) -> Params:
    """A tree of ``False`` with the structure and shapes of ``params``."""
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), bool), params)


def mark(touched: Params, path: Path, mask: Array) -> Params:
    """``touched[path] |= mask``."""
    return set_path(touched, path, get_path(touched, path) | mask)


def reset_optimizer_elements(tx: optax.GradientTransformation, opt_state: Any, touched: Params) -> Any:
    """Zero the optimizer-state elements of touched parameters, matched by parameter path.

    Every part of ``opt_state`` that mirrors the parameters (Adam's ``mu`` and ``nu``, RMSProp's
    ``nu``, momentum traces, ...) has its touched elements set to 0; everything else (the step
    count, untouched elements) is left as it is. Uses :func:`optax.tree_map_params`, so the
    match is by parameter path, never by position in a list.

    Args:
      tx: the optimizer that produced ``opt_state``.
      opt_state: its state.
      touched: boolean tree with the structure of the parameters.
    """
    return optax.tree_map_params(
        tx,
        lambda moment, hit: jnp.where(hit, jnp.zeros_like(moment), moment),
        opt_state,
        touched,
        transform_non_params=lambda leaf: leaf,
    )


def check_choice(field: str, value: Any, allowed: tuple) -> None:
    """Raise ``ValueError`` naming ``field`` and the allowed values unless ``value`` is one."""
    if value not in allowed:
        raise ValueError(f"{field}: got {value!r}, allowed values are {allowed}")
