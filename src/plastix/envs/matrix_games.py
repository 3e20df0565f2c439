"""One-step cooperative matrix games (QTRAN / PyMARL2 ``one_step_matrix_game``), pure JAX.

Two agents each choose one of 3 actions once; both receive the payoff ``payoff[a0, a1]`` and the
episode *terminates* (a real terminal state, nothing to bootstrap). Observations and the global
state carry no information (a constant ``[1.0]``: the one-hot of the only step), every action is
available. The payoffs are task data (``Env.tasks``), so a :class:`~plastix.envs.tasks.TaskSchedule`
switches games inside one jitted run.

The classic non-monotonic game (optimum 8 at (0, 0); VDN and QMIX tend to settle at 0 because
their monotonic mixing cannot represent the −12 penalties around it)::

    [[  8, -12, -12],
     [-12,   0,   0],
     [-12,   0,   0]]

:data:`SEQUENTIAL_GAMES` are five versions of it whose optimal joint action moves, made by
permuting its rows and columns: optima at (0, 0), (1, 1), (2, 2), (1, 2) and (2, 0). The default
sequential protocol plays them in order and then returns to the first one
(:func:`sequential_schedule`), which measures whether the first task can be learned again.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from plastix.envs.base import Env, EnvSpec, MultiAgentObs, Timestep
from plastix.envs.tasks import TaskSchedule

CLASSIC = np.array([[8.0, -12.0, -12.0], [-12.0, 0.0, 0.0], [-12.0, 0.0, 0.0]], np.float32)

GAMES: dict[str, np.ndarray] = {
    "classic": CLASSIC,
    # PyMARL2's variants and QPLEX's matrix games (MARL-NOTES)
    "pymarl2_small_penalty": np.array([[12, -0.1, -0.1], [-0.1, 0, 0], [-0.1, 0, 0]], np.float32),
    "pymarl2_large_penalty": np.array([[12, -12, -12], [-12, 0, 0], [-12, 0, 0]], np.float32),
    "pymarl2_monotonic": np.array([[12, 0, 10], [0, 0, 10], [10, 10, 10]], np.float32),
    "qplex_matrix_game_1": np.array([[10.4, 0, 10], [0, 10, 10], [10, 10, 10]], np.float32),
    "qplex_matrix_game_3": np.array([[8, -12, -12], [-12, 6, 0], [-12, 0, 6]], np.float32),
}


def permuted(payoff: np.ndarray, optimum: tuple[int, int]) -> np.ndarray:
    """``payoff`` with rows and columns permuted so that its entry (0, 0) moves to ``optimum``."""
    n = payoff.shape[0]
    rows = [optimum[0]] + [i for i in range(n) if i != optimum[0]]
    cols = [optimum[1]] + [j for j in range(n) if j != optimum[1]]
    out = np.empty_like(payoff)
    out[np.ix_(rows, cols)] = payoff
    return out


SEQUENTIAL_OPTIMA = ((0, 0), (1, 1), (2, 2), (1, 2), (2, 0))
SEQUENTIAL_GAMES = np.stack([permuted(CLASSIC, o) for o in SEQUENTIAL_OPTIMA])
"""``(5, 3, 3)``: the classic game with its optimum moved to each of :data:`SEQUENTIAL_OPTIMA`."""


def make_matrix_game(payoffs: np.ndarray | str = SEQUENTIAL_GAMES, name: str = "matrix") -> Env:
    """A one-step two-agent matrix game with one task per payoff table.

    Args:
      payoffs: ``(K, A, A)`` payoff tables (one task each), one ``(A, A)`` table, or a name in
        :data:`GAMES`.
      name: the spec's name.
    """
    if isinstance(payoffs, str):
        if payoffs not in GAMES:
            raise ValueError(f"matrix game: got {payoffs!r}, available: {tuple(GAMES)}")
        payoffs = GAMES[payoffs]
    payoffs = np.asarray(payoffs, np.float32)
    if payoffs.ndim == 2:
        payoffs = payoffs[None]
    if payoffs.ndim != 3 or payoffs.shape[1] != payoffs.shape[2] or payoffs.shape[1] < 2:
        raise ValueError(f"matrix game payoffs must be (K, A, A) with A >= 2, got shape {payoffs.shape}")
    actions = payoffs.shape[1]
    spec = EnvSpec(
        name, (1,), jnp.float32, num_actions=actions, max_episode_steps=1, agents=2, state_shape=(1,), truncates=False
    )
    observation = MultiAgentObs(
        jnp.ones((2, 1), jnp.float32), jnp.ones((1,), jnp.float32), jnp.ones((2, actions), bool)
    )

    def reset(key, task):
        return observation, jnp.zeros((), jnp.int32)

    def step(key, state, action, task):
        reward = task["payoff"][action[0], action[1]]
        yes = jnp.ones((), bool)
        return Timestep(observation, state, reward, yes, ~yes, observation)

    return Env(spec, reset, step, tasks={"payoff": jnp.asarray(payoffs)})


def sequential_schedule(steps_per_task: int, tasks: int = 5, revisit: int = 0) -> TaskSchedule:
    """Tasks ``0 … tasks-1`` for ``steps_per_task`` env steps each, then task ``revisit`` again."""
    return TaskSchedule(tuple((t, steps_per_task) for t in range(tasks)) + ((revisit, steps_per_task),))
