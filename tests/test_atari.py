"""Atari through ale-py: the host-side emulators behind jit/vmap, their guards, and a run of the loop."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("ale_py")

from plastix.agents import DQNConfig, LoopConfig, make_dqn, make_train  # noqa: E402
from plastix.envs import available_envs, make_env  # noqa: E402
from plastix.experiments.rl import RLConfig, run_cell  # noqa: E402

KEYS = jax.random.split(jax.random.PRNGKey(0), 6).reshape(2, 3, 2)  # 2 seeds × 3 envs


def _rollout(env, steps, seed=0):
    """Random actions (fixed by ``seed``) for ``steps`` vector steps of 2 × 3 emulators."""
    reset = jax.jit(jax.vmap(jax.vmap(env.reset)))
    step = jax.jit(jax.vmap(jax.vmap(env.step)))
    obs, state = reset(KEYS)
    rng = np.random.default_rng(seed)
    rewards, dones = [], []
    for _ in range(steps):
        actions = jnp.asarray(rng.integers(0, env.spec.num_actions, (2, 3)))
        ts = step(KEYS, state, actions)
        obs, state = ts.obs, ts.state
        rewards.append(np.asarray(ts.reward))
        dones.append(np.asarray(ts.done))
    return obs, state, np.stack(rewards), np.stack(dones)


def test_spec_and_names():
    env = make_env("atari/breakout")
    assert env.host_state
    assert env.spec.obs_shape == (84, 84, 4) and env.spec.num_actions == 4
    assert env.spec.max_episode_steps == 27_000 and env.spec.obs_scale == pytest.approx(1 / 255)
    assert "atari/pong" in available_envs()
    with pytest.raises(ValueError, match="did you mean 'atari/breakout'.*; available: atari/<game> for ale-py's"):
        make_env("atari/Breakout")


def test_vmapped_steps_are_one_group_and_deterministic():
    env = make_env("atari/breakout")
    obs, state, rewards, dones = _rollout(env, 60)
    assert obs.shape == (2, 3, 84, 84, 4) and obs.dtype == jnp.uint8
    assert np.all(np.asarray(state.t) == 60) and np.all(np.asarray(state.group) == state.group[0, 0])
    np.testing.assert_array_equal(np.asarray(state.index), np.arange(6).reshape(2, 3))
    assert rewards.dtype == np.float32 and dones.dtype == bool
    obs2, _, rewards2, _ = _rollout(make_env("atari/breakout"), 60)  # a new Env object, same keys and actions
    np.testing.assert_array_equal(np.asarray(obs), np.asarray(obs2))
    np.testing.assert_array_equal(rewards, rewards2)
    # the stack holds consecutive frames: the newest differs from the oldest somewhere after play
    assert np.any(np.asarray(obs)[..., 3] != np.asarray(obs)[..., 0])


def test_stale_state_and_partial_group_raise():
    env = make_env("atari/breakout")
    obs, state, _, _ = _rollout(env, 3)
    step = jax.jit(jax.vmap(jax.vmap(env.step)))
    actions = jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(Exception, match="callback"):
        jax.block_until_ready(step(KEYS, state._replace(t=state.t - 1), actions))  # a repeated step
    with pytest.raises(Exception, match="callback"):
        jax.block_until_ready(jax.jit(jax.vmap(env.step))(KEYS[0], jax.tree.map(lambda x: x[0], state), actions[0]))


def test_training_rewards_are_clipped_evaluation_rewards_raw():
    _, _, train, _ = _rollout(make_env("atari/space_invaders"), 150)
    _, _, raw, _ = _rollout(make_env("atari/space_invaders", evaluation=True), 150)
    assert set(np.unique(train)) <= {0.0, 1.0} and train.sum() > 0
    assert raw.max() >= 5  # Space Invaders scores 5–30 points per alien


def test_host_env_needs_separate_eval_env_and_vmapped_seeds(tmp_path):
    env = make_env("atari/breakout")
    agent, _, _ = make_dqn(env.spec, DQNConfig(width_multiplier=0.25), 10)
    with pytest.raises(ValueError, match="eval_env"):
        make_train(LoopConfig(env_steps=20, warmup_steps=10, buffer_size=100, period=10), env, agent)
    cell = RLConfig(
        env="atari/breakout",
        loop=LoopConfig(env_steps=20, warmup_steps=10, buffer_size=100, period=10),
        seeds=2,
        vmap_seeds=False,
    )
    with pytest.raises(ValueError, match="vmap_seeds"):
        run_cell(cell, str(tmp_path / "run"))


@pytest.mark.slow  # 24 s on a 2-core CPU; the loop's resume is tested on CartPole in the default run
def test_dqn_loop_runs_on_atari_and_resumes(tmp_path):
    """A tiny DQN (Nature CNN at width ×0.25) on Breakout, 2 vmapped seeds, killed and resumed."""
    loop = LoopConfig(
        env_steps=40,
        warmup_steps=20,
        buffer_size=200,
        batch_size=4,
        period=10,
        eval_every=2,
        eval_envs=2,
        eval_steps=20,
        scoring_batch=16,
    )
    cell = RLConfig(
        env="atari/breakout", loop=loop, dqn=DQNConfig(width_multiplier=0.25, target_update_period=10), seeds=2
    )
    path = str(tmp_path / "run")
    partial = run_cell(cell, path, stop_after_chunks=1)
    assert len(partial) == 2 * 2
    df = run_cell(cell, path)
    assert len(df) == 2 * 4 and df.updates.max() == 40
    assert np.isfinite(df.loss).all() and df["q/dormant_fraction"].between(0, 1).all()
    assert df.eval_return.notna().sum() == 2 * 2


# ------------------------------------------------------------------------------------------ single-frame replay


def test_stacks_rebuilt_from_single_frames_equal_ale_pys_stacks():
    """ale-py zero-fills its stack at every reset (same-step autoreset): rebuilding the stacks from
    the newest frames and the episode ends gives its stacks exactly, across episode ends."""
    from ale_py.vector_env import AtariVectorEnv, AutoresetMode

    from plastix.agents.off_policy import rebuild_stacks

    env = AtariVectorEnv(
        game="breakout",
        num_envs=2,
        stack_num=4,
        img_height=84,
        img_width=84,
        grayscale=True,
        noop_max=0,
        use_fire_reset=False,
        repeat_action_probability=0.0,
        max_num_frames_per_episode=60,  # episodes of 15 agent steps: several ends in the sequence
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    obs, _ = env.reset(seed=np.array([3, 4]))
    stacks, ended = [obs], []
    rng = np.random.default_rng(0)
    for _ in range(40):
        obs, _, terminated, truncated, _ = env.step(rng.integers(0, 4, 2).astype(np.int32))
        stacks.append(obs)
        ended.append(terminated | truncated)
    env.close()
    stacks = np.moveaxis(np.stack(stacks, 1), 2, -1)[:, :-1]  # (envs, T, 84, 84, 4): obs before each step
    ended = np.stack(ended, 1)  # (envs, T)
    assert ended.sum() >= 4
    rebuilt = rebuild_stacks(jnp.asarray(stacks[..., -1]), jnp.asarray(ended), 4)
    np.testing.assert_array_equal(np.asarray(rebuilt), stacks[:, 3:])


def test_single_frame_replay_gives_the_stacked_replays_transitions_in_a_quarter_of_the_memory():
    from plastix.agents.off_policy import Step, transition_replay
    from plastix.envs.base import EnvSpec

    T, k, n = 64, 4, 3
    ends = np.zeros(T, bool)
    ends[[9, 10, 30, 47]] = True  # one 1-step episode among them
    frames = np.arange(1, T + 1, dtype=np.uint8)[:, None, None] * np.ones((T, 2, 2), np.uint8)  # frame t says t+1
    stacks = np.zeros((T, 2, 2, k), np.uint8)
    for t in range(T):  # the reference stacker: zero-filled at each episode start
        for age in range(k):
            s = t - age
            if s >= 0 and not ends[s:t].any():
                stacks[t, ..., k - 1 - age] = frames[s]
    rewards = np.arange(T, dtype=np.float32)
    steps = Step(
        jnp.asarray(stacks)[None],
        jnp.zeros((1, T), jnp.int32),
        jnp.asarray(rewards)[None],
        jnp.asarray(ends)[None],
        jnp.zeros((1, T), bool),
        None,
    )
    spec = EnvSpec("frames", (2, 2, k), jnp.uint8, num_actions=2, final_obs=False, frame_stack=k)
    loop = LoopConfig(buffer_size=T, batch_size=64, scoring_batch=8, n_step=n, gamma=0.5, warmup_steps=T)
    example = jax.tree.map(lambda x: x[0, 0], steps)
    states, batches = {}, {}
    for single in (True, False):
        replay = transition_replay(dataclasses.replace(loop, single_frames=single), spec)
        states[single] = replay.add(replay.init(example), steps)
        batches[single] = replay.sample(states[single], jax.random.PRNGKey(0))
    assert states[True].experience.obs.nbytes * k == states[False].experience.obs.nbytes
    for single in (True, False):  # every sampled transition is the one at its time index
        batch = jax.tree.map(np.asarray, batches[single])
        t = batch.obs[:, 0, 0, -1].astype(int) - 1
        np.testing.assert_array_equal(batch.obs, stacks[t])
        for i, start in enumerate(t):
            window = ends[start : start + n]
            stop = int(np.argmax(window)) if window.any() else n - 1
            reward = sum(0.5**j * rewards[start + j] for j in range(stop + 1))
            assert batch.reward[i] == pytest.approx(reward)
            assert batch.discount[i] == pytest.approx(0.0 if window.any() else 0.5**n)
            np.testing.assert_array_equal(batch.next_obs[i], stacks[start + n])
    assert (batches[True].obs[:, 0, 0, -1] > k - 1).all()  # the first k-1 steps only feed stacks
