"""SMAX (jaxmarl 0.2.0) as a multi-agent :class:`~plastix.envs.base.Env`, with unit-type mixes as task data.

jaxmarl's ``HeuristicEnemySMAX`` plays the enemy team with a scripted policy; our agents control
the allies. jaxmarl hard-wires a uniform unit-type generator that is Python-static inside its
jitted ``reset``, so task drift inside one run needs its own generator: here ``reset`` calls
jaxmarl's reset and then overwrites the unit types (drawn from the task's type probabilities,
enemies mirroring allies as in SMACv2) and the start positions (SMACv2's *surround* with the task's
probability, else *reflect*, jaxmarl's own position generators), pushes units apart and recomputes
the observations. Both are task data (``Env.tasks``), so a
:class:`~plastix.envs.tasks.TaskSchedule` drifts them inside the jitted run.

SMAX's unit types (index: name): 0 marine, 1 marauder, 2 stalker, 3 zealot, 4 zergling,
5 hydralisk. SMAX has no colossus; its *colossus-like* unit here is the marauder (ranged, the
highest health of the ranged types). SMACv2's protoss 5v5 mix (stalker 0.45, zealot 0.45,
colossus 0.1, MARL-NOTES) is :data:`PROTOSS_MIX`; the default drift moves linearly from it to a
zerg-like mix (zergling 0.45, hydralisk 0.45, marauder 0.1): the paper's SMACv2 drift changes the
distribution of unit types the agents face while the task family stays the same, which is what a
moving type distribution under a fixed scenario models.

An episode ends when one team is dead (*termination*) or by the time limit (*truncation*): jaxmarl
tests ``step >= max_steps`` (100) before it counts the current step, so a battle lasts at most 101
steps, which is the spec's ``max_episode_steps`` (the episode replay's window must hold it).
Reward is jaxmarl's: enemy health lost (normalized) plus a win bonus.

The global state a mixer reads is SMAC's, normalized (:func:`world_state`), not jaxmarl's
``get_world_state``: that one carries raw positions (0–32), raw weapon cooldowns and the unit
types as raw integers (0–5) after their one-hot bits; a QMIX hypernetwork fed with it produces
mixing weights tens of times too large and ``Q_tot`` explodes within 20 updates on 3s_vs_5z
(measured: mean Q_tot 194, loss 9,500 at returns ≈ 0.2; VDN, which ignores the state: 0.6 / 0.3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from plastix.envs.base import Env, EnvSpec, MultiAgentObs, Timestep, quiet_output, select_reset

UNIT_TYPES = ("marine", "marauder", "stalker", "zealot", "zergling", "hydralisk")
PROTOSS_MIX = (0.0, 0.1, 0.45, 0.45, 0.0, 0.0)
ZERG_LIKE_MIX = (0.0, 0.1, 0.0, 0.0, 0.45, 0.45)
SEQUENTIAL_COMPOSITIONS = (
    (0.0, 0.0, 1.0, 0.0, 0.0, 0.0),  # all stalkers
    (0.0, 0.0, 0.0, 1.0, 0.0, 0.0),  # all zealots
    (0.0, 0.0, 0.0, 0.0, 1.0, 0.0),  # all zerglings
    (1.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # all marines
    (0.0, 0.0, 0.0, 0.0, 0.0, 1.0),  # all hydralisks
)


def drift_mixes(steps: int = 5, start=PROTOSS_MIX, end=ZERG_LIKE_MIX) -> np.ndarray:
    """``(steps, 6)`` type probabilities moving linearly from ``start`` to ``end``."""
    w = np.linspace(0.0, 1.0, steps)[:, None]
    return (1 - w) * np.asarray(start, np.float32)[None] + w * np.asarray(end, np.float32)[None]


def world_state(inner, units) -> jax.Array:
    """SMAC's global state from jaxmarl's unit arrays, every feature within about [-1, 1].

    Per unit (allies, then enemies): health / max health, position relative to the map centre
    divided by half the map size, the weapon cooldown left (clipped at 0) over the longest one the
    type can have, the type one-hot; then each unit's team bit. A dead unit's features are zero
    (as in jaxmarl and SMAC).

    Args:
      inner: jaxmarl's ``SMAX`` (unit-type tables and map size).
      units: its ``State`` (``unit_health``, ``unit_positions``, ``unit_weapon_cooldowns``,
        ``unit_types``, ``unit_alive``, ``unit_teams``), ``(n_units, ...)``.

    Returns:
      ``(n_units · (4 + n_types) + n_units,)`` float32.
    """
    types = units.unit_types.astype(jnp.int32)
    n_types = len(inner.unit_type_names)
    half = jnp.asarray([inner.map_width, inner.map_height], jnp.float32) / 2
    longest = inner.unit_type_weapon_cooldowns[types] + 2 * inner.time_per_step
    cooldown_left = jnp.clip(units.unit_weapon_cooldowns, 0.0, None) / longest
    features = jnp.concatenate(
        [
            (units.unit_health / inner.unit_type_health[types])[:, None],
            (units.unit_positions - half) / half,
            # jaxmarl lets an idle weapon's cooldown run below 0 (and an attack's exceed the type's
            # by up to 2 steps): the time left, clipped at 0, over the longest possible cooldown
            cooldown_left[:, None],
            jax.nn.one_hot(types, n_types),
        ],
        axis=1,
    )
    features = jnp.where(units.unit_alive[:, None], features, 0.0)
    return jnp.concatenate([features.reshape(-1), units.unit_teams.astype(jnp.float32)]).astype(jnp.float32)


def make_smax(
    scenario: str = "smacv2_5_units",
    mixes: np.ndarray | None = None,
    p_surround: float | np.ndarray = 0.5,
    name: str | None = None,
) -> Env:
    """SMAX ``scenario`` with one task per row of ``mixes`` (type probabilities over :data:`UNIT_TYPES`).

    Args:
      scenario: a jaxmarl map name (``smacv2_5_units``, ``3s_vs_5z``, ...).
      mixes: ``(K, 6)`` unit-type probabilities, one task each; ``None`` keeps the scenario's own
        fixed units and positions (e.g. 3s_vs_5z) and the env has no tasks.
      p_surround: probability of SMACv2's *surround* start (else *reflect*), per task or shared.
      name: the spec's name (default ``smax/<scenario>``).
    """
    with quiet_output():  # jaxmarl prints about optional submodules while it is imported
        from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario
        from jaxmarl.environments.smax.distributions import ReflectPositionDistribution, SurroundPositionDistribution

    env = HeuristicEnemySMAX(
        scenario=map_name_to_scenario(scenario), see_enemy_actions=True, walls_cause_death=True, attack_mode="closest"
    )
    inner = env._env
    agents = env.agents
    n, n_enemies = env.num_allies, env.num_enemies
    tasks = None
    if mixes is not None:
        mixes = np.asarray(mixes, np.float32)
        if mixes.ndim != 2 or mixes.shape[1] != len(UNIT_TYPES) or np.any(mixes < 0):
            raise ValueError(f"make_smax: mixes must be (K, {len(UNIT_TYPES)}) non-negative probabilities")
        mixes = mixes / mixes.sum(1, keepdims=True)
        p = np.broadcast_to(np.asarray(p_surround, np.float32), (mixes.shape[0],))
        tasks = {"type_logits": jnp.log(jnp.asarray(mixes) + 1e-12), "p_surround": jnp.asarray(p)}
    surround = SurroundPositionDistribution(n, n_enemies, inner.map_width, inner.map_height)
    reflect = ReflectPositionDistribution(n, n_enemies, inner.map_width, inner.map_height)

    def observe(state) -> MultiAgentObs:
        obs = env.get_obs(state)
        avail = env.get_avail_actions(state)
        return MultiAgentObs(
            jnp.stack([obs[a] for a in agents]).astype(jnp.float32),
            world_state(inner, state.state),
            jnp.stack([avail[a] for a in agents]).astype(bool),
        )

    def reset(key, task=None):
        k_reset, k_types, k_mode, k_surround, k_reflect, k_extra = jax.random.split(key, 6)
        _, state = env.reset(k_reset)
        if task is not None:
            allies = jax.random.categorical(k_types, task["type_logits"], shape=(n,))
            extra = jax.random.categorical(k_extra, task["type_logits"], shape=(max(n_enemies - n, 0),))
            enemies = jnp.concatenate([allies, extra])[:n_enemies]
            types = jnp.concatenate([allies, enemies]).astype(jnp.uint8)
            positions = jnp.where(
                jax.random.uniform(k_mode) < task["p_surround"],
                surround.generate(k_surround),
                reflect.generate(k_reflect),
            )
            units = state.state.replace(
                unit_types=types, unit_health=inner.unit_type_health[types], unit_positions=positions
            )
            state = state.replace(state=inner._push_units_away(units))
        return observe(state), state

    def step(key, state, action, task=None):
        k_step, k_reset = jax.random.split(key)
        _, state, rewards, dones, _ = env.step_env(k_step, state, {a: action[i] for i, a in enumerate(agents)})
        done = dones["__all__"]
        units = state.state
        one_team_dead = jnp.all(~units.unit_alive[:n]) | jnp.all(~units.unit_alive[n:])
        terminated = done & one_team_dead
        final = observe(state)
        fresh_obs, fresh = reset(k_reset, task)
        state, obs = select_reset(done, (fresh, fresh_obs), (state, final))
        reward = jnp.asarray(rewards[agents[0]], jnp.float32)
        return Timestep(obs, state, reward, terminated, done & ~terminated, final)

    example, _ = jax.eval_shape(
        reset, jax.random.key(0), None if tasks is None else jax.tree.map(lambda x: x[0], tasks)
    )
    spec = EnvSpec(
        name or f"smax/{scenario}",
        tuple(example.obs.shape[1:]),
        jnp.float32,
        num_actions=int(example.avail.shape[-1]),
        max_episode_steps=int(inner.max_steps) + 1,  # jaxmarl checks the limit before counting the step
        agents=n,
        state_shape=tuple(example.state.shape),
    )
    if tasks is None:
        return Env(spec, lambda key: reset(key), lambda key, state, action: step(key, state, action))
    return Env(spec, reset, step, tasks=tasks)
