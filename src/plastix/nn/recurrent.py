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

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from plastix.nn.mlp import _check_widths
from plastix.nn.topology import CAPTURE, PERTURB, NeuronLayer, Neurons, ParamLayer, Path, Slice, Topology, _as_path

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
                v = v - q @ (q.T @ v)
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
) -> NeuronLayer:
    """The :class:`NeuronLayer` of the hidden units of a Flax ``nn.GRUCell``.

    Args:
      name: layer name.
      cell: module path of the cell (e.g. ``"gru"``; inside ``nn.RNN`` the cell keeps its own path).
      readers: kernel paths (other than the cell's own) that read the hidden state; unit j is row j.
      group: the network the layer belongs to.
    """
    path: Path = _as_path(cell)
    incoming = tuple(Slice(path + (g, "kernel")) for g in GRU_INPUT_GATES + GRU_HIDDEN_GATES) + tuple(
        Slice(path + (g, "bias"), bias=True) for g in GRU_BIASES
    )
    consumers = tuple(Slice(path + (g, "kernel"), axis=0) for g in GRU_HIDDEN_GATES) + tuple(
        Slice(_as_path(r), axis=0) for r in readers
    )
    return NeuronLayer(
        name, path, consumers, kind="recurrent", activation=_identity, group=group, incoming=incoming, output_index=0
    )


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
        if h0 is None:
            h0 = jnp.zeros(obs.shape[1:-1] + (width,), x.dtype)
        rnn = nn.RNN(
            nn.GRUCell(width, recurrent_kernel_init=orthogonal(), name="gru"),
            time_major=True,
            return_carry=True,
            variable_axes={CAPTURE: 0, PERTURB: 0},
        )
        h_last, hs = rnn(x, initial_carry=h0)
        return nn.Dense(self.actions, name="fc2")(hs), h_last

    def topology(self, group: str = "agent") -> Topology:
        """Neuron layers ``fc1`` (dense) and ``gru`` (recurrent); ``fc2`` is the output head."""
        fc1 = NeuronLayer("fc1", "fc1", (Slice(("gru", g, "kernel"), axis=0) for g in GRU_INPUT_GATES), group=group)
        gru = gru_layer("gru", "gru", [("fc2", "kernel")], group=group)
        return Topology((fc1, gru), (), (ParamLayer("fc2", ("fc2",), (), group),))
