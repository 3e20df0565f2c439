"""jaxmarl adapters: SMAX (unit-type mixes and start modes as task data, enemies mirror allies, time limit vs
termination) and MPE simple_spread."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("jaxmarl")

from plastix.envs.smax import UNIT_TYPES, make_smax  # noqa: E402

ZERGLINGS = np.eye(len(UNIT_TYPES))[UNIT_TYPES.index("zergling")]
STALKERS = np.eye(len(UNIT_TYPES))[UNIT_TYPES.index("stalker")]


@pytest.fixture(scope="module")
def env():
    return make_smax("smacv2_5_units", np.stack([ZERGLINGS, STALKERS]), p_surround=np.array([1.0, 0.0]))


def test_unit_types_follow_the_task_and_enemies_mirror_allies(env):
    assert env.num_tasks == 2 and env.spec.agents == 5 and env.spec.num_actions == 10
    for task, kind in ((0, "zergling"), (1, "stalker")):
        reset, _ = env.at_task(jnp.int32(task))
        obs, state = jax.jit(reset)(jax.random.key(task))
        types = np.asarray(state.state.unit_types)
        assert types.tolist() == [UNIT_TYPES.index(kind)] * 10
        assert obs.obs.shape == (5, *env.spec.obs_shape) and obs.avail.dtype == bool
    mixed = make_smax("smacv2_5_units", np.array([[0, 0, 0.5, 0.5, 0, 0]]))
    _, state = jax.jit(mixed.at_task(0)[0])(jax.random.key(3))
    types = np.asarray(state.state.unit_types)
    assert np.array_equal(types[:5], types[5:]) and set(types.tolist()) <= {2, 3}


def test_time_limit_is_a_truncation_and_the_env_resets(env):
    reset, step = env.at_task(jnp.int32(1))
    obs, state = jax.jit(reset)(jax.random.key(0))
    late = state.replace(state=state.state.replace(step=jnp.int32(env.spec.max_episode_steps - 1)))  # the last step
    stay = jnp.ones(5, jnp.int32)  # a movement action, nobody fights
    ts = jax.jit(step)(jax.random.key(1), late, stay)
    assert bool(ts.truncated) and not bool(ts.terminated)
    earlier = state.replace(state=state.state.replace(step=jnp.int32(env.spec.max_episode_steps - 2)))
    assert not bool(jax.jit(step)(jax.random.key(1), earlier, stay).truncated)
    assert int(ts.state.state.step) == 0  # a fresh battle


def test_3s_vs_5z_keeps_its_fixed_units():
    env = make_smax("3s_vs_5z")
    assert env.tasks is None and env.spec.agents == 3
    _, state = jax.jit(env.reset)(jax.random.key(0))
    assert np.asarray(state.state.unit_types).tolist() == [2, 2, 2, 3, 3, 3, 3, 3]


def test_global_state_is_smacs_normalized_one_for_every_scenario():
    """jaxmarl's world state has raw positions (0-32), cooldowns that run below zero and raw type
    integers; a QMIX hypernetwork fed with it blew Q_tot up to ~200 within 20 updates. Ours stays
    within about [-1, 1] over long random battles, is zero for dead units and ends with the teams."""
    from plastix.envs import make_env

    for name in ("smax/3s_vs_5z", "smax-drift"):
        env = make_env(name)

        @jax.jit  # one program per scenario: 120 random steps, episodes restart inside env.step
        def battle(key):
            def step(state, t):
                k = jax.random.fold_in(key, t)
                ts = env.step(k, state, jax.random.randint(k, (env.spec.agents,), 0, env.spec.num_actions))
                return ts.state, (ts.obs.state, ts.done, ts.state.state.unit_teams, ts.state.state.unit_alive)

            return jax.lax.scan(step, env.reset(key)[1], jnp.arange(120))[1]

        worlds, dones, teams, alive = jax.tree.map(np.asarray, battle(jax.random.key(0)))
        largest, saw_dead = 0.0, False
        for world, done, unit_teams, unit_alive in zip(worlds, dones, teams, alive):
            n = unit_alive.shape[0]
            assert world.shape == env.spec.state_shape
            largest = max(largest, float(np.abs(world).max()))
            if done:
                continue
            np.testing.assert_array_equal(world[-n:], unit_teams.astype(np.float32))
            dead = ~unit_alive
            if dead.any():
                saw_dead = True
                assert not world[:-n].reshape(n, -1)[dead].any()
        assert largest <= 1.05, (name, largest)
        assert saw_dead, name


def test_mpe_simple_spread_is_a_time_limited_cooperative_task():
    from plastix.envs import make_env

    env = make_env("mpe/simple_spread")
    assert env.spec.agents == 3 and env.spec.num_actions == 5 and env.spec.max_episode_steps == 26
    obs, state = env.reset(jax.random.key(0))
    assert obs.obs.shape == (3, 18) and obs.state.shape == (54,) and bool(obs.avail.all())
    step = jax.jit(env.step)
    for t in range(env.spec.max_episode_steps):
        ts = step(jax.random.key(t), state, jnp.zeros(3, jnp.int32))
        state = ts.state
        assert not bool(ts.terminated)
        assert bool(ts.truncated) == (t == env.spec.max_episode_steps - 1)
