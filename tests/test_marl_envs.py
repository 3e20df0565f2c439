"""Matrix games, predator-prey rules on hand-made states, and task schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix.envs.matrix_games import CLASSIC, SEQUENTIAL_GAMES, SEQUENTIAL_OPTIMA, make_matrix_game, permuted
from plastix.envs.predator_prey import (
    CATCH,
    STAY,
    PredatorPreyConfig,
    PreyState,
    make_predator_prey,
    predator_prey_rules,
)
from plastix.envs.tasks import TaskSchedule

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3


def test_matrix_game_rewards_every_joint_action_of_every_task():
    env = make_matrix_game()
    assert env.num_tasks == 5 and env.spec.agents == 2
    for k in range(env.num_tasks):
        reset, step = env.at_task(k)
        obs, state = reset(jax.random.key(0))
        for a0 in range(3):
            for a1 in range(3):
                ts = step(jax.random.key(1), state, jnp.array([a0, a1]))
                assert float(ts.reward) == SEQUENTIAL_GAMES[k, a0, a1]
                assert bool(ts.terminated) and not bool(ts.truncated)
        assert np.unravel_index(np.argmax(SEQUENTIAL_GAMES[k]), (3, 3)) == SEQUENTIAL_OPTIMA[k]
    assert np.array_equal(SEQUENTIAL_GAMES[0], CLASSIC)
    assert sorted(permuted(CLASSIC, (2, 1)).ravel().tolist()) == sorted(CLASSIC.ravel().tolist())


def test_matrix_game_rejects_bad_payoffs():
    with pytest.raises(ValueError, match="available"):
        make_matrix_game("nope")
    with pytest.raises(ValueError, match=r"\(K, A, A\)"):
        make_matrix_game(np.zeros((2, 3)))


CFG = PredatorPreyConfig(grid=5, predators=3, prey=2, radius=1, penalties=(-2.0,), episode_limit=4)
RULES = predator_prey_rules(CFG)


def state(pred, prey, active=None, alive=None, t=0):
    pred, prey = jnp.array(pred, jnp.int32), jnp.array(prey, jnp.int32)
    active = jnp.ones(len(pred), bool) if active is None else jnp.array(active)
    alive = jnp.ones(len(prey), bool) if alive is None else jnp.array(alive)
    return PreyState(pred, active, prey, alive, jnp.int32(t))


def step(s, actions, penalty=-2.0, key=0):
    return RULES.transition(jax.random.key(key), s, jnp.array(actions), jnp.float32(penalty))


def test_two_adjacent_catchers_capture_and_leave_the_grid():
    # prey 0 at (2, 2); predators 0 and 1 left and right of it, predator 2 far away; prey 1 far
    s = state([[2, 1], [2, 3], [0, 0]], [[2, 2], [4, 4]])
    s2, reward, terminated, truncated = step(s, [CATCH, CATCH, STAY])
    assert float(reward) == 10.0
    assert s2.prey_alive.tolist() == [False, True]
    assert s2.predator_active.tolist() == [False, False, True]
    assert bool(terminated)  # fewer than 2 active predators remain
    assert not bool(truncated)


def test_lone_catch_costs_the_penalty_once_per_prey_and_catches_nothing():
    s = state([[2, 1], [0, 4], [0, 0]], [[2, 2], [4, 4]])
    s2, reward, terminated, _ = step(s, [CATCH, STAY, STAY], penalty=-2.0)
    assert float(reward) == -2.0
    assert s2.prey_alive.tolist() == [True, True] and s2.predator_active.tolist() == [True, True, True]
    assert not bool(terminated)
    _, reward, _, _ = step(s, [CATCH, STAY, STAY], penalty=-0.5)  # the penalty is task data
    assert float(reward) == -0.5


def test_catch_needs_adjacency_not_diagonal():
    s = state([[1, 1], [3, 3], [0, 4]], [[2, 2], [4, 0]])
    _, reward, _, _ = step(s, [CATCH, CATCH, STAY])
    assert float(reward) == 0.0  # diagonal neighbours are not catchers: no capture, no penalty


def test_moves_are_blocked_by_walls_and_occupied_cells():
    s = state([[0, 0], [0, 1], [4, 4]], [[1, 1], [3, 0]], alive=[True, False])
    s2, _, _, _ = step(s, [UP, DOWN, RIGHT])  # off the grid; into the prey; off the grid
    assert s2.predator_pos.tolist() == [[0, 0], [0, 1], [4, 4]]
    s3, _, _, _ = step(s, [DOWN, LEFT, LEFT])  # (1,0) free; (0,0) is taken by predator 0 ... which moved first
    assert s3.predator_pos.tolist() == [[1, 0], [0, 0], [4, 3]]


def test_time_limit_is_a_truncation_and_all_prey_caught_a_termination():
    s = state([[0, 0], [0, 2], [4, 4]], [[3, 3], [4, 0]], t=3)
    _, _, terminated, truncated = step(s, [STAY, STAY, STAY])
    assert bool(truncated) and not bool(terminated)
    s = state([[2, 1], [2, 3], [1, 2], [3, 2]], [[2, 2], [0, 0]], alive=[True, False])
    cfg = PredatorPreyConfig(grid=5, predators=4, prey=2, radius=1, episode_limit=4)
    s2, reward, terminated, truncated = predator_prey_rules(cfg).transition(
        jax.random.key(0), s._replace(t=jnp.int32(3)), jnp.array([CATCH, CATCH, STAY, STAY]), jnp.float32(-2)
    )
    assert float(reward) == 10.0 and bool(terminated) and not bool(truncated)


def test_observation_window_and_state():
    s = state([[0, 0], [0, 1], [4, 4]], [[1, 0], [3, 3]], active=[True, True, False])
    obs = RULES.observe(s)
    assert obs.obs.shape == (3, 27) and obs.state.shape == (2 * 25 + 1,)
    w0 = obs.obs[0].reshape(3, 3, 3)  # predator 0 at (0, 0), window rows -1..1, cols -1..1
    assert w0[1, 2, 0] == 1.0  # predator 1 to its right
    assert w0[1, 1, 0] == 0.0  # not itself
    assert w0[2, 1, 1] == 1.0  # prey 0 below
    assert w0[0, :, 2].tolist() == [1.0, 1.0, 1.0] and w0[:, 0, 2].tolist() == [1.0, 1.0, 1.0]  # off the grid
    assert float(jnp.abs(obs.obs[2]).sum()) == 0.0  # a removed predator sees nothing
    assert obs.avail[2].tolist() == [False, False, False, False, True, False]  # ... and can only stay
    assert bool(obs.avail[0].all())


def test_env_resets_itself_and_returns_the_final_observation():
    env = make_predator_prey(CFG)
    reset, step_fn = env.at_task(0)
    obs, s = reset(jax.random.key(0))
    for t in range(CFG.episode_limit):
        ts = step_fn(jax.random.key(t + 1), s, jnp.full(3, STAY))
        s = ts.state
    assert bool(ts.truncated) and int(s.t) == 0
    assert float(ts.final_obs.state[-1]) == 1.0 and float(ts.obs.state[-1]) == 0.0


def test_schedule_task_at_and_switch_steps():
    schedule = TaskSchedule(((0, 100), (2, 50), (0, 30)))
    got = [int(schedule.task_at(jnp.int32(s))) for s in (0, 99, 100, 149, 150, 179, 500)]
    assert got == [0, 0, 2, 2, 0, 0, 0]
    assert schedule.switch_steps == (100, 150) and schedule.total_steps == 180
    with pytest.raises(ValueError, match="has 2 task"):
        schedule.check(2, "matrix")
    with pytest.raises(ValueError, match="env steps >= 1"):
        TaskSchedule(((0, 0),))
