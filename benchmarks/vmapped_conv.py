"""Seeds vmapped through a conv net: XLA's grouped convolution vs patches + a batched matrix product.

``vmap`` over per-seed conv weights turns every convolution into one grouped convolution
(``feature_group_count`` = seeds: at 64 seeds MinAtar's first layer is 64 groups of 4 → 16
channels). On the H200 (benchmarks/RESULTS.md, "GPU, first measurements") DQN on MinAtar gained only
2.75× in total throughput from 8 to 64 seeds, and grouped convolutions of this shape are a
suspect. The alternative timed here computes each convolution as image patches
(``lax.conv_general_dilated_patches``, the same for every seed, so ``vmap`` folds the seeds into
its batch) times the kernel reshaped to a matrix (under ``vmap`` a batched ``dot_general``).
Both give the same values (the script prints the largest difference of the gradients).

Timed: one jitted, seed-vmapped forward + backward (``value_and_grad`` of the mean squared Q) on a
batch of 32 per seed, for plastix's two DQN conv nets: ``minatar`` (10×10×4, conv 16-3/1, dense
128) and ``nature`` (84×84×4, conv 32-8/4, 64-4/2, 64-3/1, dense 512). Median of ``--repeats``
calls after a first one; the two implementations alternate.

Usage: python benchmarks/vmapped_conv.py [--nets minatar nature] [--seeds 1 8 64] [--repeats 20]
[--cache DIR] [--warm]. Record what you measured in benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from dqn_minatar_throughput import add_device_options, apply_device_options
from jax import lax

NETS = {  # name: (input HWC, ((channels, kernel, stride), ...), dense, actions)
    "minatar": ((10, 10, 4), ((16, 3, 1),), 128, 6),
    "nature": ((84, 84, 4), ((32, 8, 4), (64, 4, 2), (64, 3, 1)), 512, 18),
}
BATCH = 32


def patches_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                 feature_group_count=1, batch_group_count=1, precision=None, preferred_element_type=None):  # fmt: skip
    """``lax.conv_general_dilated`` for NHWC inputs and HWIO kernels (flax's layout) as patches × matrix."""
    if feature_group_count != 1 or batch_group_count != 1:
        raise ValueError("patches_conv: grouped convolutions are not supported")
    kh, kw, cin, cout = rhs.shape
    patches = lax.conv_general_dilated_patches(
        lhs, (kh, kw), window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, precision
    )  # (N, H', W', cin * kh * kw), features ordered (cin, kh, kw)
    kernel = jnp.transpose(rhs, (2, 0, 1, 3)).reshape(cin * kh * kw, cout)
    return lax.dot_general(patches, kernel, (((3,), (0,)), ((), ())), precision, preferred_element_type)


class QNet(nn.Module):
    convs: tuple
    dense: int
    actions: int
    patches: bool

    @nn.compact
    def __call__(self, x):
        extra = {"conv_general_dilated": patches_conv} if self.patches else {}
        for c, k, s in self.convs:
            x = nn.relu(nn.Conv(c, (k, k), (s, s), padding="VALID", **extra)(x))
        x = nn.relu(nn.Dense(self.dense)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.actions)(x)


def program(net: str, seeds: int, patches: bool):
    """``(step, params, obs)``: the jitted seed-vmapped forward + backward and its inputs."""
    shape, convs, dense, actions = NETS[net]
    model = QNet(convs, dense, actions, patches)
    obs = jax.random.uniform(jax.random.PRNGKey(1), (seeds, BATCH, *shape))
    params = jax.vmap(lambda k: model.init(k, obs[0, :1]))(jax.random.split(jax.random.PRNGKey(0), seeds))
    loss = lambda p, x: jnp.mean(model.apply(p, x) ** 2)  # noqa: E731
    return jax.jit(jax.vmap(jax.value_and_grad(loss))), params, obs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="*", default=list(NETS), choices=list(NETS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=20)
    add_device_options(parser)
    args = parser.parse_args()
    if any(s < 1 for s in args.seeds) or args.repeats < 1:
        parser.error(f"--seeds and --repeats must be >= 1, got seeds {args.seeds}, repeats {args.repeats}")
    apply_device_options(args)
    print(f"forward + backward, batch {BATCH} per seed; median of {args.repeats} calls")
    for net in args.nets:
        for seeds in args.seeds:
            built = {name: program(net, seeds, name == "patches") for name in ("grouped", "patches")}
            results = {name: step(params, obs) for name, (step, params, obs) in built.items()}
            jax.block_until_ready(results)
            if args.warm:
                continue
            diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(*(jax.tree.leaves(r) for r in results.values())))
            times = {name: [] for name in built}
            for _ in range(args.repeats):
                for name, (step, params, obs) in built.items():
                    t0 = time.perf_counter()
                    jax.block_until_ready(step(params, obs))
                    times[name].append(time.perf_counter() - t0)
            grouped, patches = (float(np.median(times[n])) for n in ("grouped", "patches"))
            print(
                f"{net:8s} {seeds:3d} seeds: grouped {grouped * 1e3:8.3f} ms, patches {patches * 1e3:8.3f} ms,"
                f" grouped / patches time {grouped / patches:5.2f}; largest gradient difference {diff:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
