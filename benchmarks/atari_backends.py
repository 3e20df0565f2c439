"""Atari backends side by side: envpool vs ale-py's vector env, and plastix's jitted adapter.

Same game, same preprocessing (frame skip 4, max-pool, 84×84 gray, stack 4, sticky actions 0.25,
clipped rewards), random actions, synchronous batched steps. Prints env-steps/s of each backend for
each batch size and the ratio ale-py / envpool, then the rate of ``plastix.envs.make_env("atari/...")``
stepped from a jitted ``lax.scan`` (the path the training loop uses) relative to raw ale-py.

    python benchmarks/atari_backends.py [--game breakout] [--envs 8 32] [--steps 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def rate(step, n: int, steps: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return n * steps / (time.perf_counter() - start)


def ale_rate(game: str, n: int, steps: int) -> float:
    from ale_py.vector_env import AtariVectorEnv

    env = AtariVectorEnv(game=game, num_envs=n, repeat_action_probability=0.25, noop_max=0, use_fire_reset=False)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    out = rate(lambda: env.step(rng.integers(0, env.single_action_space.n, n).astype(np.int32)), n, steps)
    env.close()
    return out


def envpool_rate(game: str, n: int, steps: int) -> float | None:
    try:
        import envpool
    except ImportError:
        return None
    task = "".join(part.capitalize() for part in game.split("_")) + "-v5"
    env = envpool.make(
        task,
        env_type="gymnasium",
        num_envs=n,
        seed=0,
        repeat_action_probability=0.25,
        noop_max=1,
        episodic_life=False,
        reward_clip=True,
    )
    env.reset()
    rng = np.random.default_rng(0)
    out = rate(lambda: env.step(rng.integers(0, env.action_space.n, n)), n, steps)
    env.close()
    return out


def plastix_rate(game: str, n: int, steps: int) -> float:
    import jax

    from plastix.envs import make_env

    env = make_env(f"atari/{game}")
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    obs, state = jax.jit(jax.vmap(env.reset))(keys)

    @jax.jit
    def run(state, key):
        def body(state, k):
            actions = jax.random.randint(k, (n,), 0, env.spec.num_actions)
            ts = jax.vmap(env.step)(keys, state, actions)
            return ts.state, ts.reward.sum()

        return jax.lax.scan(body, state, jax.random.split(key, steps))

    state, _ = jax.block_until_ready(run(state, jax.random.PRNGKey(1)))  # compile + warm-up
    start = time.perf_counter()
    jax.block_until_ready(run(state, jax.random.PRNGKey(2)))
    return n * steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="breakout")
    parser.add_argument("--envs", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    print(f"{'envs':>5} {'envpool':>10} {'ale-py':>10} {'ale/envpool':>12} {'plastix jit':>12} {'plastix/ale':>12}")
    for n in args.envs:
        pool = envpool_rate(args.game, n, args.steps)
        ale = ale_rate(args.game, n, args.steps)
        ours = plastix_rate(args.game, n, args.steps)
        pool_s = f"{pool:10.0f}" if pool else f"{'n/a':>10}"
        ratio = f"{ale / pool:12.2f}" if pool else f"{'n/a':>12}"
        print(f"{n:5d} {pool_s} {ale:10.0f} {ratio} {ours:12.0f} {ours / ale:12.2f}", flush=True)


if __name__ == "__main__":
    main()
