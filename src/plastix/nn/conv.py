"""Convolutional networks whose conv channels and dense units are plastix neuron layers."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from plastix.nn.mlp import _check_widths
from plastix.nn.topology import Neurons, Topology


class ConvNet(nn.Module):
    """``[Conv -> relu]* -> flatten (NHWC) -> [Dense -> relu]* -> Dense(out)``.

    Attributes:
      channels: output channels of each conv layer (before the multiplier).
      kernel_sizes: square kernel size per conv layer.
      strides: stride per conv layer.
      dense: hidden dense widths after flattening (before the multiplier).
      out: number of outputs (classes or actions); not a neuron layer.
      width_multiplier: scales every conv and dense width.
      padding: ``"SAME"`` or ``"VALID"``.

    Input ``(batch, H, W, C)``, output ``(batch, out)``.
    """

    channels: Sequence[int] = (32, 64, 64)
    kernel_sizes: Sequence[int] = (8, 4, 3)
    strides: Sequence[int] = (4, 2, 1)
    dense: Sequence[int] = (512,)
    out: int = 10
    width_multiplier: float = 1.0
    padding: str = "VALID"

    def _checked(self):
        n = len(self.channels)
        if not (len(self.kernel_sizes) == len(self.strides) == n):
            raise ValueError(
                f"ConvNet: channels, kernel_sizes and strides need the same length, got "
                f"{len(self.channels)}, {len(self.kernel_sizes)}, {len(self.strides)}"
            )
        if self.padding not in ("SAME", "VALID"):
            raise ValueError(f"ConvNet.padding: got {self.padding!r}, allowed values are ('SAME', 'VALID')")
        return (
            _check_widths(self.channels, self.width_multiplier, "ConvNet"),
            _check_widths(self.dense, self.width_multiplier, "ConvNet"),
        )

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim != 4:
            raise ValueError(f"ConvNet expects (batch, H, W, C) inputs, got shape {x.shape}")
        channels, dense = self._checked()
        for i, (c, k, s) in enumerate(zip(channels, self.kernel_sizes, self.strides)):
            x = nn.relu(nn.Conv(c, (k, k), (s, s), padding=self.padding, name=f"conv_{i}")(x))
        x = jnp.reshape(x, (x.shape[0], -1))  # NHWC flatten: row = (h * W + w) * C + c
        for i, width in enumerate(dense):
            x = Neurons(width, name=f"dense_{i}")(x)
        return nn.Dense(self.out, name="output")(x)

    def topology(self) -> Topology:
        """Conv layers (one neuron per channel), then dense layers; output consumes the last."""
        self._checked()
        modules = [f"conv_{i}" for i in range(len(self.channels))]
        modules += [f"dense_{i}" for i in range(len(self.dense))]
        kinds = ["conv"] * len(self.channels) + ["dense"] * len(self.dense)
        return Topology.sequential(modules, output="output", kinds=kinds)


def nature_cnn(out: int, width_multiplier: float = 1.0) -> ConvNet:
    """The DQN "Nature" CNN (Mnih et al. 2015): 32-8/4, 64-4/2, 64-3/1, dense 512."""
    return ConvNet((32, 64, 64), (8, 4, 3), (4, 2, 1), (512,), out, width_multiplier, "VALID")


def small_cnn(out: int, width_multiplier: float = 1.0) -> ConvNet:
    """A small CNN for 8×8 / 32×32 images: 16-3/1, 32-3/2, dense 64 (VALID padding).

    VALID, not SAME: on XLA:CPU the padded convolutions of this net train about 6× slower.
    """
    return ConvNet((16, 32), (3, 3), (1, 2), (64,), out, width_multiplier, "VALID")
