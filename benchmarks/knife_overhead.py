"""Cost of KNIFE (and of CBP's per-update hook) in the QMIX learner: one update with K
pre-allocated injection slots vs the plain network, one update with CBP, and the cost of one
injection, measured side by side in one process.

Setting: the 5-unit SMAX scenario's shapes (5 agents, obs 127, 10 actions, state 120), PyMARL2's
QMIX (GRU 64, mixer embed 32, hypernetworks 64), a batch of 32 whole episodes of 100 steps drawn
at random. ``plain`` is ``make_marl`` without intervention; ``knife K=k`` is the same learner with
KNIFE and k slots on every dense neuron layer (agent ``fc1`` and the three hypernetwork hidden
layers), all slots injected (gates open), so the forward and backward passes do all the extra work.
``cbp`` is the learner with CBP on every neuron layer (maturity 0: every neuron eligible, so the
utilities, the activity pass and the replacement surgery all run every update).
Updates are timed in a jitted ``lax.scan`` of ``--updates`` steps, variants interleaved over
``--repeats`` rounds; the injection is ``intervene`` at a task switch with every neuron selected.

Usage: python benchmarks/knife_overhead.py [--slots 1 2 5] [--updates 50] [--repeats 5]
Record what you measured in benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from plastix.agents.episode_replay import EpisodeBatch
from plastix.agents.marl import MARLConfig, make_marl
from plastix.envs.base import EnvSpec, MultiAgentObs
from plastix.interventions import CBPConfig, Context, KnifeConfig, PlasticityConfig

N, OBS, A, STATE, B, L = 5, 127, 10, 120, 32, 100
SPEC = EnvSpec("smax-5-unit-shapes", (OBS,), jnp.float32, num_actions=A, agents=N, state_shape=(STATE,))


def random_batch(key) -> EpisodeBatch:
    k = jax.random.split(key, 4)
    obs = MultiAgentObs(
        jax.random.normal(k[0], (B, L + 1, N, OBS)),
        jax.random.normal(k[1], (B, L + 1, STATE)),
        jnp.ones((B, L + 1, N, A), bool),
    )
    zeros = jnp.zeros((B, L), bool)
    return EpisodeBatch(
        obs, jax.random.randint(k[2], (B, L, N), 0, A), jax.random.normal(k[3], (B, L)), zeros, zeros, ~zeros
    )


def build(slots: int, plasticity: PlasticityConfig | None = None):
    """``(run_updates, state, agent, batch)``; ``slots = 0``: the plain learner (or ``plasticity``)."""
    plasticity = plasticity or PlasticityConfig()
    if slots:
        plasticity = PlasticityConfig("knife", "task_switch", knife=KnifeConfig(slots=slots, selection="all"))
    agent, _, _ = make_marl(SPEC, MARLConfig(), plasticity=plasticity)
    state = agent.init(jax.random.key(0), None)
    batch = random_batch(jax.random.key(1))
    if slots:  # open every slot: the steady state after K injections
        for _ in range(slots):
            scores = agent.diagnose(state, batch)
            state = agent.intervene(jax.random.key(2), state, scores, Context.at(1, 1, True))

    @jax.jit
    def run_updates(state, keys):
        return jax.lax.scan(lambda s, k: agent.update(k, s, batch), state, keys)

    return run_updates, state, agent, batch


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()})")
    variants = {0: build(0)} | {k: build(k) for k in args.slots}
    variants["cbp"] = build(0, PlasticityConfig("cbp", cbp=CBPConfig(maturity=0)))
    keys = jax.random.split(jax.random.key(3), args.updates)
    for run, state, _, _ in variants.values():
        timed(run, state, keys)  # compile
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, (run, state, _, _) in variants.items():
            times[k].append(timed(run, state, keys))
    plain = np.array(times[0])
    print(f"update of 32 episodes × 100 steps, median of {args.repeats} rounds of {args.updates} updates:")
    print(f"  plain: {1e3 * np.median(plain) / args.updates:.2f} ms per update")
    ratio = np.array(times["cbp"]) / plain
    print(
        f"  cbp (every neuron eligible): {1e3 * np.median(times['cbp']) / args.updates:.2f} ms per update, "
        f"ratio {np.median(ratio):.3f} [{ratio.min():.3f}, {ratio.max():.3f}]"
    )
    for k in args.slots:
        ratio = np.array(times[k]) / plain
        print(
            f"  knife K={k}: {1e3 * np.median(times[k]) / args.updates:.2f} ms per update, "
            f"ratio {np.median(ratio):.3f} [{ratio.min():.3f}, {ratio.max():.3f}] (target ≤ 1.3 at K=1)"
        )
    # one injection (diagnostics excluded: they run every period with or without KNIFE)
    k = args.slots[0]
    _, state, agent, batch = variants[k]
    scores = agent.diagnose(state, batch)
    intervene = jax.jit(lambda s, sc: agent.intervene(jax.random.key(4), s, sc, Context.at(1, 1, True)))
    timed(intervene, state, scores)
    inject = np.median([timed(intervene, state, scores) for _ in range(args.repeats)])
    per_update = np.median(times[k]) / args.updates
    print(f"  one injection (K={k}, every neuron): {1e3 * inject:.2f} ms = {inject / per_update:.2f} updates")


if __name__ == "__main__":
    main()
