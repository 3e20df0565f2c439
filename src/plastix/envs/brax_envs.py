"""brax adapter: continuous control (HalfCheetah, Hopper, Walker2d, Ant) for SAC.

Episodes are cut at ``episode_length`` steps (1,000, as in MuJoCo Gym) and reset themselves; a cut
is a truncation (brax's ``info["truncation"]``), a fall is a termination. The reset is done here
(not by brax's ``AutoResetWrapper``) so that the final observation of an episode is kept.
brax physics are slow to compile and to run on a CPU: use a GPU for anything but a smoke test.
"""

from __future__ import annotations

import jax.numpy as jnp

from plastix.envs.base import Env, EnvSpec, Timestep, select_reset

NAMES = ("halfcheetah", "hopper", "walker2d", "ant", "inverted_pendulum", "inverted_double_pendulum", "reacher")
BACKENDS = ("mjx", "generalized", "positional", "spring")


def make_brax(task: str, backend: str = "positional", episode_length: int = 1000) -> Env:
    """Wrap brax task ``task`` (one of :data:`NAMES`) simulated with ``backend``."""
    if task not in NAMES:
        raise ValueError(f"brax env: got {task!r}, available: {tuple('brax/' + n for n in NAMES)}")
    if backend not in BACKENDS:
        raise ValueError(f"brax backend: got {backend!r}, allowed values are {BACKENDS}")
    from brax import envs
    from brax.envs.wrappers import training

    env = envs.get_environment(task, backend=backend)
    env = training.EpisodeWrapper(env, episode_length, 1)
    spec = EnvSpec(
        f"brax/{task}",
        (env.observation_size,),
        jnp.float32,
        action_dim=env.action_size,
        action_low=-1.0,
        action_high=1.0,
        max_episode_steps=episode_length,
    )

    def reset(key):
        state = env.reset(key)
        return state.obs, state

    def step(key, state, action):
        reached = env.step(state, action)
        truncated = reached.info["truncation"].astype(bool)
        done = reached.done.astype(bool)
        terminated = done & ~truncated
        fresh = env.reset(key)
        fresh.info.update({k: v for k, v in reached.info.items() if k not in fresh.info})
        following = select_reset(done, fresh, reached)
        return Timestep(
            following.obs, following, reached.reward.astype(jnp.float32), terminated, truncated, reached.obs
        )

    return Env(spec, reset, step)
