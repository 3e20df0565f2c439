"""The value-factorization learner: mixers' defining properties, TD(λ) targets, masking of padded
steps, task switches inside the jitted run, vmap equivalence and a small solvable game."""

import dataclasses
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix.agents import LoopConfig, make_train
from plastix.agents.episode_replay import EpisodeBatch, episode_replay
from plastix.agents.marl import MARLConfig, lambda_returns, make_marl
from plastix.agents.marl.common import agent_inputs, mix
from plastix.agents.off_policy import Step
from plastix.envs.base import MultiAgentObs
from plastix.envs.matrix_games import make_matrix_game
from plastix.envs.predator_prey import PredatorPreyConfig, make_predator_prey
from plastix.nn.mixers import QMixer, QPLEXMixer, VDNMixer

N, A, S = 3, 4, 6
TINY = dict(hidden=8, mixing_embed=4, hypernet_hidden=8)


def random_inputs(key, batch=16):
    kq, ks = jax.random.split(key)
    return jax.random.normal(kq, (batch, N)), jax.random.normal(ks, (batch, S))


def test_vdn_is_the_sum():
    q, s = random_inputs(jax.random.key(0))
    out = VDNMixer(N).apply({}, q, s)
    np.testing.assert_allclose(out, q.sum(-1), rtol=1e-6)


def test_qmix_is_monotonic_in_every_agent_value():
    mixer = QMixer(N, 8, 16)
    q, s = random_inputs(jax.random.key(1), 64)
    params = mixer.init(jax.random.key(2), q, s)
    grads = jax.vmap(jax.grad(lambda qq, ss: mixer.apply(params, qq[None], ss[None])[0]))(q, s)
    assert grads.shape == (64, N)
    assert bool(jnp.all(grads >= 0.0))
    assert bool(jnp.any(grads > 0.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_qplex_greedy_joint_action_maximizes_q_tot(seed):
    """IGM: the argmax of Q_tot over all joint actions is the per-agent argmaxes."""
    mixer = QPLEXMixer(N, A, 16, 4)
    kq, ks, kp = jax.random.split(jax.random.key(seed), 3)
    q_all = jax.random.normal(kq, (N, A))
    state = jax.random.normal(ks, (S,))
    avail = jnp.ones((N, A), bool)
    joint = jnp.array(list(itertools.product(range(A), repeat=N)))  # (A^N, N)
    params = mixer.init(kp, q_all[:, 0][None], state[None], q_all.max(-1)[None], jax.nn.one_hot(joint[:1], A))
    q_tot = jax.vmap(
        lambda a: mixer.apply(params, q_all[jnp.arange(N), a], state, q_all.max(-1), jax.nn.one_hot(a, A))
    )(joint)
    best = joint[jnp.argmax(q_tot)]
    assert best.tolist() == jnp.argmax(q_all, -1).tolist()
    # and mix() (used by the learner) agrees with the direct call
    via_mix = mix(lambda *args: mixer.apply(params, *args), q_all, joint[5], state, avail)
    np.testing.assert_allclose(via_mix, q_tot[5], rtol=1e-6)


def numpy_lambda_returns(r, term, valid, v, gamma, lam):
    T, B = r.shape
    g = np.zeros((T, B))
    for b in range(B):
        length = int(valid[:, b].sum())
        nxt = 0.0
        for t in reversed(range(length)):
            if t == length - 1:
                g[t, b] = r[t, b] + gamma * (1 - term[t, b]) * v[t, b]
            else:
                g[t, b] = r[t, b] + gamma * (1 - term[t, b]) * ((1 - lam) * v[t, b] + lam * nxt)
            nxt = g[t, b]
    return g


@pytest.mark.parametrize("lam", [0.0, 0.6, 1.0])
def test_lambda_returns_match_a_hand_written_reference(lam):
    rng = np.random.default_rng(0)
    T, B = 5, 4
    lengths = np.array([5, 3, 1, 4])
    valid = np.arange(T)[:, None] < lengths[None, :]
    term = np.zeros((T, B))
    term[lengths[1] - 1, 1] = 1  # episode 1 terminated; the others were truncated by the time limit
    r, v = rng.normal(size=(T, B)), rng.normal(size=(T, B))
    got = lambda_returns(jnp.asarray(r * valid), jnp.asarray(term > 0), jnp.asarray(valid), jnp.asarray(v), 0.9, lam)
    want = numpy_lambda_returns(r, term, valid, v, 0.9, lam)
    np.testing.assert_allclose(np.where(valid, got, 0), want, rtol=1e-5, atol=1e-6)
    if lam == 0.0:  # 1-step targets
        one_step = r + 0.9 * (1 - term) * v
        np.testing.assert_allclose(np.where(valid, got, 0), np.where(valid, one_step, 0), rtol=1e-5, atol=1e-6)


PP = PredatorPreyConfig(grid=5, predators=3, prey=2, radius=1, episode_limit=4)


@pytest.fixture(scope="module", params=["qmix", "qplex"])
def learner(request):
    env = make_predator_prey(PP)
    agent, _, topology = make_marl(env.spec, MARLConfig(mixer=request.param, qplex_heads=2, **TINY))
    state = agent.init(jax.random.key(0), None)
    state = state._replace(target=jax.tree.map(lambda x: x * 0.5, state.target))  # targets differ from online
    return env, agent, state, topology


def episode_batch(key, spec, lengths, garbage=0.0):
    B, L = len(lengths), spec.max_episode_steps
    k = jax.random.split(key, 4)
    lengths = jnp.asarray(lengths)
    valid = jnp.arange(L)[None, :] < lengths[:, None]
    pad_obs = jnp.arange(L + 1)[None, :] > lengths[:, None]  # beyond the final observation
    obs = jax.random.normal(k[0], (B, L + 1, spec.agents, *spec.obs_shape)) + garbage * pad_obs[..., None, None]
    state = jax.random.normal(k[1], (B, L + 1, *spec.state_shape)) + garbage * pad_obs[..., None]
    avail = jnp.ones((B, L + 1, spec.agents, spec.num_actions), bool)
    action = jax.random.randint(k[2], (B, L, spec.agents), 0, spec.num_actions)
    action = jnp.where(valid[..., None], action, (action + int(garbage)) % spec.num_actions)
    reward = jnp.where(valid, jax.random.normal(k[3], (B, L)), 0.0)
    last = jnp.arange(L)[None, :] == lengths[:, None] - 1
    terminated = last & (jnp.arange(B) % 2 == 0)[:, None]
    return EpisodeBatch(MultiAgentObs(obs, state, avail), action, reward, terminated, last & ~terminated, valid)


def test_padded_steps_contribute_nothing_to_loss_gradients_or_diagnostics(learner):
    env, agent, state, _ = learner
    clean = episode_batch(jax.random.key(3), env.spec, [4, 2, 1, 3])
    noisy = episode_batch(jax.random.key(3), env.spec, [4, 2, 1, 3], garbage=7.0)
    assert not np.allclose(clean.obs.obs, noisy.obs.obs)
    update, diagnose = jax.jit(agent.update), jax.jit(agent.diagnose)
    (s1, m1), (s2, m2) = update(jax.random.key(0), state, clean), update(jax.random.key(0), state, noisy)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), s1.online.params, s2.online.params
    )
    d1, d2 = diagnose(state, clean)["marl"], diagnose(state, noisy)["marl"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), d1, d2)
    assert set(d1.groups) == {"agent", "mixer"}


def test_steps_without_available_actions_past_an_episode_change_nothing(learner):
    """SMAX's observation after a battle's last step offers no action to any agent, and neither do
    the padded steps after it: those steps are masked out, so the loss and the update equal the
    ones of the same batch with every action available there (QPLEX's Q̄ over no action was −inf,
    which made both NaN: ``smax-task-drift`` diverged in its first period)."""
    env, agent, state, _ = learner
    batch = episode_batch(jax.random.key(3), env.spec, [4, 2, 1, 3])
    L = env.spec.max_episode_steps
    lengths, ended = batch.valid.sum(1), batch.terminated.any(1)
    t = jnp.arange(L + 1)[None, :]
    unused = (t > lengths[:, None]) | (
        (t == lengths[:, None]) & ended[:, None]
    )  # a truncation bootstraps at t = length
    blocked = batch._replace(obs=batch.obs._replace(avail=batch.obs.avail & ~unused[..., None, None]))
    assert not np.asarray(blocked.obs.avail).any(-1).all()
    update = jax.jit(agent.update)
    (s1, m1), (s2, m2) = update(jax.random.key(0), state, batch), update(jax.random.key(0), state, blocked)
    assert np.isfinite(m2["loss"])
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), s1.online.params, s2.online.params
    )


def test_without_truncations_the_final_observation_is_not_needed(learner):
    """An env that never truncates gives windows of L observations (no final one): when every
    episode terminates, the update equals the one over L + 1 observations."""
    env, agent, state, _ = learner
    full = episode_batch(jax.random.key(5), env.spec, [4, 2, 1, 3])
    full = full._replace(terminated=full.terminated | full.truncated, truncated=full.truncated & False)
    L = env.spec.max_episode_steps
    short = full._replace(obs=jax.tree.map(lambda x: x[:, :L], full.obs))
    update = jax.jit(agent.update)
    (s1, m1), (s2, m2) = (update(jax.random.key(0), state, b) for b in (full, short))
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), s1.online.params, s2.online.params
    )


def test_a_one_step_game_learns_from_its_rewards_alone():
    """Matrix games never truncate: the replay returns one observation per episode and the
    learner's targets are the rewards (the target network is not used at all)."""
    env = make_matrix_game("classic")
    assert not env.spec.truncates
    loop = LoopConfig(
        env_steps=80, num_envs=8, replay_ratio=1 / 8, warmup_steps=64, buffer_size=512, batch_size=8, period=5
    )
    replay = episode_replay(loop, env.spec)
    obs, _ = jax.vmap(env.reset, (0, None))(jax.random.split(jax.random.key(0), 8), 0)
    ones = jnp.ones((8, 4), bool)
    steps = Step(
        jax.tree.map(lambda x: jnp.broadcast_to(x[:, None], (8, 4) + x.shape[1:]), obs),
        jax.random.randint(jax.random.key(2), (8, 4, 2), 0, 3),
        jnp.arange(32, dtype=jnp.float32).reshape(8, 4),
        ones,
        ~ones,
        None,
    )
    buffer = jax.jit(replay.add)(replay.init(jax.tree.map(lambda x: x[0, 0], steps)), steps)
    batch = jax.jit(replay.sample)(buffer, jax.random.key(1))
    assert batch.obs.obs.shape == (8, 1, 2, 1) and batch.reward.shape == (8, 1)
    agent, net, _ = make_marl(env.spec, MARLConfig(mixer="qmix", **TINY))
    state = agent.init(jax.random.key(0), None)
    poisoned = state._replace(target=jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), state.target))
    update = jax.jit(agent.update)
    (_, m1), (_, m2) = (update(jax.random.key(0), st, batch) for st in (state, poisoned))
    np.testing.assert_array_equal(m1["loss"], m2["loss"])  # finite: the target network is not used
    no_last_action = jnp.zeros((1, 8, 2, 3))
    inputs = agent_inputs(jnp.swapaxes(batch.obs.obs, 0, 1), no_last_action)
    q_tot = jax.jit(net.apply)(
        {"params": state.online.params},
        inputs,
        jnp.swapaxes(batch.action, 0, 1),
        jnp.swapaxes(batch.obs.state, 0, 1),
        jnp.swapaxes(batch.obs.avail, 0, 1),
    )
    want = np.mean((np.asarray(q_tot[0]) - np.asarray(batch.reward[:, 0])) ** 2)
    np.testing.assert_allclose(m1["loss"], want, rtol=1e-5)


def test_loss_is_the_masked_squared_td_error(learner):
    """Changing one valid reward changes the loss; the loss of a batch equals its valid-step mean."""
    env, agent, state, _ = learner
    batch = episode_batch(jax.random.key(4), env.spec, [4, 2, 1, 3])
    update = jax.jit(agent.update)
    _, m1 = update(jax.random.key(0), state, batch)
    bumped = batch._replace(reward=batch.reward.at[1, 0].add(1.0))
    _, m2 = update(jax.random.key(0), state, bumped)
    assert float(m1["loss"]) != float(m2["loss"])


def constant_tasks(values):
    return np.stack([np.full((3, 3), v, np.float32) for v in values])


def test_task_switch_happens_at_exactly_the_scheduled_env_step():
    env = make_matrix_game(constant_tasks([1.0, 2.0, 3.0]))
    E = 8
    loop = LoopConfig(
        env_steps=160, num_envs=E, replay_ratio=1 / 8, warmup_steps=64, buffer_size=1024, batch_size=8,
        period=5, eval_every=4, eval_envs=2, scoring_batch=8, diagnostics=False, tasks=((0, 80), (1, 40), (2, 40)),
    )  # fmt: skip
    agent, _, _ = make_marl(env.spec, MARLConfig(**TINY), loop.gamma, loop.period)
    train = make_train(loop, env, agent)
    carry = train.init(jax.random.split(jax.random.key(0), 1))
    carry, metrics, evaluation = train.run_chunk(carry)
    rewards = np.asarray(carry.buffer.steps.experience.reward[0])  # (E, capacity), time order from 0
    warm = train.layout.warmup_vector_steps
    for v in range(20):  # vector step v covers learning env steps [8v, 8v + 8)
        expected = 1.0 if 8 * v < 80 else (2.0 if 8 * v < 120 else 3.0)
        assert rewards[:, warm + v].tolist() == [expected] * E, v
    assert np.asarray(metrics["task"][0]).tolist() == [0, 1, 2, 2]
    assert np.asarray(metrics["task_switched"][0]).tolist() == [False, True, True, False]
    assert np.asarray(metrics["task_switch_step"][0]).tolist() == [-1, 80, 120, -1]
    for k, value in enumerate([1.0, 2.0, 3.0]):  # every task is evaluated
        assert float(evaluation[f"eval_return/task_{k}"][0]) == value


def test_schedule_must_cover_env_steps_and_name_existing_tasks():
    with pytest.raises(ValueError, match="add up to 100"):
        LoopConfig(env_steps=160, tasks=((0, 100),))
    env = make_matrix_game(constant_tasks([1.0, 2.0]))
    loop = LoopConfig(env_steps=80, num_envs=8, replay_ratio=1 / 8, warmup_steps=64, period=5, tasks=((0, 40), (3, 40)))
    agent, _, _ = make_marl(env.spec, MARLConfig(**TINY), loop.gamma, loop.period)
    with pytest.raises(ValueError, match="has 2 task"):
        make_train(loop, env, agent)


def test_marl_needs_a_multi_agent_env_and_valid_settings():
    from plastix.envs import make_env

    with pytest.raises(ValueError, match="multi-agent"):
        make_marl(make_env("CartPole-v1").spec, MARLConfig())
    with pytest.raises(ValueError, match="MARLConfig.mixer"):
        MARLConfig(mixer="qtran")
    with pytest.raises(ValueError, match="MARLConfig.td_lambda"):
        MARLConfig(td_lambda=1.5)


SOLVE_LOOP = LoopConfig(
    env_steps=960, num_envs=8, replay_ratio=1 / 8, warmup_steps=64, buffer_size=1024, batch_size=32,
    period=15, eval_every=100, eval_envs=4, scoring_batch=32, diagnostics=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def solved_game():
    """QMIX on an additive (monotonic) game, optimum 8 at (2, 0); 6 seeds vmapped."""
    env = make_matrix_game(np.add.outer([0.0, 2.0, 5.0], [3.0, 0.0, 1.0]))
    sizes = dict(hidden=16, mixing_embed=8, hypernet_hidden=16)
    config = MARLConfig(mixer="qmix", epsilon_decay_steps=480, td_lambda=0, **sizes)
    agent, _, _ = make_marl(env.spec, config, SOLVE_LOOP.gamma, SOLVE_LOOP.period)
    train = make_train(SOLVE_LOOP, env, agent)
    carry = train.init(jax.random.split(jax.random.key(0), 6))
    for _ in range(train.layout.chunks):
        carry, metrics, evaluation = train.run_chunk(carry)
    return train, carry, metrics, evaluation


def test_qmix_solves_a_monotonic_matrix_game(solved_game):
    _, _, _, evaluation = solved_game
    returns = np.asarray(evaluation["eval_return"])
    assert (returns == 8.0).sum() >= 4, returns  # greedy joint action is the optimum in most seeds
    assert returns.mean() >= 7.0


def test_vmap_over_seeds_equals_separate_runs():
    env = make_matrix_game()
    loop = LoopConfig(env_steps=80, num_envs=8, replay_ratio=1 / 8, warmup_steps=64, buffer_size=512, batch_size=8,
                      period=5, eval_every=2, eval_envs=2, scoring_batch=8)  # fmt: skip
    agent, _, _ = make_marl(env.spec, MARLConfig(**TINY), loop.gamma, loop.period)
    train = make_train(loop, env, agent)
    keys = jax.random.split(jax.random.key(5), 2)
    _, together, _ = train.run_chunk(train.init(keys))
    single_init, single_chunk = jax.jit(train.init_single), jax.jit(train.run_chunk_single)
    for s in range(2):
        _, alone, _ = single_chunk(single_init(keys[s]))
        for name in ("loss", "train_return", "marl/group/mixer/dormant_fraction", "marl/stagnant_fraction"):
            np.testing.assert_allclose(together[name][s], alone[name], rtol=2e-5, atol=1e-6, err_msg=name)


def test_kill_and_resume_gives_identical_metrics(tmp_path):
    """A MARL cell on the shared runner: killed after one chunk, resumed, same rows as a straight run."""
    import pandas as pd

    from plastix.experiments.rl import RLConfig, run_cell

    loop = LoopConfig(env_steps=240, num_envs=8, replay_ratio=1 / 8, warmup_steps=64, buffer_size=512, batch_size=8,
                      period=5, eval_every=1, eval_envs=2, scoring_batch=8, tasks=((0, 120), (1, 120)))  # fmt: skip
    from plastix.interventions import PlasticityConfig, ReDoConfig

    cell = RLConfig(
        env="matrix-sequential", agent="qmix", loop=loop, marl=MARLConfig(**TINY), seeds=2,
        plasticity=PlasticityConfig("redo", redo=ReDoConfig(period=10)),
    )  # fmt: skip
    straight = run_cell(cell, str(tmp_path / "straight"))
    partial = run_cell(cell, str(tmp_path / "killed"), stop_after_chunks=2)
    assert len(partial) < len(straight)
    resumed = run_cell(cell, str(tmp_path / "killed"))
    pd.testing.assert_frame_equal(resumed, straight)
    from test_rl import assert_one_chunk_program

    assert_one_chunk_program(cell)
    assert straight["task_switch_step"].max() == 120
    assert {"marl/group/agent/stagnant_fraction", "marl/group/mixer/grama_fraction"} <= set(straight.columns)


@pytest.mark.parametrize("experiment", ["matrix-sequential", "predator-prey", "smax-task-drift", "smax-3s-vs-5z"])
@pytest.mark.parametrize("scale", ["small", "paper"])
def test_marl_experiment_cells_are_valid_runs(experiment, scale):
    """Every cell of every MARL experiment passes the loop's and the replay's checks (nothing compiled)."""
    from plastix.experiments import dormant
    from plastix.experiments.rl import build_agent

    if experiment.startswith("smax"):
        pytest.importorskip("jaxmarl")
    cells = dormant.EXPERIMENTS[experiment][0](dormant.DormantExperimentConfig(scale=scale, mixers=("qmix",)))
    assert [labels["method"] for labels, _ in cells] == ["none", "redo", "reset"]
    env, agent, _ = build_agent(cells[0][1])
    make_train(cells[0][1].loop, env, agent)
    assert cells[0][1].loop.env_steps == sum(n for _, n in cells[0][1].loop.tasks) or not cells[0][1].loop.tasks


@pytest.mark.parametrize(
    "experiment, fits, misfit, unit",
    [("matrix-sequential", 4_800, 7, "2,400"), ("predator-prey", 96_000, 100_000, "32,000"),
     ("smax-task-drift", 160_000, 100_000, "80,000"), ("smax-3s-vs-5z", 32_000, 20_000, "16,000")],
)  # fmt: skip
def test_marl_experiments_run_the_env_steps_asked_for_or_say_which_fit(experiment, fits, misfit, unit):
    """``--env-steps`` that splits into whole periods (per task) runs exactly; another length is
    refused with the nearest that fit, not rounded silently (7 used to run 2,400 steps)."""
    from plastix.experiments import dormant

    if experiment.startswith("smax"):
        pytest.importorskip("jaxmarl")
    cells = dormant.EXPERIMENTS[experiment][0]
    config = dormant.DormantExperimentConfig(env_steps=fits, mixers=("qmix",), methods=("none",))
    assert cells(config)[0][1].loop.env_steps == fits
    with pytest.raises(ValueError, match=rf"env_steps \(--env-steps\): {misfit:,} env steps .* multiple of {unit}"):
        cells(dataclasses.replace(config, env_steps=misfit))


def test_every_study_method_builds_on_every_mixer():
    """``--methods all`` × VDN / QMIX / QPLEX: each cell's intervention builds on its learner (ReBorn
    on VDN falls back to the agent network, which has ReLU layers; VDN has no mixer neurons)."""
    from plastix.experiments import dormant
    from plastix.experiments.marl import STUDY_METHODS
    from plastix.experiments.rl import build_agent

    config = dormant.DormantExperimentConfig(methods=("all",), mixers=("vdn", "qmix", "qplex"))
    cells = dormant.EXPERIMENTS["matrix-sequential"][0](config)
    assert {labels["method"] for labels, _ in cells} >= set(STUDY_METHODS) | {"knife-all", "knife-copy"}
    for _, cell in cells:
        build_agent(cell)


def test_marl_report_tables_match_hand_computed_values(tmp_path):
    """Before/after-switch ratios, end-of-training ratios and task-1 revisit, on a hand-made log."""
    import pandas as pd

    from plastix.experiments.marl import report_section

    rows = []
    for seed, base in ((0, 0.1), (1, 0.3)):
        for i, steps in enumerate((10, 20, 30, 40)):
            v = base + 0.1 * i + (0.2 if steps > 20 else 0.0)  # seed 0: .1 .2 | .5 .6; seed 1: .3 .4 | .7 .8
            row = {"setting": "qmix/none", "seed": seed, "env_steps": steps, "period": i,
                   "task_switched": steps == 20, "task_switch_step": 20 if steps == 20 else -1,
                   "eval_return/task_0": float(steps), "eval_return/task_1": 0.0}  # fmt: skip
            for field in ("stagnant_fraction", "dormant_fraction", "grama_fraction"):
                row[f"marl/group/agent/{field}"] = v
                row[f"marl/group/mixer/{field}"] = 2 * v
                row[f"marl/{field}"] = 1.5 * v
            rows.append(row)
    files, lines = report_section("matrix-sequential", pd.DataFrame(rows), str(tmp_path))
    text = "\n".join(lines)
    assert all(os.path.exists(f) for f in files)
    after_title = text.split("### Neuron ratios just before")[1]
    switch_row = next(ln for ln in after_title.splitlines() if ln.startswith("| qmix"))
    # agent: before mean(.2, .4) = 30%, after mean(.5, .7) = 60%; mixer 2×, all 1.5×
    assert switch_row.split(" | ")[1:4] == ["30.0 → 60.0"] * 3
    assert switch_row.split(" | ")[4] == "60.0 → 120.0"
    assert switch_row.split(" | ")[7] == "45.0 → 90.0"
    revisit = next(ln for ln in text.split("### Task 1")[1].splitlines() if ln.startswith("| qmix"))
    assert revisit.split(" | ")[1].startswith("20") and revisit.split(" | ")[2].startswith("40")
    assert "Task switches at env steps [20]." in text


def test_ranking_says_which_settings_the_intervals_separate():
    """A method that beats ``none`` in every seed is named better than ``none`` (P = 1) and ``none``
    below the best; when every seed of every method scores alike, the report says nothing is separated."""
    import pandas as pd

    from plastix.experiments.marl import ranking_table

    def log(returns: dict) -> pd.DataFrame:
        rows = [
            {"setting": f"qmix {m}", "mixer": "qmix", "method": m, "seed": seed, "period": 0, "eval_return": r(seed)}
            for m, r in returns.items()
            for seed in range(10)
        ]
        return pd.DataFrame(rows)

    settings = ["qmix none", "qmix redo", "qmix knife"]
    returns = {"none": lambda s: s % 2, "redo": lambda s: (s + 1) % 2, "knife": lambda s: 8.0}
    lines = ranking_table(log(returns), settings, [])
    text = "\n".join(lines)
    knife = next(ln for ln in lines if ln.startswith("| qmix knife"))
    assert knife.split(" | ")[2:4] == ["1", "1.00 [1.00, 1.00] |"]
    assert next(ln for ln in lines if ln.startswith("| qmix none")).endswith("| – |")
    separated = "below the best (qmix knife): qmix none, qmix redo; better than `none`: qmix knife; worse than"
    assert separated in text and "worse than `none`: none." in text
    alike = ranking_table(log({m: lambda s: 3.0 for m in ("none", "redo", "knife")}), settings, [])
    assert any("at 10 seeds these methods are not separated by final return" in ln for ln in alike)
    ends_on_task_1 = log(returns).assign(**{"eval_return/task_0": lambda d: d.eval_return})
    lines = ranking_table(ends_on_task_1, settings, ["eval_return/task_0"])
    assert (
        "task 1 at the end" not in "\n".join(lines)
        and "the final return is the return on the re-visited task 1" in lines[2]
    )
    other = ends_on_task_1.assign(**{"eval_return/task_0": 0.0})
    assert "| final return | rank | P(> none) | task 1 at the end |" in "\n".join(
        ranking_table(other, settings, ["eval_return/task_0"])
    )


def test_ranking_ranks_and_separates_methods_within_each_mixer():
    """Two mixers are two learners: a method is ranked among its own mixer's settings (VDN's
    ``none`` scoring above every QMIX setting does not push QMIX's best to rank 2), mixers keep the
    order of ``settings``, and each mixer gets its own separation sentence."""
    import pandas as pd

    from plastix.experiments.marl import ranking_table

    returns = {("qmix", "none"): 0.0, ("qmix", "knife"): 8.0, ("vdn", "none"): 10.0, ("vdn", "redo"): 7.0}
    rows = [
        {"setting": f"{x} {m}", "mixer": x, "method": m, "seed": seed, "period": 0, "eval_return": r + seed % 2}
        for (x, m), r in returns.items()
        for seed in range(10)
    ]
    settings = ["qmix none", "qmix knife", "vdn none", "vdn redo"]
    lines = ranking_table(pd.DataFrame(rows), settings, [])
    assert "within each mixer" in lines[0]
    table = [ln for ln in lines if ln.startswith("| qmix") or ln.startswith("| vdn")]
    assert [ln.split(" | ")[0][2:] for ln in table] == ["qmix knife", "qmix none", "vdn none", "vdn redo"]
    assert [ln.split(" | ")[2] for ln in table] == ["1", "2", "1", "2"]
    text = "\n".join(lines)
    assert (
        "**Final return, QMIX, separated by the 95% CIs** (10 seeds): below the best (qmix knife): qmix none;" in text
    )
    assert "**Final return, VDN, separated by the 95% CIs** (10 seeds): below the best (vdn none): vdn redo;" in text


def test_ranking_gives_tied_settings_one_shared_rank():
    from plastix.experiments.marl import competition_ranks

    ranks = competition_ranks({"reset": 5.3, "none": 0.0, "knife": 0.0, "redo": -1.0})
    assert ranks == {"reset": "1", "none": "=2", "knife": "=2", "redo": "4"}


GROUP_LOOP = dict(env_steps=240, num_envs=8, replay_ratio=1 / 8, warmup_steps=64, buffer_size=512, batch_size=8,
                  period=5, eval_every=1, eval_envs=2, scoring_batch=8, tasks=((0, 120), (1, 120)))  # fmt: skip


def group_cells(methods):
    from plastix.experiments.marl import marl_plasticity
    from plastix.experiments.rl import RLConfig

    loop = LoopConfig(**GROUP_LOOP)
    return [
        RLConfig(
            env="matrix-sequential",
            agent="qmix",
            loop=loop,
            marl=MARLConfig(**TINY),
            seeds=2,
            plasticity=m if not isinstance(m, str) else marl_plasticity(m, 10, 10, tasks=True),
        )
        for m in methods
    ]


def assert_same_rows(alone, together, name):
    """Same columns, dtypes and values (a larger vmapped batch rounds differently: float32 level;
    effective rank is an SVD of a near-singular matrix and moves more)."""
    import pandas as pd

    extra = [c for c in together.columns if c not in alone.columns]  # other members' tallies: 0
    assert all(c.startswith("intervention/") and (together[c] == 0).all() for c in extra), (name, extra)
    together = together.drop(columns=extra)
    assert list(alone.columns) == list(together.columns), name
    pd.testing.assert_series_equal(alone.dtypes, together.dtypes)
    for column in alone.columns:
        a, b = alone[column].to_numpy(), together[column].to_numpy()
        if a.dtype.kind != "f":
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: {column}")
        else:
            tol = 5e-3 if column.endswith("effective_rank") else 1e-4
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"{name}: {column}")


def test_methods_vmapped_in_one_program_equal_the_cells_run_alone(tmp_path):
    """none, ReDo and CBP (a per-update hook) as one program, methods × seeds vmapped (grouped by
    hand here: the experiments give CBP its own program): each cell's
    run directory reads as if it had run alone; a kill mid-group resumes; a crash between the
    group's end and the split into cells re-splits without running anything again."""
    from plastix.experiments.rl import groups, run_cell, run_cell_group
    from plastix.experiments.rundir import RunDir
    from plastix.interventions import CBPConfig, PlasticityConfig

    methods = ("none", "redo", "cbp")  # CBP replacing often enough to act in 30 updates
    cells = group_cells(methods[:2] + (PlasticityConfig("cbp", cbp=CBPConfig(maturity=5, replacement_rate=0.05)),))
    assert groups(cells) == [[0, 1], [2]]  # CBP's per-update hook would cost every run of a group
    paths = [str(tmp_path / m) for m in methods]
    assert run_cell_group(cells, paths, str(tmp_path / "group"), stop_after_chunks=2) is None
    assert not any(RunDir(p).finished for p in paths)
    together = run_cell_group(cells, paths, str(tmp_path / "group"))  # resumes from chunk 2
    for method, cell, rows in list(zip(methods, cells, together))[1:]:  # ReDo's program is the kill test's
        assert_same_rows(run_cell(cell, str(tmp_path / f"alone-{method}")), rows, method)
        assert sorted(rows["seed"].unique()) == [0, 1]
    # CBP really acted: its weights moved away from `none`'s (same keys, same data until it acts)
    assert not np.allclose(together[0]["loss"], together[2]["loss"])
    # ... and the logs say what each method did: none changed nothing at period ends, ReDo did
    # (every 10 updates = 2 periods), CBP's running count of replaced neurons grows
    assert (together[0]["intervention/changed_elements"] == 0).all()
    redo = together[1].groupby("period")["intervention/changed_elements"].max()
    assert (redo.iloc[1::2] > 0).any() and (redo.iloc[0::2] == 0).all()
    replaced = together[2].sort_values(["seed", "period"]).groupby("seed")["intervention/cbp_replaced"]
    assert (replaced.diff().dropna() >= 0).all() and (replaced.max() > 0).all()

    os.remove(os.path.join(paths[1], "DONE"))  # as if killed while splitting the group's rows
    again = run_cell_group(cells, paths, str(tmp_path / "group"), stop_after_chunks=0)
    assert again is not None
    import pandas as pd

    pd.testing.assert_frame_equal(again[1], together[1])


def test_only_methods_with_the_same_program_are_grouped():
    """KNIFE adds parameters (slots): it groups with its own ablations and with plasticity injection
    (same slots per unit: the group allocates both methods' slots), not with ReDo (the
    no-compensation ablation included: its compensation gate is data); other fields must be equal."""
    import dataclasses

    from plastix.experiments.rl import group_config, groups
    from plastix.interventions import PlasticityBundle, PlasticityConfig

    methods = ("none", "knife", "redo", "knife-random", "knife-no-compensation", "injection", "knife-copy", "cbp")
    cells = group_cells(methods)
    assert groups(cells) == [[0, 2], [1, 3, 4, 5, 6], [7]]
    with pytest.raises(ValueError, match="cannot share a program"):
        PlasticityBundle((cells[0].plasticity, cells[1].plasticity))
    with pytest.raises(ValueError, match=r"cells differ in \['seeds'\]"):
        group_config([cells[0], dataclasses.replace(cells[2], seeds=3)])
    assert groups([cells[0], dataclasses.replace(cells[2], seeds=3)]) == [[0], [1]]
    assert group_config(cells[:1]).plasticity.members == (PlasticityConfig(),)


def test_experiments_group_methods_in_groups_that_fit_in_memory(monkeypatch):
    """Small scale: whole groups. Paper scale (default): groups whose runs' carries hold at most
    half of the device's memory, split into near-equal parts otherwise; ``vmap_methods=True``
    whole groups whatever they hold; ``False`` every cell alone."""
    from plastix.experiments import dormant, rl

    methods = ("none", "redo", "reset", "regrama", "reborn", "knife", "knife-all")
    config = dormant.DormantExperimentConfig(mixers=("qmix",), methods=methods, seeds=3)
    cells = dormant.EXPERIMENTS["matrix-sequential"][0](config)

    def members(config, cells):
        return [m for _, m, _ in dormant.run_order("matrix-sequential", config, cells)]

    order = dormant.run_order("matrix-sequential", config, cells)
    assert [m for _, m, _ in order] == [[0, 1, 2, 3, 4], [5, 6]]
    assert order[0][2] == "mixer-qmix_method-none +4"
    paper = dataclasses_replace(config, scale="paper")
    paper_cells = dormant.EXPERIMENTS["matrix-sequential"][0](paper)
    plain, knife = rl.run_bytes(paper_cells[0][1]), rl.run_bytes(paper_cells[5][1])
    assert 1e5 < plain < knife < 2 * plain  # the replay dominates; KNIFE's slots add parameters
    monkeypatch.setattr(dormant, "run_bytes", lambda cell: 1000)  # one run: 1000 bytes, 3 seeds per cell
    for fits, expected in [
        (5, [[0, 1, 2, 3, 4], [5, 6]]),
        (2, [[0, 1], [2, 3], [4], [5, 6]]),
        (0.5, [[m] for m in range(7)]),
    ]:
        monkeypatch.setattr(dormant, "device_memory", lambda fits=fits: fits * 3000 / dormant.GROUP_MEMORY_SHARE + 1)
        assert members(paper, paper_cells) == expected, fits
    assert members(dataclasses_replace(paper, vmap_methods=True), paper_cells) == [[0, 1, 2, 3, 4], [5, 6]]
    off = dataclasses_replace(config, vmap_methods=False)
    assert members(off, cells) == [[m] for m in range(7)]


def test_groups_are_split_into_near_equal_parts_that_fit():
    from plastix.experiments.rl import split_to_fit

    assert split_to_fit(list(range(14)), 10, 90) == [list(range(7)), list(range(7, 14))]  # 9 fit: 2 parts of 7
    assert split_to_fit([3, 4, 5], 10, 30) == [[3, 4, 5]]
    assert split_to_fit([3, 4, 5], 10, 5) == [[3], [4], [5]]  # one alone does not fit: each on its own
    assert split_to_fit(list(range(5)), 10, 20) == [[0, 1], [2, 3], [4]]


def test_experiments_start_the_longest_programs_first():
    """Most cells first; among jobs with as many cells, the network with the most neuron layers
    (QPLEX 16, QMIX 6, VDN 2) first; otherwise run_order's order."""
    from plastix.experiments import dormant

    config = dormant.DormantExperimentConfig(methods=("none", "redo", "cbp"))  # vdn, qmix, qplex
    cells = dormant.EXPERIMENTS["matrix-sequential"][0](config)
    order = dormant.run_order("matrix-sequential", config, cells)
    assert [label for _, _, label in order][:2] == ["mixer-vdn_method-none +1", "mixer-vdn_method-cbp"]
    jobs = dormant.largest_first(order, cells)
    assert [label for _, _, label in jobs] == [
        "mixer-qplex_method-none +1",
        "mixer-qmix_method-none +1",
        "mixer-vdn_method-none +1",
        "mixer-qplex_method-cbp",
        "mixer-qmix_method-cbp",
        "mixer-vdn_method-cbp",
    ]
    assert sorted(jobs) == sorted(order)


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_report_names_methods_that_never_acted():
    """A method whose counts stay 0 in every period and seed is named (``none`` and weight decay,
    which acts through the optimizer, are not)."""
    import pandas as pd

    from plastix.experiments.marl import inactive_methods

    rows = []
    methods = (("none", 0, None), ("weight_decay", 0, None), ("redo", 5, None), ("cbp", 0, 0), ("cbp-fast", 0, 2))
    for method, changed, replaced in methods:
        for seed in (0, 1):
            for period in (1, 2):
                hit = changed if (seed, period) == (1, 2) else 0
                row = {"setting": f"qmix {method}", "method": method, "seed": seed, "period": period}
                row["intervention/changed_elements"] = hit
                row["intervention/cbp_replaced"] = np.nan if replaced is None else replaced * (period - 1)
                rows.append(row)
    df = pd.DataFrame(rows)
    lines = inactive_methods(df, list(dict.fromkeys(df["setting"])))
    assert len(lines) == 2 and lines[0].startswith("**Never acted:** qmix cbp:")
    assert inactive_methods(df[df.method != "cbp"], ["qmix none", "qmix redo", "qmix cbp-fast"]) == []


def test_a_corrupt_group_record_is_refused_with_its_path(tmp_path):
    """A half-written ``members.json`` of a started group gives one clear error naming the file."""
    from plastix.experiments.rl import _group_members
    from plastix.experiments.rundir import CorruptRunError, RunDir

    group = RunDir(str(tmp_path / "group"))
    os.makedirs(group.path)
    open(group.file("config.json"), "w").write("{}")
    open(group.file("members.json"), "w").write('["mixer-qmix_meth')
    with pytest.raises(CorruptRunError, match="members.json: not valid JSON.*delete"):
        _group_members(group, [str(tmp_path / "mixer-qmix_method-none")])


def test_a_diverging_group_names_the_member_and_its_method():
    """NaN in one run of a group: the error names the member index, seed and the members' methods."""
    import pandas as pd

    from plastix.experiments.rundir import NonFiniteError, check_finite

    rows = pd.DataFrame({"member": [0, 1], "seed": [1, 1], "period": [3, 3], "loss": [1.0, np.nan]})
    with pytest.raises(NonFiniteError, match="at member 1, seed 1, period 3 in g \\(member 1: redo\\)"):
        check_finite({}, rows, "g (member 1: redo)", lambda: "none")


def toy_episode_replay(envs: int, limit: int, capacity: int, batch: int):
    """``(loop, replay)``: an episode replay of ``capacity`` steps per env for a toy env with
    2-dim observations and episodes of at most ``limit`` steps."""
    from plastix.envs.base import EnvSpec

    spec = EnvSpec("toy", (2,), np.float32, num_actions=2, max_episode_steps=limit)
    loop = LoopConfig(
        env_steps=30,
        num_envs=envs,
        replay_ratio=1 / envs,
        warmup_steps=limit * envs,
        buffer_size=envs * capacity,
        batch_size=batch,
        period=1,
    )
    return loop, episode_replay(loop, spec)


def test_episode_replay_samples_completed_stored_episodes_as_a_uniform_draw_over_them():
    """Random episode ends (terminations and truncations) over several additions, enough to wrap
    each env's ring of episodes and evict old steps; every sample is a completed episode still wholly
    in the buffer, and each draw picks the same episode as a reference sampler (a cumulative sum
    over all E × C ring slots, NumPy) given the same uniform numbers."""
    E, L, capacity = 3, 5, 24
    loop, replay = toy_episode_replay(E, L, capacity, batch=64)
    rng = np.random.default_rng(0)
    T = 7

    running = np.zeros(E, int)  # steps of each env's episode so far

    def steps(t0):  # episodes of 1..L steps, ending at random or by the time limit; reward = 1000·env + time
        time = t0 + np.arange(T)
        ends, trunc = np.zeros((E, T), bool), np.zeros((E, T), bool)
        for t in range(T):
            running[:] += 1
            trunc[:, t] = running == L
            ends[:, t] = trunc[:, t] | (rng.random(E) < 0.3)
            running[ends[:, t]] = 0
        reward = (1000 * np.arange(E)[:, None] + time[None, :]).astype(np.float32)
        obs = np.zeros((E, T, 2), np.float32)
        return Step(obs, np.zeros((E, T), np.int32), reward, ends & ~trunc, trunc, obs)

    add, sample = jax.jit(replay.add), jax.jit(replay.sample)
    state = replay.init(jax.tree.map(lambda x: x[0, 0], steps(0)))
    for round_ in range(12):
        state = add(state, steps(round_ * T))
        if round_ < 3:
            continue
        time = int(state.time)
        episodes, starts, lengths = (np.asarray(x) for x in (state.episodes, state.episode_start, state.episode_length))
        usable = (np.arange(capacity)[None, :] < episodes[:, None]) & (starts >= time - capacity)
        assert usable.any()
        for seed in range(3):
            key = jax.random.key(100 * round_ + seed)
            batch = sample(state, key)
            u = np.asarray(jax.random.uniform(key, (loop.batch_size,))) * np.float32(usable.sum())
            flat = np.searchsorted(np.cumsum(usable.reshape(-1)), u, side="right")
            env, slot = flat // capacity, flat % capacity
            assert usable[env, slot].all()
            first_reward = np.asarray(batch.reward[:, 0])
            np.testing.assert_array_equal(first_reward, 1000 * env + starts[env, slot])
            np.testing.assert_array_equal(np.asarray(batch.valid).sum(1), lengths[env, slot])
            assert (starts[env, slot] + lengths[env, slot] <= time).all()  # completed


@pytest.mark.parametrize("early", [False, True], ids=["time-limit", "early-truncations"])
def test_episode_replay_keeps_the_final_observation_of_every_truncated_episode_it_samples(early):
    """Steps are stored without their final observation; a small ring keeps truncated episodes'
    ones. Against a reference kept here (every episode's start, length, ending and final
    observation): a sampled window holds the episode's own final observation right after its last
    step, and the sampled episodes are exactly those still wholly in the buffer — all of them when
    truncations come at the time limit; when an env truncates earlier (``early``) and overwrites the
    final observation of an episode still stored, only episodes newer than it are drawn."""
    E, L, capacity, T = 2, 4, 13, 5
    R = capacity // L + 1
    loop, replay = toy_episode_replay(E, L, capacity, batch=256)
    rng = np.random.default_rng(1)
    running = np.zeros(E, int)
    starts = np.zeros(E, int)
    episodes = [[] for _ in range(E)]  # (start, length, truncated, final observation)

    def steps(t0):  # obs = (1000·env + time, 0); final obs = (−1000·env − time, 1)
        time = t0 + np.arange(T)
        ends, trunc = np.zeros((E, T), bool), np.zeros((E, T), bool)
        code = 1000 * np.arange(E)[:, None] + time[None, :]
        for t in range(T):
            running[:] += 1
            limit = running == L
            early_trunc = (rng.random(E) < 0.5) if early else np.zeros(E, bool)
            stop = rng.random(E) < 0.3
            trunc[:, t] = limit | (early_trunc & ~stop)
            ends[:, t] = trunc[:, t] | stop
            for e in np.flatnonzero(ends[:, t]):
                final = (-float(code[e, t]), 1.0)
                episodes[e].append((starts[e], running[e], bool(trunc[e, t]), final))
                starts[e] = t0 + t + 1
            running[ends[:, t]] = 0
        obs = np.stack([code, np.zeros_like(code)], -1).astype(np.float32)
        final_obs = np.stack([-code, np.ones_like(code)], -1).astype(np.float32)
        return Step(obs, np.zeros((E, T), np.int32), code.astype(np.float32), ends & ~trunc, trunc, final_obs)

    add, sample = jax.jit(replay.add), jax.jit(replay.sample)
    state = replay.init(jax.tree.map(lambda x: x[0, 0], steps(0)))
    for e in range(E):  # the example steps(0) made above is not stored
        episodes[e].clear()
    running[:], starts[:] = 0, 0
    lost_any = False
    for round_ in range(10):
        state = add(state, steps(round_ * T))
        time = (round_ + 1) * T
        expected = set()
        for e in range(E):
            truncated = [ep for ep in episodes[e] if ep[2]]
            lost = truncated[: max(len(truncated) - R, 0)]
            cut = max((ep[0] for ep in lost), default=-1)
            lost_any |= any(ep[0] >= time - capacity for ep in lost)
            expected |= {(e, ep[0]) for ep in episodes[e] if ep[0] >= time - capacity and ep[0] > cut}
        seen = set()
        for seed in range(3):
            batch = sample(state, jax.random.key(10 * round_ + seed))
            reward, valid = np.asarray(batch.reward), np.asarray(batch.valid)
            obs = np.asarray(batch.obs)
            for b in range(loop.batch_size):
                e, start = divmod(int(reward[b, 0]), 1000)
                episode = next(ep for ep in episodes[e] if ep[0] == start)
                assert valid[b].sum() == episode[1]
                np.testing.assert_array_equal(obs[b, : episode[1], 0], 1000 * e + start + np.arange(episode[1]))
                if episode[2]:  # a truncated episode: its own final observation after its last step
                    np.testing.assert_array_equal(obs[b, episode[1]], episode[3])
                seen.add((e, start))
        assert seen == expected, round_
    assert lost_any == early  # the early case really overwrote final observations of stored episodes


def test_neuron_ratio_panels_give_each_mixer_its_own_rows():
    """Three mixers × three methods: rows per mixer (agent, then mixer), a column per method, and
    no mixer row for VDN (no mixer neurons); 14 methods of one mixer wrap at RATIO_COLUMNS;
    without a mixer column, the settings in order."""
    import pandas as pd

    from plastix.experiments.marl import RATIO_COLUMNS, ratio_panels

    mixers, methods = ["vdn", "qmix", "qplex"], ["none", "redo", "reset"]
    df = pd.DataFrame([{"mixer": x, "setting": f"{x} {m}"} for x in mixers for m in methods])
    places, rows, columns = ratio_panels(df, list(df.setting), lambda s, g: not (s.startswith("vdn") and g == "mixer"))
    assert (rows, columns) == (5, 3)
    assert places["vdn redo"] == {"agent": (0, 1)}
    assert places["qmix reset"] == {"agent": (1, 2), "mixer": (2, 2)}
    assert places["qplex none"] == {"agent": (3, 0), "mixer": (4, 0)}
    many = pd.DataFrame([{"mixer": x, "setting": f"{x} m{k}"} for x in ("qmix", "qplex") for k in range(14)])
    places, rows, columns = ratio_panels(many, list(many.setting))
    per_mixer = 2 * -(-14 // RATIO_COLUMNS)
    assert (rows, columns) == (2 * per_mixer, RATIO_COLUMNS)
    last = 2 * (13 // RATIO_COLUMNS)
    assert places["qmix m13"] == {"agent": (last, 13 % RATIO_COLUMNS), "mixer": (last + 1, 13 % RATIO_COLUMNS)}
    assert places["qplex m0"]["agent"] == (per_mixer, 0)  # the second mixer starts new rows
    plain = pd.DataFrame({"setting": ["a", "b"]})
    grid = {"a": {"agent": (0, 0), "mixer": (1, 0)}, "b": {"agent": (0, 1), "mixer": (1, 1)}}
    assert ratio_panels(plain, ["a", "b"]) == (grid, 2, 2)


def test_qplex_trains_a_period_on_smax_with_finite_losses():
    """SMAX offers no action to any agent after a battle's last step; QPLEX's first period on it
    was NaN (``smax-task-drift`` stopped there). One period of the experiment's own small cell."""
    from plastix.experiments import dormant, rl

    config = dormant.DormantExperimentConfig(mixers=("qplex",), methods=("none",), seeds=1)
    ((_, cell),) = dormant.EXPERIMENTS["smax-task-drift"][0](config)
    stage = rl.stage(cell)
    carry, rows = stage.run_chunk(stage.start(None), 0)
    losses = rows["loss"].to_numpy()
    assert len(losses) and np.isfinite(losses).all()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(stage.trained(carry)))
