"""Wall-time overhead of plastix diagnostics, measured side by side in one process.

1. The supervised experiment (phase-1 epochs, all runs vmapped): full diagnostics every epoch vs none.
2. A chunk of 1,000 SGD updates vs the same chunk plus one full diagnostic pass on a scoring
   batch of 256 (the paper's cadence: once per 1,000 updates).

Usage: python benchmarks/diagnostics_overhead.py [--repeats 5] [--seeds 3]
Prints timings and ratios; record what you measured in benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from plastix.experiments import supervised
from plastix.interventions import OptimizerConfig, TrainState, make_optimizer
from plastix.metrics import diagnose, summarize
from plastix.nn import small_cnn


def interleaved_times(fns, args, repeats: int) -> list[float]:
    """Median wall time of each ``fn(*args)``, run alternately (A, B, A, B, ...) so drift hits both."""
    for fn, a in zip(fns, args):
        jax.block_until_ready(fn(*a))  # compile and warm up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, (fn, a) in enumerate(zip(fns, args)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*a))
            times[i].append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def experiment_overhead(seeds: int, repeats: int) -> tuple[float, float]:
    fns, args = [], []
    for diagnostics in (False, True):
        config = supervised.SupervisedConfig(seeds=seeds, epochs=10, fit_epochs=10, diagnostics=diagnostics)
        exp = supervised.build(config)
        fns.append(exp.run_epochs)
        args.append((supervised.initial_carries(exp, config),))
    none, full = interleaved_times(fns, args, repeats)
    return none, full


def chunk_overhead(repeats: int, updates: int = 1000, batch: int = 64, scoring: int = 256) -> tuple[float, float]:
    data = supervised.load_dataset("digits")
    net = small_cnn(10)
    x, y = jnp.asarray(data.train_x), jnp.asarray(data.train_y)
    tx = make_optimizer(OptimizerConfig("sgd", 0.05, momentum=0.9))
    state = TrainState.create(net.init(jax.random.key(0), x[:1])["params"], tx)
    topo = net.topology()

    def apply(p, inp):
        return net.apply({"params": p}, inp)

    def loss(p, idx):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x[idx]), y[idx]).mean()

    def train_chunk(state, key):
        idx = jax.random.randint(key, (updates, batch), 0, x.shape[0])
        state, _ = jax.lax.scan(lambda s, i: (s.apply_gradients(jax.grad(loss)(s.params, i)), None), state, idx)
        return state

    def chunk_only(state, key):
        return train_chunk(state, key).params

    def chunk_and_diagnostics(state, key):
        state = train_chunk(state, key)
        sx, sy = x[:scoring], y[:scoring]
        diag = diagnose(
            topo, net.apply, state.params, sx, lambda o: optax.softmax_cross_entropy_with_integer_labels(o, sy).mean()
        )
        return state.params, summarize(diag)

    def diagnostics_only(params):
        sx, sy = x[:scoring], y[:scoring]
        return summarize(
            diagnose(
                topo, net.apply, params, sx, lambda o: optax.softmax_cross_entropy_with_integer_labels(o, sy).mean()
            )
        )

    key = jax.random.key(1)
    base, with_diag = interleaved_times(
        [jax.jit(chunk_only), jax.jit(chunk_and_diagnostics)], [(state, key)] * 2, repeats
    )
    (alone,) = interleaved_times([jax.jit(diagnostics_only)], [(state.params,)], max(repeats, 20))
    return base, with_diag, alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''}; jax {jax.__version__}; devices {jax.devices()}")
    none, full = experiment_overhead(args.seeds, args.repeats)
    print(
        f"supervised, 10 epochs x {2 * args.seeds} vmapped runs: no diagnostics {none:.3f}s, "
        f"diagnostics every epoch {full:.3f}s, ratio {full / none:.3f}"
    )
    base, with_diag, alone = chunk_overhead(args.repeats)
    print(
        f"1,000 updates (batch 64): {base:.3f}s; plus one diagnostic pass (batch 256): {with_diag:.3f}s; "
        f"ratio {with_diag / base:.4f}  (target <= 1.03)"
    )
    print(f"one diagnostic pass alone: {alone * 1e3:.2f} ms = {alone / base:.4f} of a 1,000-update chunk")


if __name__ == "__main__":
    main()
