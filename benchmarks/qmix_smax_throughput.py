"""QMIX on SMAX: env-steps/s for 1, 8, 32 vmapped seeds, the share of time in diagnostics, and a
mode at JaxMARL's ``ql_rnn_smax`` settings, measured side by side in one process.

Settings (``--settings``):

- ``pymarl2`` (default): PyMARL2's QMIX — 8 envs, one update of 32 whole episodes per 800 env steps
  (8 battles of ≤ 100 steps), GRU 64, mixer embed 32, hypernetworks 64, F = 20 updates. The replay
  holds 200 battles per seed (not PyMARL2's 5,000) so that 32 seeds fit in this machine's memory;
  sampling cost does not depend on the capacity.
- ``jaxmarl``: JaxMARL's ``ql_rnn_smax`` (MARL-NOTES): 3s_vs_5z only, 16 envs, 8 updates of 32
  sequences per 16 × 128 env steps, GRU 512, mixer embed 64, hypernetworks 256, target every 10
  updates, 10,240 warm-up steps, buffer 5,000 battles; diagnostics off (JaxMARL has none). JaxMARL
  samples 128-step chunks, plastix whole padded battles (≤ 101 steps + final observation).
  JaxMARL's own QMIX is not installable (its baselines are not in the jaxmarl wheel or sdist, and
  plastix copies no code): time it on the same machine from JaxMARL's repository
  (``baselines/QLearning/qmix_rnn.py``; benchmarks/RESULTS.md, "JaxMARL's own QMIX, side by side",
  says how it was done) and pass its steady-state env-steps/s as ``--jaxmarl-reference`` to print
  the ratio. MARL-NOTES' 223 env-steps/s is another machine's figure; no ratio is printed without
  a reference.

Measurements (each compiled once, then timed ``--repeats`` times, median):

1. Scaling: per environment (``smax/3s_vs_5z`` and the 5-unit ``smax-drift``) and seed count, the
   wall time of one chunk (``--chunk-periods`` periods + one 8-episode greedy evaluation), as
   total and per-seed env-steps/s, diagnostics on every period.
2. Diagnostics share (pymarl2 settings, ``--overhead-seeds`` seeds): the same chunk with and
   without diagnostics, timed alternately; share = 1 − without / with.

Usage: python benchmarks/qmix_smax_throughput.py [--settings pymarl2|jaxmarl] [--seeds 1 8 32]
(``--cache DIR --warm``: compile and run first chunks only, into a persistent compilation cache;
``benchmarks/gpu_check.sh`` uses it to compile in parallel before timing.)
Record what you measured in benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse

import jax
from dqn_minatar_throughput import add_device_options, apply_device_options, time_chunks

from plastix.agents import LoopConfig, make_train
from plastix.agents.marl import MARLConfig, make_marl
from plastix.envs import make_env
from plastix.interventions import OptimizerConfig

ENVS = ("smax/3s_vs_5z", "smax-drift")
BATTLE = 101  # env steps of the longest SMAX battle (jaxmarl counts the limit step too)


SETTINGS = {  # name: (envs, updates per period F, env steps per F updates, warm-up, buffer battles, learner)
    "pymarl2": (8, 20, 20 * 800, 8 * BATTLE, 200, MARLConfig()),
    "jaxmarl": (
        16,
        8,
        16 * 128,
        10_240,
        5_000,
        MARLConfig(
            hidden=512,
            mixing_embed=64,
            hypernet_hidden=256,
            target_update_period=10,
            optimizer=OptimizerConfig("adam", 5e-5, max_grad_norm=10.0),
        ),
    ),
}


def settings(name: str, chunk_periods: int, diagnostics: bool) -> tuple[LoopConfig, MARLConfig]:
    """``(loop, learner)`` of ``name`` (module docstring) with ``chunk_periods`` periods per chunk."""
    if name not in SETTINGS:
        raise ValueError(f"--settings: got {name!r}, allowed values are {tuple(SETTINGS)}")
    envs, period, steps_per_period, warmup, battles, learner = SETTINGS[name]
    loop = LoopConfig(
        env_steps=steps_per_period * chunk_periods * 100,
        num_envs=envs,
        replay_ratio=period / steps_per_period,
        warmup_steps=warmup,
        buffer_size=BATTLE * battles + envs,
        batch_size=32,
        period=period,
        eval_every=chunk_periods,
        eval_envs=8,
        scoring_batch=32,
        diagnostics=diagnostics,
    )
    return loop, learner


def build(env_name: str, seeds: int, name: str, chunk_periods: int, diagnostics: bool):
    """Compiled-on-first-call ``(train, carry)`` of QMIX on ``env_name`` with ``seeds`` vmapped seeds."""
    env = make_env(env_name)
    loop, learner = settings(name, chunk_periods, diagnostics)
    agent, _, _ = make_marl(env.spec, learner, loop.gamma, loop.period)
    train = make_train(loop, env, agent)
    return train, train.init(jax.random.split(jax.random.PRNGKey(0), seeds)), loop


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="pymarl2", choices=("pymarl2", "jaxmarl"))
    parser.add_argument("--envs", nargs="+", default=list(ENVS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 8, 32], help="none: skip the scaling")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunk-periods", type=int, default=2)
    parser.add_argument("--overhead-seeds", type=int, default=8)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument(
        "--jaxmarl-reference", type=float, default=None, help="JaxMARL's QMIX env-steps/s on this machine (1 seed)"
    )
    add_device_options(parser)
    args = parser.parse_args()
    apply_device_options(args)
    repeats = 0 if args.warm else args.repeats
    envs = ["smax/3s_vs_5z"] if args.settings == "jaxmarl" else args.envs
    print(f"\n1. scaling, {args.settings} settings, diagnostics {'off' if args.settings == 'jaxmarl' else 'on'}")
    for env_name in envs:
        for seeds in args.seeds:
            print(f"{env_name}, seeds={seeds}", flush=True)
            train, carry, loop = build(env_name, seeds, args.settings, args.chunk_periods, args.settings == "pymarl2")
            (t,) = time_chunks([(train, carry)], repeats)
            if args.warm:
                continue
            steps = loop.period * args.chunk_periods / loop.replay_ratio
            per_seed = steps / t
            print(
                f"  chunk of {steps:,.0f} env steps and {loop.period * args.chunk_periods} updates per seed: "
                f"{t:.2f} s → {seeds * per_seed:,.0f} env-steps/s in total, {per_seed:,.0f} per seed; "
                f"10M env steps each, all {seeds} together, would take {1e7 / per_seed / 60:,.0f} min"
            )
            if args.settings == "jaxmarl" and args.jaxmarl_reference:
                ratio = per_seed / args.jaxmarl_reference
                print(f"  vs JaxMARL's QMIX at {args.jaxmarl_reference:g} env-steps/s per seed: {ratio:.2f}×")
    if args.settings == "pymarl2" and not args.skip_overhead:
        s = args.overhead_seeds
        print(f"\n2. diagnostics share at {s} seeds (smax-drift), with vs without, alternating")
        plain = build("smax-drift", s, "pymarl2", args.chunk_periods, False)[:2]
        full = build("smax-drift", s, "pymarl2", args.chunk_periods, True)[:2]
        t_plain, t_full = time_chunks([plain, full], repeats)
        if not args.warm:
            print(
                f"  without {t_plain:.2f} s, with {t_full:.2f} s per chunk: ratio {t_full / t_plain:.3f}, "
                f"diagnostics share {1 - t_plain / t_full:.1%}"
            )


if __name__ == "__main__":
    main()
