"""The off-policy loop, DQN / DrQ(ε) / SAC, and RL runs: references, invariants, learning checks."""

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from plastix.agents import DQNConfig, LoopConfig, SACConfig, Transition, make_dqn, make_sac, make_train
from plastix.agents.dqn import random_shift, td_targets
from plastix.agents.marl import MARLConfig
from plastix.agents.off_policy import (
    layout,
    n_step_return,
    n_step_targets,
    replay_schedule,
    sample_sequences,
    uniform_below,
    unit_interval,
)
from plastix.agents.sac import soft_target, squashed_gaussian, temperature_loss
from plastix.envs import Env, EnvSpec, Timestep, make_env
from plastix.experiments.rl import RLConfig, run_cell
from plastix.interventions import OptimizerConfig, PlasticityConfig, ReDoConfig, ResetConfig

CARTPOLE_DQN = DQNConfig(
    network="mlp",
    mlp_hidden=(64, 64),
    optimizer=OptimizerConfig("adam", 1e-3),
    target_update_period=100,
    epsilon_decay_steps=5_000,
)


# ---------------------------------------------------------------------------- n-step, replay ratio


def test_n_step_return_against_hand_computation():
    rewards = jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [5.0, 0.0, 0.0]])
    dones = jnp.array([[0, 0, 0], [0, 1, 0], [1, 0, 0]], bool)
    returns, discounts = n_step_return(rewards, dones, 0.5)
    # row 0: 1 + .5*2 + .25*3; row 1: episode ends after the 2nd step; row 2: after the 1st
    np.testing.assert_allclose(returns, [2.75, 2.0, 5.0])
    np.testing.assert_allclose(discounts, [0.125, 0.0, 0.0])


def test_n_step_targets_bootstrap_after_truncation_not_termination():
    rewards = jnp.ones((4, 3))
    term = jnp.array([[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 1, 0]], bool)
    trunc = jnp.array([[0, 0, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0]], bool)
    returns, discounts, from_final, end = n_step_targets(rewards, term, trunc, 0.5)
    np.testing.assert_allclose(returns, [1.75, 1.5, 1.5, 1.0])
    np.testing.assert_allclose(discounts, [0.125, 0.0, 0.25, 0.5])  # truncated after 2 / 1 steps: γ², γ
    np.testing.assert_array_equal(from_final, [False, False, True, True])
    np.testing.assert_array_equal(end, [2, 1, 1, 0])


def _constant_reward_env(limit: int, terminate: bool) -> Env:
    """Reward 1 every step, one observation, episodes of ``limit`` steps ended by a time limit (or a
    termination): with truncation the value of the state is 1/(1-γ); with termination at most the
    finite-horizon sum."""
    spec = EnvSpec("constant", (1,), jnp.float32, num_actions=2, max_episode_steps=limit)
    obs = jnp.zeros(1)

    def reset(key):
        return obs, jnp.zeros((), jnp.int32)

    def step(key, t, action):
        end = t + 1 >= limit
        return Timestep(obs, jnp.where(end, 0, t + 1), jnp.float32(1.0), end & terminate, end & (not terminate), obs)

    return Env(spec, reset, step)


@pytest.mark.parametrize("terminate", [False, True])
def test_time_limit_is_not_a_termination(terminate):
    gamma, limit = 0.9, 5
    env = _constant_reward_env(limit, terminate)
    loop = LoopConfig(
        env_steps=3_000,
        replay_ratio=1,
        warmup_steps=100,
        buffer_size=2_000,
        batch_size=32,
        period=1_000,
        eval_every=3,
        eval_envs=1,
        eval_steps=5,
        gamma=gamma,
        diagnostics=False,
    )
    config = dataclasses.replace(
        CARTPOLE_DQN,
        mlp_hidden=(16,),
        optimizer=OptimizerConfig("adam", 1e-2),
        target_update_period=25,
        epsilon_decay_steps=100,
        huber_delta=1e3,
    )  # squared loss
    agent, net, _ = make_dqn(env.spec, config, loop.period)
    train = make_train(loop, env, agent)
    carry = train.init(jax.random.split(jax.random.PRNGKey(0), 1))
    carry, _, _ = train.run_chunk(carry)
    params = jax.tree.map(lambda x: x[0], carry.agent.online.params)
    q = float(jnp.max(net.apply({"params": params}, jnp.zeros((1, 1)))))
    if terminate:  # one observation for all steps, 1 in `limit` transitions terminal: Q = 1 + γ (1 - 1/limit) Q
        assert q == pytest.approx(1 / (1 - gamma * (1 - 1 / limit)), rel=0.05)  # 3.57
    else:  # every episode end is a time limit: Q = 1 + γ Q
        assert q == pytest.approx(1 / (1 - gamma), rel=0.05)  # 10


def test_one_step_return_is_reward_and_gamma():
    returns, discounts = n_step_return(jnp.array([[2.0]]), jnp.array([[False]]), 0.99)
    np.testing.assert_allclose(returns, [2.0])
    np.testing.assert_allclose(discounts, [0.99])


def test_sampled_windows_are_uniform_over_the_stored_windows_that_do_not_cross_the_write_position():
    import flashbax

    envs, capacity, length, draws = 3, 7, 3, 6_000
    buffer = flashbax.make_trajectory_buffer(
        add_batch_size=envs,
        sample_batch_size=1,
        sample_sequence_length=length,
        period=1,
        min_length_time_axis=length,
        max_length_time_axis=capacity,
    )
    state = buffer.init({"time": jnp.int32(0), "env": jnp.int32(0)})
    sample = jax.jit(sample_sequences, static_argnums=(2, 3))
    written = 0
    for total in (4, 7, 11):  # not full, exactly full, wrapped (the oldest stored step is 4)
        new = total - written
        steps = {
            "time": jnp.tile(jnp.arange(written, total, dtype=jnp.int32), (envs, 1)),
            "env": jnp.tile(jnp.arange(envs, dtype=jnp.int32)[:, None], (1, new)),
        }
        state, written = buffer.add(state, steps), total
        window = sample(state, jax.random.PRNGKey(total), draws, length)
        time, env = np.asarray(window["time"]), np.asarray(window["env"])
        assert time.shape == (draws, length)
        assert (np.diff(time, axis=1) == 1).all() and (env == env[:, :1]).all()  # one env's consecutive steps
        oldest = max(0, total - capacity)
        expected = {(e, s) for e in range(envs) for s in range(oldest, total - length + 1)}
        drawn = collections.Counter(zip(env[:, 0].tolist(), time[:, 0].tolist()))
        assert set(drawn) == expected
        mean = draws / len(expected)
        assert max(abs(c - mean) for c in drawn.values()) < 5 * mean**0.5  # uniform (binomial, 5 sigma)


def test_integers_and_unit_floats_from_random_bits():
    assert float(unit_interval(jnp.uint32(0))) == 0.0
    assert float(unit_interval(jnp.uint32(2**32 - 1))) == 1 - 2**-24  # below 1: ε = 1 always explores
    bits = jax.random.bits(jax.random.PRNGKey(0), (30_000,))
    values = np.asarray(uniform_below(bits, jnp.int32(3)))
    assert values.dtype == np.int32 and set(values.tolist()) == {0, 1, 2}
    np.testing.assert_allclose(np.bincount(values) / values.size, 1 / 3, atol=0.012)  # 5 sigma
    np.testing.assert_allclose(np.mean(np.asarray(unit_interval(bits))), 0.5, atol=0.01)


@pytest.mark.parametrize(
    "rr, envs, expected", [(0.25, 1, (4, 1)), (0.5, 1, (2, 1)), (2, 1, (1, 2)), (1, 8, (1, 8)), (0.25, 8, (1, 2))]
)
def test_replay_schedule(rr, envs, expected):
    assert replay_schedule(rr, envs) == expected


def test_layout_errors_name_the_field():
    with pytest.raises(ValueError, match="LoopConfig.env_steps"):
        layout(LoopConfig(env_steps=1001, replay_ratio=1, period=100))
    with pytest.raises(ValueError, match="LoopConfig.period"):
        layout(LoopConfig(env_steps=1000, replay_ratio=2, period=101))


def _cartpole_train(rr, steps, plasticity=PlasticityConfig(), period=50, eval_every=2):
    env = make_env("CartPole-v1")
    loop = LoopConfig(
        env_steps=steps,
        replay_ratio=rr,
        warmup_steps=100,
        buffer_size=5_000,
        batch_size=16,
        period=period,
        eval_every=eval_every,
        eval_envs=2,
        eval_steps=50,
    )
    agent, _, _ = make_dqn(
        env.spec, dataclasses.replace(CARTPOLE_DQN, mlp_hidden=(32,)), loop.period, plasticity=plasticity
    )
    return make_train(loop, env, agent)


def test_the_transition_replay_fence_follows_xla_cpu_threads(monkeypatch):
    """``Replay.fence="auto"``: a barrier where XLA:CPU runs one thread, the update conditional
    otherwise (seen in the traced chunk program; both compute the same, see the recurrent-policy test)."""
    programs = {}
    for pool in (1, 2):
        monkeypatch.setattr("plastix.agents.off_policy.xla_cpu_pool_threads", lambda: pool)
        train = _cartpole_train(0.25, 800)
        carry = jax.eval_shape(train.init, jax.random.split(jax.random.PRNGKey(0), 1))
        programs[pool] = train.run_chunk.trace(carry).jaxpr.pretty_print()
    assert "optimization_barrier" in programs[1] and "optimization_barrier" not in programs[2]
    assert programs[2].count("cond[") > programs[1].count("cond[")  # the updates in a conditional


@pytest.mark.parametrize("rr, steps", [(0.25, 800), (2, 200)])
def test_replay_ratio_bookkeeping(rr, steps):
    train = _cartpole_train(rr, steps)
    carry = train.init(jax.random.split(jax.random.PRNGKey(0), 1))
    updates = []
    for _ in range(train.layout.chunks):
        carry, metrics, _ = train.run_chunk(carry)
        updates.append(np.asarray(metrics["updates"])[0])
    assert int(carry.env_steps[0]) == steps
    assert int(carry.updates[0]) == steps * rr  # exactly N · RR updates over N env steps
    assert int(carry.agent.online.step[0]) == steps * rr
    per_period = np.diff(np.concatenate([[0], np.concatenate(updates)]))
    assert (per_period == 50).all()


# ---------------------------------------------------------------------------- DQN


def _batch(key, obs_dim=4, n=8, actions=2):
    k1, k2, k3 = jax.random.split(key, 3)
    return Transition(
        jax.random.normal(k1, (n, obs_dim)),
        jax.random.randint(k2, (n,), 0, actions),
        jax.random.normal(k3, (n,)),
        jnp.full((n,), 0.99),
        jax.random.normal(k1, (n, obs_dim)) + 1,
    )


def test_target_network_copied_every_period_updates():
    env = make_env("CartPole-v1")
    agent, _, _ = make_dqn(env.spec, dataclasses.replace(CARTPOLE_DQN, target_update_period=3))
    state = agent.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
    update = jax.jit(agent.update)
    init_target = state.target
    for i in range(1, 7):
        state, _ = update(jax.random.PRNGKey(i), state, _batch(jax.random.PRNGKey(10 + i)))
        same_as_online = jax.tree.all(jax.tree.map(jnp.array_equal, state.target, state.online.params))
        assert same_as_online == (i % 3 == 0), i
        if i < 3:
            assert jax.tree.all(jax.tree.map(jnp.array_equal, state.target, init_target))


@pytest.mark.parametrize("rr, env_steps_between_syncs", [(0.25, 8000), (0.5, 4000), (1, 2000), (2, 1000)])
def test_target_update_period_scales_with_replay_ratio(rr, env_steps_between_syncs):
    # paper Table 2: the period is fixed in updates (2,000), so in env steps it scales with 1 / RR
    k, u = replay_schedule(rr, 1)
    assert DQNConfig().target_update_period * k / u == env_steps_between_syncs


def test_td_targets_dqn_and_double():
    q_target = jnp.array([[1.0, 3.0], [2.0, 0.0]])
    q_online = jnp.array([[5.0, 0.0], [0.0, 1.0]])
    r, d = jnp.array([1.0, 0.0]), jnp.array([0.5, 0.0])
    np.testing.assert_allclose(td_targets(q_target, None, r, d), [2.5, 0.0])
    np.testing.assert_allclose(td_targets(q_target, q_online, r, d), [1.5, 0.0])


def test_random_shift_crops_of_padded_image():
    obs = jnp.arange(2 * 6 * 5 * 1, dtype=jnp.float32).reshape(2, 6, 5, 1)
    assert jnp.array_equal(random_shift(jax.random.PRNGKey(0), obs, 0), obs)
    shifted = random_shift(jax.random.PRNGKey(1), obs, 2)
    assert shifted.shape == obs.shape
    padded = jnp.pad(obs, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    for b in range(2):
        hits = [
            (i, j) for i in range(5) for j in range(5) if jnp.array_equal(padded[b, i : i + 6, j : j + 5], shifted[b])
        ]
        assert hits, "every augmented image is a window of the padded image"


def test_dqn_rejects_continuous_env_and_bad_intervention_period():
    with pytest.raises(ValueError, match="discrete actions"):
        make_dqn(make_env("Pendulum-v1").spec, DQNConfig())
    bad = PlasticityConfig("redo", redo=ReDoConfig(period=150))
    with pytest.raises(ValueError, match="multiple of the loop's period"):
        make_dqn(make_env("CartPole-v1").spec, CARTPOLE_DQN, period=100, plasticity=bad)


def test_single_agent_learners_refuse_a_multi_agent_env():
    """Before this check, DQN on ``matrix-sequential`` failed at trace time with
    ``AttributeError: 'MultiAgentObs' object has no attribute 'astype'``, its run directory written."""
    spec = make_env("matrix/classic").spec
    with pytest.raises(ValueError, match="DQN is a single-agent learner; matrix/classic .*2 agents.*qmix or qplex"):
        make_dqn(spec, DQNConfig())
    with pytest.raises(ValueError, match="SAC is a single-agent learner"):
        make_sac(spec, SACConfig())


def test_make_env_error_lists_available():
    with pytest.raises(ValueError, match="Breakout-MinAtar"):
        make_env("Breakout")
    with pytest.raises(ValueError, match=r"got 'Breakout-MinAtr' \(did you mean 'Breakout-MinAtar'"):
        make_env("Breakout-MinAtr")
    with pytest.raises(ValueError, match=r"got 'nope'; available: CartPole-v1, .*, matrix-sequential, "):
        make_env("nope")


def test_dqn_learns_cartpole():
    """Budget: 20,000 env steps at RR 0.25 (5,000 updates); random play scores about 20."""
    env = make_env("CartPole-v1")
    loop = LoopConfig(
        env_steps=20_000,
        replay_ratio=0.25,
        warmup_steps=1_000,
        buffer_size=20_000,
        batch_size=64,
        n_step=3,
        period=250,
        eval_every=10,
        eval_envs=8,
        eval_steps=500,
    )
    agent, _, _ = make_dqn(env.spec, CARTPOLE_DQN, loop.period)
    train = make_train(loop, env, agent)
    carry = train.init(jax.random.split(jax.random.PRNGKey(0), 2))
    evals = []
    for _ in range(train.layout.chunks):
        carry, _, ev = train.run_chunk(carry)
        evals.append(np.asarray(ev["eval_return"]))
    assert np.mean(evals[-1]) > 150, evals


def test_drq_learns_catch():
    """DrQ(ε) (random shifts) on bsuite Catch: 5,000 env steps; random play scores about -0.6."""
    from plastix.agents import drq_epsilon_config

    env = make_env("Catch-bsuite")
    loop = LoopConfig(
        env_steps=5_000,
        replay_ratio=1,
        warmup_steps=500,
        buffer_size=10_000,
        batch_size=32,
        n_step=3,
        period=250,
        eval_every=20,
        eval_envs=16,
        eval_steps=10,
    )
    cfg = drq_epsilon_config(
        augment_shift=1, optimizer=OptimizerConfig("adam", 1e-3), epsilon_decay_steps=2_000, target_update_period=50
    )
    agent, _, _ = make_dqn(env.spec, cfg, loop.period)
    train = make_train(loop, env, agent)
    carry = train.init(jax.random.split(jax.random.PRNGKey(0), 1))
    carry, _, ev = train.run_chunk(carry)
    assert float(ev["eval_return"][0]) > 0.8


# ---------------------------------------------------------------------------- interventions in the loop


@pytest.mark.parametrize(
    "plasticity",
    [
        PlasticityConfig("redo", redo=ReDoConfig(tau=0.1, period=50)),
        PlasticityConfig("reset", reset=ResetConfig(last_k=1, period=100)),
    ],
    ids=["redo", "reset"],
)
def test_intervention_in_loop_vmap_equals_separate_runs(plasticity):
    train = _cartpole_train(1, 400, plasticity, eval_every=4)
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    together, metrics, _ = train.run_chunk(train.init(keys))
    init, chunk = jax.jit(train.init_single), jax.jit(train.run_chunk_single)
    for s in range(2):
        alone, m, _ = chunk(init(keys[s]))
        for a, b in zip(jax.tree.leaves(alone.agent.online.params), jax.tree.leaves(together.agent.online.params)):
            np.testing.assert_allclose(a, b[s], rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(m["q/dormant_fraction"], metrics["q/dormant_fraction"][s], atol=1e-6)


def test_redo_in_loop_recycles_dormant_neurons():
    train = _cartpole_train(1, 400, PlasticityConfig("redo", redo=ReDoConfig(tau=0.5, period=50)), eval_every=4)
    carry, metrics, _ = train.run_chunk(train.init(jax.random.split(jax.random.PRNGKey(0), 1)))
    # with a high τ many neurons are recycled at every period: their outgoing weights start at 0
    out = carry.agent.online.params["output"]["kernel"][0]
    assert np.any(np.all(np.asarray(out) == 0, axis=1))


# ---------------------------------------------------------------------------- SAC


def test_sac_soft_target_and_temperature_loss_by_hand():
    q_next = jnp.array([[1.0, 2.0], [3.0, -1.0]])
    logp = jnp.array([-1.0, 0.5])
    y = soft_target(q_next, logp, jnp.asarray(0.2), jnp.array([1.0, 1.0]), jnp.array([0.9, 0.0]))
    np.testing.assert_allclose(y, [1 + 0.9 * (1.0 + 0.2), 1.0], rtol=1e-6)
    # d/d log_alpha of mean(-log_alpha (logp + H)) = -mean(logp + H); H = -1
    grad = jax.grad(temperature_loss)(jnp.asarray(0.3), logp, -1.0)
    np.testing.assert_allclose(grad, -np.mean(np.array([-1.0, 0.5]) - 1.0), rtol=1e-6)


def test_squashed_gaussian_log_prob_matches_change_of_variables():
    out = jnp.array([[0.3, -0.2]])  # mean 0.3, raw log-std -0.2, one action dim in [-2, 2]
    action, logp = squashed_gaussian(jax.random.PRNGKey(0), out, -2.0, 2.0)
    log_std = -5.0 + 0.5 * 7.0 * (np.tanh(-0.2) + 1)
    u = np.arctanh(float(action[0, 0]) / 2.0)
    gauss = -0.5 * ((u - 0.3) / np.exp(log_std)) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
    jac = 2.0 * (1 - np.tanh(u) ** 2)
    np.testing.assert_allclose(logp[0], gauss - np.log(jac), rtol=1e-3)
    assert -2 <= float(action[0, 0]) <= 2


def test_sac_twin_critic_target_uses_min_and_entropy():
    env = make_env("Pendulum-v1")
    agent, nets, topologies = make_sac(env.spec, SACConfig(hidden=(16, 16)))
    assert set(topologies) == {"actor", "critic"}
    assert len(topologies["critic"].layers) == 4  # two hidden layers in each of the twin critics
    state = agent.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
    batch = Transition(jnp.ones((4, 3)), jnp.zeros((4, 1)), jnp.ones(4), jnp.full((4,), 0.99), jnp.ones((4, 3)))
    new_state, metrics = jax.jit(agent.update)(jax.random.PRNGKey(1), state, batch)
    assert np.isfinite(metrics["loss"]) and float(metrics["alpha"]) == pytest.approx(1.0)
    diags = agent.diagnose(new_state, batch)
    assert set(diags) == {"actor", "critic"}


def test_sac_learns_pendulum():
    """Budget: 6,000 env steps at RR 1; random play scores about -1,200."""
    env = make_env("Pendulum-v1")
    loop = LoopConfig(
        env_steps=6_000,
        replay_ratio=1,
        warmup_steps=1_000,
        buffer_size=10_000,
        batch_size=128,
        period=500,
        eval_every=12,
        eval_envs=4,
    )
    agent, _, _ = make_sac(env.spec, SACConfig(hidden=(64, 64), optimizer=OptimizerConfig("adam", 1e-3)), loop.period)
    train = make_train(loop, env, agent)
    carry, _, ev = train.run_chunk(train.init(jax.random.split(jax.random.PRNGKey(0), 1)))
    assert float(ev["eval_return"][0]) > -600


# ---------------------------------------------------------------------------- runs: resume


def test_resume_after_kill_gives_identical_metrics(tmp_path):
    loop = LoopConfig(
        env_steps=600,
        replay_ratio=1,
        warmup_steps=100,
        buffer_size=2_000,
        batch_size=16,
        period=50,
        eval_every=4,
        eval_envs=2,
        eval_steps=30,
    )
    cell = RLConfig(
        env="CartPole-v1",
        loop=loop,
        dqn=dataclasses.replace(CARTPOLE_DQN, mlp_hidden=(32,)),
        plasticity=PlasticityConfig("redo", redo=ReDoConfig(period=50)),
        seeds=2,
    )
    straight = run_cell(cell, str(tmp_path / "straight"))
    partial = run_cell(cell, str(tmp_path / "killed"), stop_after_chunks=1)
    assert len(partial) < len(straight)
    resumed = run_cell(cell, str(tmp_path / "killed"))
    assert (tmp_path / "killed" / "DONE").exists()
    assert list(resumed.columns) == list(straight.columns)
    pd.testing.assert_frame_equal(resumed, straight)
    again = run_cell(cell, str(tmp_path / "killed"))  # finished: read back, no rerun
    pd.testing.assert_frame_equal(again, straight)
    assert_one_chunk_program(cell)


def assert_one_chunk_program(cell: RLConfig) -> None:
    """Every chunk of the cell's runs, the resumed one's included, ran one compiled program (a
    carry whose types changed, e.g. a weakly typed leaf, would have compiled it again)."""
    from plastix.experiments.rl import _compute_key, build_train

    assert build_train(_compute_key(cell)).run_chunk._cache_size() == 1


def test_runs_in_concurrent_threads_equal_runs_one_after_another(tmp_path):
    """``workers=2`` (two programs at once, :func:`run_concurrently`) changes nothing in any number:
    the same cells run one after another and side by side give bit-identical metrics."""
    from plastix.experiments.runner import run_concurrently

    loop = LoopConfig(env_steps=400, replay_ratio=1, warmup_steps=100, buffer_size=1_000, batch_size=16, period=50,
                      eval_every=4, eval_envs=2, eval_steps=30)  # fmt: skip
    base = RLConfig(env="CartPole-v1", loop=loop, dqn=dataclasses.replace(CARTPOLE_DQN, mlp_hidden=(16,)), seeds=2)
    cells = [dataclasses.replace(base, seed=s, plasticity=PlasticityConfig("redo", redo=ReDoConfig(period=50)))
             for s in (3, 4, 5)]  # fmt: skip
    alone = run_concurrently(lambda i: run_cell(cells[i], str(tmp_path / f"one-{i}")), range(3), workers=1)
    together = run_concurrently(lambda i: run_cell(cells[i], str(tmp_path / f"two-{i}")), range(3), workers=2)
    for a, b in zip(alone, together):
        pd.testing.assert_frame_equal(a, b)
    assert not alone[0]["loss"].equals(alone[1]["loss"])  # other seeds: other runs


@pytest.mark.slow
def test_brax_adapter_steps_and_resets():
    pytest.importorskip("brax")
    env = make_env("brax/inverted_pendulum")
    assert env.spec.action_dim == 1 and not env.spec.discrete
    obs, state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    for _ in range(3):
        ts = step(jax.random.PRNGKey(1), state, jnp.ones(1))
        state = ts.state
    assert ts.obs.shape == env.spec.obs_shape and ts.reward.dtype == jnp.float32 and ts.done.dtype == jnp.bool_
    assert ts.final_obs.shape == ts.obs.shape and ts.terminated.dtype == jnp.bool_


@pytest.mark.slow
def test_sac_loop_runs_on_brax_with_redo():
    """SAC + ReDo through the whole loop on a brax task (2 vmapped seeds): finite losses, both networks diagnosed."""
    pytest.importorskip("brax")
    env = make_env("brax/inverted_pendulum")
    loop = LoopConfig(
        env_steps=200,
        warmup_steps=100,
        buffer_size=1_000,
        batch_size=32,
        period=50,
        eval_every=2,
        eval_envs=2,
        eval_steps=50,
        scoring_batch=64,
    )
    redo = PlasticityConfig("redo", redo=ReDoConfig(tau=0.0, period=100))
    agent, _, _ = make_sac(env.spec, SACConfig(hidden=(32, 32)), loop.period, plasticity=redo)
    train = make_train(loop, env, agent)
    carry = train.init(jax.random.split(jax.random.PRNGKey(0), 2))
    carry, metrics, evals = train.run_chunk(carry)
    assert np.all(np.asarray(metrics["updates"])[:, -1] == 100)
    for name in ("actor/dormant_fraction", "critic/dormant_fraction"):
        assert np.all((np.asarray(metrics[name]) >= 0) & (np.asarray(metrics[name]) <= 1))
    assert all(np.all(np.isfinite(np.asarray(v))) for k, v in metrics.items() if "loss" in k)
    assert np.all(np.isfinite(np.asarray(evals["eval_return"])))


# ---------------------------------------------------------------------------- the loop's extension points


@pytest.mark.parametrize("fence", ["conditional", "barrier", "wall"])
def test_loop_serves_a_recurrent_policy_with_its_own_replay(fence):
    """A toy recurrent learner: its memory counts the steps of the current episode (restarted by the
    loop at every episode end), its action is that count, and its own replay keeps a window of the
    last 4 vector steps per env. Every update sees the agent's batch type, not n-step transitions,
    and after warm-up every stored action equals the step counter the env reports. Both ways of
    keeping the buffer write apart from the sampling (``Replay.fence``) compute the same; another
    value is refused."""
    from plastix.agents.off_policy import Agent, Replay

    limit, window, envs = 5, 4, 2
    spec = EnvSpec("counter", (1,), jnp.float32, num_actions=limit, max_episode_steps=limit)

    def reset(key):
        return jnp.zeros(1), jnp.zeros((), jnp.int32)

    def step(key, t, action):
        end = t + 1 >= limit
        nxt = jnp.where(end, 0, t + 1)
        return Timestep(
            nxt[None].astype(jnp.float32), nxt, jnp.float32(1.0), jnp.bool_(False), end, (t + 1)[None] * 1.0
        )

    def window_replay(config, spec):
        def init(example):
            return jax.tree.map(lambda x: jnp.zeros((envs, window, *jnp.shape(x)), jnp.asarray(x).dtype), example)

        def add(state, steps):
            return jax.tree.map(lambda old, new: jnp.concatenate([old, new], 1)[:, -window:], state, steps)

        def sample(state, key):
            return {"obs": state.obs[..., 0], "action": state.action}

        return Replay(init, add, sample, sample, fence)

    def act(key, state, obs, step, greedy, memory):
        return memory, memory + 1

    def update(key, state, batch):
        assert batch["obs"].shape == (envs, window), "the agent's own batch"
        mismatches = jnp.sum(batch["obs"].astype(jnp.int32) != batch["action"])
        return state + 1, {"mismatches": mismatches.astype(jnp.float32)}

    agent = Agent(
        init=lambda key, obs: jnp.zeros((), jnp.int32),
        act=act,
        update=update,
        diagnose=lambda state, batch: {},
        intervene=lambda key, state, diags, context: state,
        replay=window_replay,
        init_memory=lambda n: jnp.zeros(n, jnp.int32),
    )
    loop = LoopConfig(
        env_steps=48, num_envs=envs, warmup_steps=2 * window, buffer_size=64, batch_size=4, period=8, eval_every=3
    )
    if fence == "wall":
        allowed = "'auto', 'conditional', 'barrier'"
        with pytest.raises(ValueError, match=rf"Replay.fence: got 'wall', allowed values are {allowed}"):
            make_train(loop, Env(spec, reset, step), agent)
        return
    train = make_train(loop, Env(spec, reset, step), agent)
    carry = train.init(jax.random.split(jax.random.PRNGKey(0), 2))
    carry, metrics, evals = train.run_chunk(carry)
    mismatches = np.asarray(metrics["mismatches"])
    assert mismatches[:, 0].sum() > 0, "the first period still sees warm-up's random actions"
    np.testing.assert_array_equal(mismatches[:, 1:], 0)  # memory restarted exactly at every episode end
    assert np.all(np.asarray(carry.agent) == 24)  # RR 1: 24 updates in the chunk's 24 env steps (3 periods of 8)
    np.testing.assert_array_equal(evals["eval_return"], limit)  # evaluation runs the recurrent policy too


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: LoopConfig(replay_ratio=float("nan")), "replay_ratio must be a finite number"),
        (lambda: LoopConfig(replay_ratio=float("inf")), "replay_ratio must be a finite number"),
        (lambda: LoopConfig(replay_ratio=1e-9), "gives no update"),
        (lambda: LoopConfig(env_steps=3_000_000_000), "overflows the int32"),
        (lambda: LoopConfig(env_steps=1_000_000_000, replay_ratio=4), "overflows the int32"),
        (lambda: RLConfig(seed=2**40), "RLConfig.seed"),
        (lambda: RLConfig(seed=-1), "RLConfig.seed"),
        # widths: found when the network is built inside the first trace, after config.json was written
        (lambda: DQNConfig(mlp_hidden=(64, 0)), r"DQNConfig.mlp_hidden: widths must be >= 1, got \[64, 0\]"),
        (lambda: DQNConfig(width_multiplier=0.0), "DQNConfig.width_multiplier must be > 0"),
        (lambda: SACConfig(hidden=(0,)), "SACConfig.hidden"),
        (lambda: SACConfig(width_multiplier=-1.0), "SACConfig.width_multiplier"),
        (lambda: MARLConfig(width_multiplier=0.0), "MARLConfig.width_multiplier"),
    ],
)
def test_loop_values_are_validated_with_the_field_name(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_brax_without_brax_names_the_extra():
    try:
        import brax  # noqa: F401

        pytest.skip("brax is installed")
    except ModuleNotFoundError:
        pass
    with pytest.raises(ValueError, match=r"\.\[brax\]"):
        make_env("brax/hopper")


def test_experiments_share_pure_envs_and_make_host_envs_anew(monkeypatch):
    """``shared_env`` builds a pure JAX env once per process (cells share it), but an env with host
    state (emulators) on every call."""
    import types

    from plastix.experiments import rl

    made = []

    def fake_make_env(name):
        made.append(name)
        return types.SimpleNamespace(name=name, host_state=name.startswith("atari/"))

    monkeypatch.setattr(rl, "make_env", fake_make_env)
    monkeypatch.setattr(rl, "_PURE_ENVS", {})
    assert rl.shared_env("smax-drift") is rl.shared_env("smax-drift")
    assert rl.shared_env("atari/pong") is not rl.shared_env("atari/pong")
    assert made == ["smax-drift", "atari/pong", "atari/pong"]
