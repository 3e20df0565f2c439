"""What every intervention shares: the train state it edits and the ``Intervention`` shape.

An intervention is a pair of pure functions, like an optax transformation::

    intervention.init(params) -> intervention_state        # kept in TrainState.intervention_state
    intervention.apply(key, train_state, scores) -> train_state

``scores`` is the :class:`plastix.metrics.Diagnostics` computed on a scoring batch just before.
``apply`` never changes array shapes, so it runs inside ``jit``, under ``vmap`` over seeds and
inside ``lax.scan``; a training loop calls it after every period and gates it with a mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import Array

from plastix.nn.topology import Params, Path, get_path, set_path

InitParams = Callable[[Array], Params]
"""``init_params(key) -> params``: a fresh draw of the network's original initializers."""


class TrainState(flax.struct.PyTreeNode):
    """Parameters, optimizer and intervention state of one network.

    Attributes:
      step: number of optimizer updates applied so far (int32 scalar).
      params: nested dict of parameters.
      opt_state: the optax state of ``tx``.
      intervention_state: whatever the intervention's ``init`` returned (``()`` if stateless).
      tx: the optax transformation (static).
    """

    step: Array
    params: Params
    opt_state: Any
    intervention_state: Any = ()
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)

    @classmethod
    def create(cls, params: Params, tx: optax.GradientTransformation, intervention_state: Any = ()):
        return cls(jnp.zeros((), jnp.int32), params, tx.init(params), intervention_state, tx)

    def apply_gradients(self, grads: Params) -> "TrainState":
        """One optimizer step."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(
            step=self.step + 1, params=optax.apply_updates(self.params, updates), opt_state=opt_state
        )


class Intervention(NamedTuple):
    """``init(params) -> state`` and ``apply(key, train_state, scores) -> train_state``."""

    init: Callable[[Params], Any]
    apply: Callable[[Array, TrainState, Any], TrainState]


def _no_state(params: Params) -> tuple:
    return ()


def no_intervention() -> Intervention:
    """The identity: training without intervention."""
    return Intervention(_no_state, lambda key, state, scores: state)


def tree_select(pred: Array, on_true: Any, on_false: Any) -> Any:
    """Element-wise ``pred ? on_true : on_false`` over two pytrees of equal structure (no ``cond``)."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def every(intervention: Intervention, period: int) -> Intervention:
    """Apply ``intervention`` only when ``train_state.step % period == 0`` (and step > 0).

    Both branches are computed and one is selected with a mask, which is what ``vmap`` would
    do with a ``lax.cond`` anyway; the surgery costs little next to the updates of a period.
    """
    if int(period) < 1:
        raise ValueError(f"period must be a positive number of updates, got {period}")

    def apply(key, state, scores):
        due = (state.step % period == 0) & (state.step > 0)
        return tree_select(due, intervention.apply(key, state, scores), state)

    return Intervention(intervention.init, apply)


def zeros_like_bool(params: Params) -> Params:
    """A tree of ``False`` with the structure and shapes of ``params``."""
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), bool), params)


def mark(touched: Params, path: Path, mask: Array) -> Params:
    """``touched[path] |= mask``."""
    return set_path(touched, path, get_path(touched, path) | mask)


def reset_optimizer_elements(
    tx: optax.GradientTransformation, opt_state: Any, touched: Params
) -> Any:
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
