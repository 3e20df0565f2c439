"""Predator-prey with relative overgeneralization (PyMARL's stag hunt rules, MARL-NOTES), pure JAX.

Rules (each tested on hand-made states in ``tests/test_marl_envs.py``):

- A ``grid × grid`` bounded grid (default 10×10) holds ``predators`` agents (8) and ``prey`` (8),
  placed on distinct random cells at reset.
- Actions per predator: 0 up (row − 1), 1 right (col + 1), 2 down (row + 1), 3 left (col − 1),
  4 stay, 5 catch. Every action is available to an active predator; a removed one can only stay.
- **Catch first.** A predator taking *catch* is a catcher of every alive prey in one of its four
  neighbouring cells. A prey with at least 2 catchers is caught: the team gets ``capture_reward``
  (10) and the prey and all its catchers leave the grid. A prey with exactly one catcher is a
  miscoordination: the team gets ``penalty`` (default −2, a task parameter) once for that prey.
  This is relative overgeneralization: a lone attempt is punished, so agents that do not yet
  coordinate learn to avoid *catch*.
- **Then predators move**, in index order: a move into a cell off the grid or occupied (by an
  active predator or an alive prey) does nothing.
- **Then prey move**, in index order: each alive prey picks one of its 4 moves or stay uniformly
  at random, with the same blocking.
- The episode **terminates** when every prey is caught or fewer than 2 predators remain active
  (nothing more can be caught). It is **truncated** after ``episode_limit`` steps (200): a time
  limit, not a terminal state, so learners bootstrap from the final observation.
- Observation of predator i: the ``(2r+1) × (2r+1)`` window around it (r = 2: 5×5) with 3
  channels (other active predators, alive prey, cells off the grid): 75 values; zeros for a
  removed predator. Global state: the whole grid with 2 channels (active predators, prey) and
  the elapsed fraction of the episode: ``2·grid² + 1`` values (PyMARL's stag hunt state also
  has a hare channel; there are no hares here).
- The team reward is the sum of the step's captures and penalties; there is no time penalty.

Tasks: ``penalty`` is task data (``Env.tasks``), so a schedule may change it inside a run.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from plastix.envs.base import Env, EnvSpec, MultiAgentObs, Timestep, select_reset

MOVES = jnp.array([[-1, 0], [0, 1], [1, 0], [0, -1], [0, 0]], jnp.int32)  # up, right, down, left, stay
STAY, CATCH = 4, 5


@dataclasses.dataclass(frozen=True)
class PredatorPreyConfig:
    """Predator-prey settings (defaults: PyMARL's stag hunt with WQMIX's punishment, MARL-NOTES).

    Attributes:
      grid: side of the square grid.
      predators: number of predators (agents).
      prey: number of prey.
      radius: observation radius (window ``2·radius + 1``).
      capture_reward: team reward per caught prey.
      penalties: miscoordination penalty of each task (one task per entry).
      episode_limit: time limit in steps.
    """

    grid: int = 10
    predators: int = 8
    prey: int = 8
    radius: int = 2
    capture_reward: float = 10.0
    penalties: tuple[float, ...] = (-2.0,)
    episode_limit: int = 200

    def __post_init__(self):
        for field in ("grid", "predators", "prey", "episode_limit"):
            if getattr(self, field) < 1:
                raise ValueError(f"PredatorPreyConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.radius < 0:
            raise ValueError(f"PredatorPreyConfig.radius must be >= 0, got {self.radius}")
        if self.predators + self.prey > self.grid**2:
            raise ValueError(
                f"PredatorPreyConfig: {self.predators} predators + {self.prey} prey do not fit on a "
                f"{self.grid}×{self.grid} grid"
            )
        if not self.penalties:
            raise ValueError("PredatorPreyConfig.penalties needs at least one task's penalty")


class PreyState(NamedTuple):
    """Positions ``(n, 2)`` / ``(m, 2)`` int32 (row, col), who is still on the grid, and the step."""

    predator_pos: Array
    predator_active: Array
    prey_pos: Array
    prey_alive: Array
    t: Array


def _occupied(state: PreyState, grid: int) -> Array:
    """``(grid, grid)`` bool: a cell holds an active predator or an alive prey."""
    occ = jnp.zeros((grid, grid), bool)
    p, q = state.predator_pos, state.prey_pos
    occ = occ.at[p[:, 0], p[:, 1]].max(state.predator_active)
    return occ.at[q[:, 0], q[:, 1]].max(state.prey_alive)


def _move_in_order(pos: Array, moving: Array, deltas: Array, occupied: Array, grid: int) -> Array:
    """Move entities one after the other; a move off the grid or into an occupied cell does nothing."""

    def one(i, carry):
        pos, occ = carry
        target = pos[i] + deltas[i]
        inside = jnp.all((target >= 0) & (target < grid))
        clipped = jnp.clip(target, 0, grid - 1)
        go = moving[i] & inside & ~occ[clipped[0], clipped[1]] & jnp.any(deltas[i] != 0)
        new = jnp.where(go, clipped, pos[i])
        occ = occ.at[pos[i][0], pos[i][1]].set(jnp.where(go, False, occ[pos[i][0], pos[i][1]]))
        occ = occ.at[new[0], new[1]].set(jnp.where(go, True, occ[new[0], new[1]]))
        return pos.at[i].set(new), occ

    pos, _ = jax.lax.fori_loop(0, pos.shape[0], one, (pos, occupied))
    return pos


class Rules(NamedTuple):
    """The pure pieces of the env (for tests on hand-made states).

    ``observe(state) -> MultiAgentObs``; ``initial_state(key) -> PreyState``;
    ``transition(key, state, action (n,), penalty) -> (state, reward, terminated, truncated)``
    (one step without the automatic reset).
    """

    spec: EnvSpec
    observe: object
    initial_state: object
    transition: object


def predator_prey_rules(config: PredatorPreyConfig = PredatorPreyConfig(), name: str = "predator-prey") -> Rules:
    """The rules of the module docstring as pure functions."""
    g, n, m, r = config.grid, config.predators, config.prey, config.radius
    window = 2 * r + 1
    spec = EnvSpec(
        name,
        (window * window * 3,),
        jnp.float32,
        num_actions=6,
        max_episode_steps=config.episode_limit,
        agents=n,
        state_shape=(2 * g * g + 1,),
    )

    def observe(state: PreyState) -> MultiAgentObs:
        grid = jnp.zeros((g + 2 * r, g + 2 * r, 3), jnp.float32).at[:, :, 2].set(1.0)
        grid = grid.at[r : r + g, r : r + g, 2].set(0.0)
        p, q = state.predator_pos + r, state.prey_pos + r
        grid = grid.at[p[:, 0], p[:, 1], 0].add(state.predator_active.astype(jnp.float32))
        grid = grid.at[q[:, 0], q[:, 1], 1].add(state.prey_alive.astype(jnp.float32))

        def view(pos, active):
            w = jax.lax.dynamic_slice(grid, (pos[0], pos[1], 0), (window, window, 3))
            w = w.at[r, r, 0].add(-1.0)  # not itself
            return jnp.where(active, w.reshape(-1), 0.0)

        obs = jax.vmap(view)(state.predator_pos, state.predator_active)
        inner = grid[r : r + g, r : r + g, :2].reshape(-1)
        global_state = jnp.concatenate([inner, (state.t / config.episode_limit)[None].astype(jnp.float32)])
        avail = jnp.where(state.predator_active[:, None], True, jnp.arange(6)[None, :] == STAY)
        return MultiAgentObs(obs, global_state, avail)

    def initial_state(key) -> PreyState:
        cells = jax.random.permutation(key, g * g)[: n + m]
        pos = jnp.stack([cells // g, cells % g], -1).astype(jnp.int32)
        return PreyState(pos[:n], jnp.ones(n, bool), pos[n:], jnp.ones(m, bool), jnp.zeros((), jnp.int32))

    def transition(key, state: PreyState, action: Array, penalty: Array):
        """One step without auto-reset: ``(state, reward, terminated, truncated)``."""
        catching = state.predator_active & (action == CATCH)
        dist = jnp.abs(state.predator_pos[:, None, :] - state.prey_pos[None, :, :]).sum(-1)  # (n, m)
        adjacent = (dist == 1) & catching[:, None] & state.prey_alive[None, :]
        catchers = adjacent.sum(0)
        caught = catchers >= 2
        missed = catchers == 1
        reward = config.capture_reward * caught.sum() + penalty * missed.sum()
        removed = jnp.any(adjacent & caught[None, :], axis=1)
        state = state._replace(predator_active=state.predator_active & ~removed, prey_alive=state.prey_alive & ~caught)

        moving = state.predator_active & (action < STAY)
        deltas = MOVES[jnp.clip(action, 0, STAY)]
        pred = _move_in_order(state.predator_pos, moving, deltas, _occupied(state, g), g)
        state = state._replace(predator_pos=pred)
        prey_deltas = MOVES[jax.random.randint(key, (m,), 0, 5)]
        prey = _move_in_order(state.prey_pos, state.prey_alive, prey_deltas, _occupied(state, g), g)
        state = state._replace(prey_pos=prey, t=state.t + 1)

        terminated = ~jnp.any(state.prey_alive) | (jnp.sum(state.predator_active) < 2)
        truncated = (state.t >= config.episode_limit) & ~terminated
        return state, reward.astype(jnp.float32), terminated, truncated

    return Rules(spec, observe, initial_state, transition)


def make_predator_prey(config: PredatorPreyConfig = PredatorPreyConfig(), name: str = "predator-prey") -> Env:
    """The predator-prey env of the module docstring (one task per entry of ``config.penalties``)."""
    rules = predator_prey_rules(config, name)

    def reset(key, task):
        state = rules.initial_state(key)
        return rules.observe(state), state

    def step(key, state, action, task):
        k_move, k_reset = jax.random.split(key)
        state, reward, terminated, truncated = rules.transition(k_move, state, action, task["penalty"])
        final = rules.observe(state)
        fresh = rules.initial_state(k_reset)
        done = terminated | truncated
        state, obs = select_reset(done, (fresh, rules.observe(fresh)), (state, final))
        return Timestep(obs, state, reward, terminated, truncated, final)

    return Env(rules.spec, reset, step, tasks={"penalty": jnp.asarray(config.penalties, jnp.float32)})
