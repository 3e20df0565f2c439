"""DQN on MinAtar Breakout: env-steps/s and updates/s for 1, 8, 64 vmapped seeds, and the overhead of
diagnostics + ReDo, measured side by side in one process.

Setting: RR 1, batch 32, F = 1,000 updates, buffer 100k per seed, one greedy evaluation (8 episodes,
≤ 1,000 steps) per chunk of ``--chunk-periods`` periods.

1. Scaling: for each seed count, the median wall time of one chunk (compiled once, then timed
   ``--repeats`` times); totals are summed over seeds.
2. Overhead: the same chunk (at ``--overhead-seeds`` seeds) with diagnostics every period and
   ReDo (τ 0.1, every 1,000 updates) vs neither, timed alternately (A, B, A, B, ...).

Usage: python benchmarks/dqn_minatar_throughput.py [--seeds 1 8 64] [--repeats 3] [--chunk-periods 10]
[--cache DIR --warm] (see ``benchmarks/gpu_check.sh``) [--profile-seeds N] (3.: one chunk at N seeds traced,
its top operations printed; the profiler keeps at most 1,000,000 events)
Prints timings and ratios; record what you measured in benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import numpy as np

from plastix.agents import DQNConfig, LoopConfig, make_dqn, make_train
from plastix.envs import make_env
from plastix.interventions import PlasticityConfig, ReDoConfig


def build(seeds: int, chunk_periods: int, diagnostics: bool, redo: bool):
    env = make_env("Breakout-MinAtar")
    loop = LoopConfig(
        env_steps=1_000 * chunk_periods * 100,
        replay_ratio=1,
        warmup_steps=1_000,
        buffer_size=100_000,
        batch_size=32,
        period=1_000,
        eval_every=chunk_periods,
        eval_envs=8,
        eval_steps=1_000,
        diagnostics=diagnostics,
    )
    plasticity = PlasticityConfig("redo", redo=ReDoConfig(0.1, 1_000)) if redo else PlasticityConfig()
    agent, _, _ = make_dqn(env.spec, DQNConfig(), loop.period, plasticity=plasticity)
    train = make_train(loop, env, agent)
    carry = train.init(jax.random.split(jax.random.PRNGKey(0), seeds))
    return train, carry


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--cache`` and ``--warm``: what ``benchmarks/gpu_check.sh`` needs to compile every program in
    parallel processes first and then time them one after another."""
    parser.add_argument("--cache", default="", help="JAX persistent compilation cache directory (default: off)")
    parser.add_argument(
        "--warm", action="store_true", help="compile and run each program's first chunk only (fills --cache)"
    )


def apply_device_options(args: argparse.Namespace) -> None:
    """Turn on the compilation cache of ``--cache``; print the device."""
    if args.cache:
        from plastix.cli import enable_compilation_cache

        enable_compilation_cache(args.cache)
    device = jax.devices()[0]
    print(f"jax {jax.__version__} on {device.device_kind} ({platform.processor() or platform.machine()})")


def time_chunks(trains_carries, repeats: int) -> list[float]:
    """Median chunk time of each (train, carry), alternating between them; each carries on its own run.

    The first chunk of each (compilation + run) is not timed; ``repeats=0`` runs only that one and
    returns NaNs (``--warm``)."""
    state = []
    for train, carry in trains_carries:
        t0 = time.perf_counter()
        carry, m, _ = train.run_chunk(carry)
        jax.block_until_ready(m)
        print(f"  first chunk (compile + run): {time.perf_counter() - t0:.1f} s", flush=True)
        state.append([train, carry])
    times = [[] for _ in state]
    for _ in range(repeats):
        for i, s in enumerate(state):
            t0 = time.perf_counter()
            s[1], m, _ = s[0].run_chunk(s[1])
            jax.block_until_ready(m)
            times[i].append(time.perf_counter() - t0)
    return [float(np.median(t)) if t else float("nan") for t in times]


def profile_chunk(train, carry, top: int = 15) -> None:
    """Trace one chunk with ``jax.profiler`` and print, per traced process (host threads, each GPU),
    the ``top`` operations by total time: on a GPU its kernels (are the grouped convolutions the
    cost?), on the CPU XLA's thunks. Names are grouped with trailing numbers dropped."""
    import collections
    import glob
    import gzip
    import json
    import re
    import tempfile

    carry, m, _ = train.run_chunk(carry)  # compiled, and its first run out of the way
    jax.block_until_ready(m)
    with tempfile.TemporaryDirectory() as directory:
        t0 = time.perf_counter()
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            jax.block_until_ready(train.run_chunk(carry)[1])
        print(f"  traced chunk: {time.perf_counter() - t0:.2f} s (the profiler slows it)")
        (path,) = glob.glob(f"{directory}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    total = collections.defaultdict(collections.Counter)
    count = collections.defaultdict(collections.Counter)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            name = re.sub(r"([._]\d+)+$", "", str(e.get("name", "")))
            where = processes.get(e.get("pid"), str(e.get("pid")))
            total[where][name] += e["dur"]
            count[where][name] += 1
    if len(events) >= 1_000_000:
        print("  (the trace reached the profiler's cap of 1,000,000 events: it holds the chunk's first part)")
    for where, by_name in total.items():
        print(f"  {where}: {sum(count[where].values()):,} events")
        for name, us in by_name.most_common(top):
            print(f"    {us / 1e3:10.1f} ms {count[where][name]:9,d}x  {name[:90]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 8, 64], help="none: skip the scaling")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-periods", type=int, default=10)
    parser.add_argument("--overhead-seeds", type=int, default=8)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument(
        "--profile-seeds", type=int, default=0, help="trace one chunk at this many seeds and print its top operations"
    )
    add_device_options(parser)
    args = parser.parse_args()
    if args.profile_seeds < 0:
        parser.error(f"--profile-seeds must be >= 0 (0: no profile), got {args.profile_seeds}")
    apply_device_options(args)
    repeats = 0 if args.warm else args.repeats
    steps = 1_000 * args.chunk_periods
    totals = {}
    print(f"\n1. scaling: chunk = {steps} env steps and {steps} updates per seed, diagnostics every 1,000 updates")
    for seeds in args.seeds:
        print(f"seeds={seeds}", flush=True)
        (t,) = time_chunks([build(seeds, args.chunk_periods, True, False)], repeats)
        if args.warm:
            continue
        totals[seeds] = seeds * steps / t
        print(
            f"  chunk {t:.2f} s: {totals[seeds]:,.0f} env-steps/s and updates/s in total, "
            f"{steps / t:,.0f} per seed; 1M env steps per seed would take {1e6 / (steps / t) / 60:.1f} min"
        )
    if 8 in totals and 64 in totals:
        print(
            f"  scaling 64 vs 8 seeds: {totals[64] / totals[8]:.2f}× the total throughput (linear: 8×; target >= 6.4×)"
        )
    if not args.skip_overhead:
        s = args.overhead_seeds
        print(f"\n2. overhead at {s} seeds: diagnostics every period + ReDo vs neither (alternating)")
        plain, full = time_chunks(
            [build(s, args.chunk_periods, False, False), build(s, args.chunk_periods, True, True)], repeats
        )
        if not args.warm:
            print(f"  without {plain:.3f} s, with {full:.3f} s per chunk: ratio {full / plain:.3f}")
    if args.profile_seeds and not args.warm:
        print(f"\n3. profile: one chunk at {args.profile_seeds} seeds (diagnostics on, as in 1.)", flush=True)
        profile_chunk(*build(args.profile_seeds, args.chunk_periods, True, False))


if __name__ == "__main__":
    main()
