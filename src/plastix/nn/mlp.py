"""Multi-layer perceptron whose hidden layers are plastix neuron layers."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from plastix.nn.topology import Neurons, Topology


def _check_widths(widths: Sequence[int], width_multiplier: float, field: str) -> list[int]:
    """The layer widths scaled by ``width_multiplier``, after :func:`check_width_fields` (``field``:
    the network's name)."""
    check_width_fields(field, "widths", widths, width_multiplier)
    return [max(1, int(round(w * width_multiplier))) for w in widths]


def check_width_fields(owner: str, widths_field: str, widths: Sequence[int], width_multiplier: float) -> None:
    """A config's hidden widths and width multiplier, checked when the config is made (a network
    checks them again when it is built, which is later: after a run directory is written).

    Raises:
      ValueError: naming ``owner.widths_field`` or ``owner.width_multiplier``.
    """
    if any(w < 1 for w in widths):
        raise ValueError(f"{owner}.{widths_field}: widths must be >= 1, got {list(widths)}")
    if not width_multiplier > 0:
        raise ValueError(f"{owner}.width_multiplier must be > 0, got {width_multiplier}")


class MLP(nn.Module):
    """``x -> [Dense -> relu] * len(hidden) -> Dense(out)``.

    Attributes:
      hidden: hidden widths before the multiplier, e.g. ``(256, 256)``.
      out: output width (not a neuron layer); ``None`` returns the last hidden activations.
      width_multiplier: scales every hidden width (rounded, at least 1).

    Input ``(batch, ...)`` is flattened to ``(batch, features)``; output ``(batch, out)``.
    """

    hidden: Sequence[int] = (256, 256)
    out: int | None = None
    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.reshape(x, (x.shape[0], -1))
        for i, width in enumerate(_check_widths(self.hidden, self.width_multiplier, "MLP")):
            x = Neurons(width, name=f"hidden_{i}")(x)
        if self.out is not None:
            x = nn.Dense(self.out, name="output")(x)
        return x

    def topology(self) -> Topology:
        """Neuron layers ``hidden_0 ... hidden_{L-1}``; the output layer consumes the last one."""
        if self.out is None:
            raise ValueError("MLP.topology needs `out`: the last hidden layer has no consumer otherwise")
        modules = [f"hidden_{i}" for i in range(len(self.hidden))]
        return Topology.sequential(modules, output="output")
