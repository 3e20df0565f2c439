"""IMPALA-style ResNet (Espeholt et al. 2018) as used by the paper's DQN-ResNet agents.

Per stack: conv 3×3 → max-pool 3×3/2 → two residual blocks ``x + conv_b(relu(conv_a(relu(x))))``;
then relu → flatten → dense 256 → relu → output. The neuron layers are the *inner* convs
``conv_a`` of every block (each consumed only by its ``conv_b``) and the dense layer; the stack
convs and ``conv_b`` write into the residual stream, whose units are not single neurons: they are
parameter layers of the topology (reset by Reset, not recycled by ReDo).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
from jax import Array

from plastix.nn.mlp import _check_widths
from plastix.nn.topology import Consumer, NeuronLayer, Neurons, ParamLayer, Topology


class ImpalaResNet(nn.Module):
    """IMPALA ResNet; input ``(batch, H, W, C)``, output ``(batch, out)``.

    Attributes:
      channels: channels of each stack (before the multiplier); IMPALA: (16, 32, 32).
      blocks: residual blocks per stack.
      dense: width of the dense layer (before the multiplier).
      out: number of outputs.
      width_multiplier: scales every width.
    """

    channels: Sequence[int] = (16, 32, 32)
    blocks: int = 2
    dense: int = 256
    out: int = 1
    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim != 4:
            raise ValueError(f"ImpalaResNet expects (batch, H, W, C) inputs, got shape {x.shape}")
        channels = _check_widths(self.channels, self.width_multiplier, "ImpalaResNet")
        (dense,) = _check_widths((self.dense,), self.width_multiplier, "ImpalaResNet")
        for s, c in enumerate(channels):
            x = nn.Conv(c, (3, 3), padding="SAME", name=f"s{s}_conv")(x)
            x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
            for b in range(self.blocks):
                y = nn.Conv(c, (3, 3), padding="SAME", name=f"s{s}_b{b}_conv_a")(nn.relu(x))
                x = x + nn.Conv(c, (3, 3), padding="SAME", name=f"s{s}_b{b}_conv_b")(nn.relu(y))
        x = nn.relu(x).reshape(x.shape[0], -1)
        x = Neurons(dense, name="dense_0")(x)
        return nn.Dense(self.out, name="output")(x)

    def topology(self) -> Topology:
        """Neuron layers ``conv_a`` and ``dense_0``; the stack convs and ``conv_b`` are parameter
        layers that feed every later reader of the residual stream (depths follow the real graph,
        so ``last_k=3`` resets ``output``, ``dense_0`` and the last ``conv_b``)."""
        stacks = range(len(self.channels))
        layers = [
            NeuronLayer(
                f"s{s}_b{b}_conv_a", f"s{s}_b{b}_conv_a", (Consumer(f"s{s}_b{b}_conv_b/kernel", "conv"),), kind="conv"
            )
            for s in stacks
            for b in range(self.blocks)
        ]
        layers.append(NeuronLayer("dense_0", "dense_0", (Consumer("output/kernel", "dense"),)))
        stream = []
        for s in stacks:
            after = f"s{s + 1}_conv" if s + 1 < len(self.channels) else "dense_0"
            writers = [f"s{s}_conv"] + [f"s{s}_b{b}_conv_b" for b in range(self.blocks)]
            for i, writer in enumerate(writers):  # writer i is read by conv_a of blocks >= i and by `after`
                readers = tuple(f"s{s}_b{b}_conv_a" for b in range(i, self.blocks)) + (after,)
                stream.append(ParamLayer(writer, (writer,), readers))
        return Topology(tuple(layers), (), tuple(stream) + (ParamLayer("output", ("output",)),))


def impala_resnet(out: int, width_multiplier: float = 1.0) -> ImpalaResNet:
    """The IMPALA ResNet (16, 32, 32 channels, 2 blocks per stack, dense 256)."""
    return ImpalaResNet((16, 32, 32), 2, 256, out, width_multiplier)
