"""gymnax adapter: classic control and MinAtar (the fast, pure-JAX Atari proxy)."""

from __future__ import annotations

import jax.numpy as jnp

from plastix.envs.base import Env, EnvSpec

MINATAR = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar")
CLASSIC = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1", "MountainCarContinuous-v0")
NAMES = CLASSIC + MINATAR


def make_gymnax(name: str) -> Env:
    """Wrap gymnax environment ``name`` (one of :data:`NAMES`).

    MinAtar observations (``(10, 10, C)`` of 0/1) are stored as ``uint8``; classic-control
    observations as ``float32``. Continuous actions (Pendulum) are passed through as ``(1,)``.
    """
    import gymnax

    if name not in NAMES:
        raise ValueError(f"gymnax env: got {name!r}, available: {NAMES}")
    env, params = gymnax.make(name)
    obs_shape = tuple(env.observation_space(params).shape)
    space = env.action_space(params)
    obs_dtype = jnp.uint8 if name in MINATAR else jnp.float32
    if hasattr(space, "n"):
        spec = EnvSpec(name, obs_shape, obs_dtype, num_actions=int(space.n),
                       max_episode_steps=int(params.max_steps_in_episode))
    else:
        spec = EnvSpec(name, obs_shape, obs_dtype, action_dim=int(space.shape[0]) if space.shape else 1,
                       action_low=float(space.low), action_high=float(space.high),
                       max_episode_steps=int(params.max_steps_in_episode))

    def reset(key):
        obs, state = env.reset(key, params)
        return obs.astype(obs_dtype), state

    def step(key, state, action):
        if not spec.discrete and action.ndim and name != "MountainCarContinuous-v0":
            action = action[0]
        obs, state, reward, terminated, truncated, _ = env.step(key, state, action, params)
        done = jnp.logical_or(terminated, truncated)  # a time limit also ends the n-step bootstrap
        return obs.astype(obs_dtype), state, jnp.asarray(reward, jnp.float32), done

    return Env(spec, reset, step)
