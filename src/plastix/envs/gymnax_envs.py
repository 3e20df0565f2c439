"""gymnax adapter: classic control and MinAtar (the fast, pure-JAX Atari proxy)."""

from __future__ import annotations

import jax.numpy as jnp

from plastix.envs.base import Env, EnvSpec, Timestep

MINATAR = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar")
CLASSIC = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1", "MountainCarContinuous-v0")
GRIDS = ("Catch-bsuite",)  # 2-D grids, given a channel axis: (H, W, 1)
NAMES = CLASSIC + MINATAR + GRIDS


def make_gymnax(name: str) -> Env:
    """Wrap gymnax environment ``name`` (one of :data:`NAMES`).

    MinAtar observations (``(10, 10, C)`` of 0/1) and bsuite Catch (``(10, 5)`` → ``(10, 5, 1)``,
    a trivially solvable image task for tests) are stored as ``uint8``; classic-control
    observations as ``float32``. Continuous actions (Pendulum) are passed through as ``(1,)``.
    """
    import gymnax

    if name not in NAMES:
        raise ValueError(f"gymnax env: got {name!r}, available: {NAMES}")
    env, params = gymnax.make(name)
    obs_shape = tuple(env.observation_space(params).shape)
    space = env.action_space(params)
    grid = name in GRIDS
    if grid:
        obs_shape = obs_shape + (1,)
    obs_dtype = jnp.uint8 if name in MINATAR or grid else jnp.float32
    max_steps = int(getattr(params, "max_steps_in_episode", 1000))

    def convert(obs):
        return (obs[..., None] if grid else obs).astype(obs_dtype)

    if hasattr(space, "n"):
        spec = EnvSpec(name, obs_shape, obs_dtype, num_actions=int(space.n), max_episode_steps=max_steps)
    else:
        spec = EnvSpec(
            name,
            obs_shape,
            obs_dtype,
            action_dim=int(space.shape[0]) if space.shape else 1,
            action_low=float(space.low),
            action_high=float(space.high),
            max_episode_steps=max_steps,
        )

    def reset(key):
        obs, state = env.reset(key, params)
        return convert(obs), state

    def step(key, state, action):
        if not spec.discrete and action.ndim and name != "MountainCarContinuous-v0":
            action = action[0]
        obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)
        terminated = jnp.asarray(terminated, bool)
        truncated = jnp.asarray(truncated, bool) & ~terminated
        reward = jnp.asarray(reward, jnp.float32)
        return Timestep(convert(obs), state, reward, terminated, truncated, convert(info["final_observation"]))

    return Env(spec, reset, step)
