"""Recurrent networks whose hidden units are plastix neuron layers: the GRU agent of PyMARL.

A GRU hidden unit j (Flax ``nn.GRUCell``: gates ``r, z`` and candidate ``n``, parameters ``ir, iz,
in`` on the input with biases, ``hr, hz`` on the hidden state without bias, ``hn`` with bias) is
one neuron whose

- incoming slices are column j of each of the six gate kernels and entry j of the four biases;
- outgoing slices are row j of the three hidden kernels ``hr, hz, hn`` (it feeds every unit's
  gates at the next step) and row j of every kernel that reads the hidden state.

Its ``z`` is the new hidden state ``h_t`` (already in ``(-1, 1)``; the activation is the identity).
Zeroing unit j's outgoing rows removes its every influence on the outputs (``h_t[j]`` itself only
flows on through those rows), so ReDo with a GRU unit is function-preserving like with a dense one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from plastix.nn.mlp import _check_widths
from plastix.nn.topology import NeuronLayer, Neurons, ParamLayer, Path, Slice, Topology, _as_path

HIGHEST = jax.lax.Precision.HIGHEST

GRU_INPUT_GATES = ("ir", "iz", "in")
GRU_HIDDEN_GATES = ("hr", "hz", "hn")
GRU_BIASES = ("ir", "iz", "in", "hn")


def _identity(x: Array) -> Array:
    return x


def orthogonal(scale: float = 1.0):
    """A Haar-random orthogonal initializer computed in plain ``jnp`` (no LAPACK call).

    Gram–Schmidt (twice, for stability) of a Gaussian matrix's columns is its QR factor with a
    positive diagonal, the same distribution as ``jax.nn.initializers.orthogonal``. Flax's GRU
    draws its recurrent kernels with LAPACK's QR; interventions that re-draw initial parameters
    inside a seed-vmapped run (ReDo, Reset) then make a *batched* QR, whose LAPACK kernel fans out
    into XLA:CPU's intra-op thread pool from a thread of that pool and waits: with two concurrent
    QRs on a 2-core machine every pool thread waits and the run deadlocks (jaxlib 0.10,
    ``jax::ParallelBatchMap``). This initializer avoids the call.

    The products ask for full float32 precision: at XLA:GPU's default (TensorFloat-32 on Ampere and
    Hopper) the columns were orthonormal only to ~2e-4 (``tests/tf32_emulation.py``).

    Returns:
      ``init(key, shape (rows, cols), dtype) -> (rows, cols)`` with orthonormal columns (rows ≥
      cols) or rows (rows < cols), times ``scale``.
    """

    def init(key, shape, dtype=jnp.float32):
        if len(shape) != 2:
            raise ValueError(f"orthogonal: needs a 2-D shape, got {shape}")
        rows, cols = shape
        tall, short = max(rows, cols), min(rows, cols)
        a = jax.random.normal(key, (tall, short), jnp.float32)

        def column(j, q):
            v = a[:, j]
            for _ in range(2):  # classical Gram–Schmidt, repeated ("twice is enough")
                v = v - jnp.matmul(q, jnp.matmul(q.T, v, precision=HIGHEST), precision=HIGHEST)
            return q.at[:, j].set(v / jnp.linalg.norm(v))

        q = jax.lax.fori_loop(0, short, column, jnp.zeros((tall, short), jnp.float32))
        q = q if rows >= cols else q.T
        return (scale * q).astype(dtype)

    return init


def gru_layer(
    name: str,
    cell: str | Sequence[str],
    readers: Sequence[str | Sequence[str]],
    group: str = "net",
    flax_cell: bool = False,
) -> NeuronLayer:
    """The :class:`NeuronLayer` of the hidden units of a :class:`GRU` (or of a Flax ``nn.GRUCell``).

    Args:
      name: layer name.
      cell: module path of the :class:`GRU` (e.g. ``"gru"``), or of the ``nn.GRUCell`` (inside
        ``nn.RNN`` the cell keeps its own path).
      readers: kernel paths (other than the cell's own) that read the hidden state; unit j is row j.
      group: the network the layer belongs to.
      flax_cell: the module is a Flax ``nn.GRUCell`` (``z`` is the first of the ``(carry, output)``
        it returns per step; it needs ``nn.RNN(..., variable_axes={CAPTURE: 0, PERTURB: 0})``).
    """
    path: Path = _as_path(cell)
    incoming = tuple(Slice(path + (g, "kernel")) for g in GRU_INPUT_GATES + GRU_HIDDEN_GATES) + tuple(
        Slice(path + (g, "bias"), bias=True) for g in GRU_BIASES
    )
    consumers = tuple(Slice(path + (g, "kernel"), axis=0) for g in GRU_HIDDEN_GATES) + tuple(
        Slice(_as_path(r), axis=0) for r in readers
    )
    return NeuronLayer(
        name,
        path,
        consumers,
        kind="recurrent",
        activation=_identity,
        group=group,
        incoming=incoming,
        output_index=0 if flax_cell else None,
    )


class _GateParams(nn.Module):
    """One gate's parameters, laid out (names, shapes, initial draws) as Flax's ``nn.Dense``."""

    features: int
    use_bias: bool
    kernel_init: Callable

    @nn.compact
    def __call__(self, in_features: int) -> tuple[Array, Array | None]:
        kernel = self.param("kernel", self.kernel_init, (in_features, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,)) if self.use_bias else None
        return kernel, bias


class GRU(nn.Module):
    """A GRU over time: Flax ``nn.GRUCell``'s parameters and equations, minus a zero initial state's zero work.

    Same parameters as ``nn.GRUCell`` at this module's path (``ir, iz, in`` with biases on the
    input, ``hr, hz`` without and ``hn`` with a bias on the hidden state; same initializers, so
    ``init`` draws the same values) and the same equations::

        r = σ(x W_ir + b_ir + h W_hr)    u = σ(x W_iz + b_iz + h W_hz)
        n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))    h' = (1 − u) ⊙ n + u ⊙ h

    What differs: when no initial state is given, the first step skips the hidden side (``h = 0``:
    it is ``b_hn`` alone, and its weight gradients are exactly 0), which on one-step episodes
    (matrix games: 2 stored steps) is half of the recurrent work; the values are the same bit for
    bit. The matmuls stay per gate and per step, as in Flax: on XLA:CPU, hoisting the input side
    out of the loop as one ``(T·B, D) × (D, 3H)`` matmul made the forward pass over 101 steps 2.8×
    slower (14.6 vs 5.2 ms), and one ``(H, 3H)`` matmul for the three gates was slower in the
    backward pass.

    Neuron capture (:func:`plastix.nn.topology.capture`): the module runs its own loop, so it
    takes the perturbation itself (``perturbation()``, added to every step's state inside the
    recurrence) and reports the states of all steps through ``preactivation`` (``z = h_t``,
    ``(T, *batch, H)``).

    ``__call__(x (T, *batch, D), h0 (*batch, H) | None) -> (h_T (*batch, H), states (T, *batch, H))``.
    """

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()
    recurrent_kernel_init: Callable = orthogonal()
    perturbs_itself = True  # see plastix.nn.topology: capture's perturbation enters the recurrence here

    @nn.compact
    def __call__(self, x: Array, h0: Array | None = None) -> tuple[Array, Array]:
        n = self.features
        if x.ndim < 2:
            raise ValueError(f"GRU expects time-major inputs (T, *batch, D), got shape {x.shape}")
        if h0 is not None and h0.shape != x.shape[1:-1] + (n,):
            raise ValueError(f"GRU: h0 has shape {h0.shape}, expected (*batch, H) = {x.shape[1:-1] + (n,)}")
        given = [_GateParams(n, True, self.kernel_init, name=g)(x.shape[-1]) for g in GRU_INPUT_GATES]
        hidden = [_GateParams(n, g == "hn", self.recurrent_kernel_init, name=g)(n) for g in GRU_HIDDEN_GATES]
        dz = self.perturbation()

        def step(h, x_t, dz_t):
            """``h' = GRU(h, x)``; ``h = None`` is the zero state (no hidden-side matmuls)."""
            (w_ir, b_ir), (w_iz, b_iz), (w_in, b_in) = given
            (w_hr, _), (w_hz, _), (w_hn, b_hn) = hidden
            from_x = [jnp.dot(x_t, w_ir) + b_ir, jnp.dot(x_t, w_iz) + b_iz, jnp.dot(x_t, w_in) + b_in]
            if h is None:
                r, u = jax.nn.sigmoid(from_x[0]), jax.nn.sigmoid(from_x[1])
                new = (1.0 - u) * jnp.tanh(from_x[2] + r * b_hn)
            else:
                r = jax.nn.sigmoid(from_x[0] + jnp.dot(h, w_hr))
                u = jax.nn.sigmoid(from_x[1] + jnp.dot(h, w_hz))
                new = (1.0 - u) * jnp.tanh(from_x[2] + r * (jnp.dot(h, w_hn) + b_hn)) + u * h
            return new if dz_t is None else new + dz_t

        def scanned(h, xs):
            new = step(h, *xs)
            return new, new

        if h0 is not None:
            h_last, states = jax.lax.scan(scanned, h0, (x, dz))
        else:  # the first step from the zero state, then the rest (possibly none) from there
            first = step(None, x[0], None if dz is None else dz[0])
            h_last, rest = jax.lax.scan(scanned, first, (x[1:], None if dz is None else dz[1:]))
            states = jnp.concatenate([first[None], rest])
        return h_last, self.preactivation(states)

    def perturbation(self) -> Array | None:
        """``None``; under :func:`~plastix.nn.topology.capture` with perturbations, ``dz (T, *batch, H)``."""
        return None

    def preactivation(self, z: Array) -> Array:
        """The states of all steps ``(T, *batch, H)``, returned unchanged (where capture records ``z``)."""
        return z


class GRUAgent(nn.Module):
    """PyMARL's recurrent agent: ``fc1 → relu → GRU → fc2`` (Q per action), applied over time.

    Attributes:
      hidden: width of ``fc1`` and of the GRU (PyMARL2 ``rnn_hidden_dim``: 64).
      actions: number of actions (outputs).
      width_multiplier: scales ``hidden``.

    ``__call__(obs, h0=None)``: ``obs`` is time-major ``(T, *batch, D)`` (e.g. ``(T, B, agents, D)``),
    ``h0`` ``(*batch, H)`` (zeros when ``None``); returns ``(q (T, *batch, actions), h_T (*batch, H))``.
    One environment step is ``T = 1``. Diagnostics see the GRU's ``z`` as ``(T, *batch, H)``.
    """

    hidden: int = 64
    actions: int = 5
    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, obs: Array, h0: Array | None = None) -> tuple[Array, Array]:
        if obs.ndim < 3:
            raise ValueError(f"GRUAgent expects time-major (T, *batch, D) observations, got shape {obs.shape}")
        (width,) = _check_widths((self.hidden,), self.width_multiplier, "GRUAgent")
        x = Neurons(width, name="fc1")(obs)
        h_last, hs = GRU(width, name="gru")(x, h0)
        return nn.Dense(self.actions, name="fc2")(hs), h_last

    def topology(self, group: str = "agent") -> Topology:
        """Neuron layers ``fc1`` (dense) and ``gru`` (recurrent); ``fc2`` is the output head."""
        fc1 = NeuronLayer("fc1", "fc1", (Slice(("gru", g, "kernel"), axis=0) for g in GRU_INPUT_GATES), group=group)
        gru = gru_layer("gru", "gru", [("fc2", "kernel")], group=group)
        return Topology((fc1, gru), (), (ParamLayer("fc2", ("fc2",), (), group),))
