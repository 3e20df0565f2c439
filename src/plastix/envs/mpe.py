"""MPE ``simple_spread`` (jaxmarl 0.2.0) as a multi-agent :class:`~plastix.envs.base.Env`: a quick
cooperative sanity task.

N agents (3) must cover N landmarks without colliding; every action (5: stay and 4 moves) is always
available. The team reward is the mean of the agents' rewards (jaxmarl gives each agent the shared
coverage term plus its own collision penalty). The global state is the agents' observations
concatenated. Episodes never terminate; they are cut by the time limit (a truncation): jaxmarl's
``max_steps`` is 25 but, as in SMAX, it is tested before the step is counted, so an episode lasts 26.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from plastix.envs.base import Env, EnvSpec, MultiAgentObs, Timestep, quiet_output, select_reset


def make_mpe(scenario: str = "MPE_simple_spread_v3", name: str | None = None) -> Env:
    """The jaxmarl MPE env ``scenario`` (discrete actions)."""
    with quiet_output():  # jaxmarl prints about optional submodules while it is imported
        from jaxmarl import make

    env = make(scenario)
    agents = env.agents
    n = len(agents)
    actions = int(env.action_space(agents[0]).n)

    def observe(obs_dict) -> MultiAgentObs:
        obs = jnp.stack([obs_dict[a] for a in agents]).astype(jnp.float32)
        return MultiAgentObs(obs, obs.reshape(-1), jnp.ones((n, actions), bool))

    def reset(key):
        obs, state = env.reset(key)
        return observe(obs), state

    def step(key, state, action):
        k_step, k_reset = jax.random.split(key)
        obs, state, rewards, dones, _ = env.step_env(k_step, state, {a: action[i] for i, a in enumerate(agents)})
        done = dones["__all__"]
        final = observe(obs)
        fresh_obs, fresh = reset(k_reset)
        state, obs = select_reset(done, (fresh, fresh_obs), (state, final))
        reward = jnp.mean(jnp.stack([rewards[a] for a in agents])).astype(jnp.float32)
        return Timestep(obs, state, reward, jnp.zeros((), bool), jnp.asarray(done, bool), final)

    example, _ = jax.eval_shape(reset, jax.random.key(0))
    spec = EnvSpec(
        name or scenario,
        tuple(example.obs.shape[1:]),
        jnp.float32,
        num_actions=actions,
        max_episode_steps=int(env.max_steps) + 1,  # jaxmarl tests the limit before counting the step
        agents=n,
        state_shape=tuple(example.state.shape),
    )
    return Env(spec, reset, step)
