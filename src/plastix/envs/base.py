"""The environment interface the training loops use: three pure functions of one environment.

Adapters (gymnax, brax, Atari through ale-py) turn their library's environments into an :class:`Env`; the
loops ``vmap`` ``reset`` and ``step`` over parallel environments and seeds. Episodes reset
themselves: after a step that ends an episode the returned observation is the first of a new
episode, and the observation the episode ended in is returned separately (``final_obs``).

An episode ends by *termination* (a terminal state: no future reward, value 0) or by
*truncation* (a time limit: the state has a value, and targets bootstrap from ``final_obs``).
Pendulum never terminates; every one of its episode ends is a truncation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from jax import Array


class EnvSpec(NamedTuple):
    """What a learner needs to know about an environment.

    Attributes:
      name: the name it was made with (e.g. ``"Breakout-MinAtar"``).
      obs_shape: shape of one observation.
      obs_dtype: dtype observations are stored with (``uint8`` for binary / pixel observations).
      num_actions: number of discrete actions, or 0 for continuous actions.
      action_dim: size of a continuous action (0 for discrete).
      action_low / action_high: bounds of continuous actions (0 for discrete).
      max_episode_steps: episode time limit.
      obs_scale: factor a network applies to observations (1/255 for pixels).
      final_obs: ``step`` returns the true final observation of an ended episode. ``False`` where
        the backend discards it (Atari through ale-py's vector env): learners then treat a
        truncation like a termination (no bootstrap), which this flag makes explicit.
    """

    name: str
    obs_shape: tuple[int, ...]
    obs_dtype: Any
    num_actions: int = 0
    action_dim: int = 0
    action_low: float = 0.0
    action_high: float = 0.0
    max_episode_steps: int = 1000
    obs_scale: float = 1.0
    final_obs: bool = True

    @property
    def discrete(self) -> bool:
        return self.num_actions > 0


class Timestep(NamedTuple):
    """What ``Env.step`` returns for one environment.

    Attributes:
      obs: the next observation (the first of a new episode when this step ended one).
      state: the next environment state.
      reward: float32 scalar.
      terminated: bool scalar: the episode reached a terminal state.
      truncated: bool scalar: the episode was cut by a time limit (and did not terminate).
      final_obs: the observation this step reached; equals ``obs`` unless the episode ended.
    """

    obs: Array
    state: Any
    reward: Array
    terminated: Array
    truncated: Array
    final_obs: Array

    @property
    def done(self) -> Array:
        """The episode ended (terminated or truncated)."""
        return self.terminated | self.truncated


class Env(NamedTuple):
    """``reset(key) -> (obs, state)``; ``step(key, state, action) -> Timestep``.

    One environment, unbatched: ``obs`` has ``spec.obs_shape``; reward and flags are scalars
    (float32, bool); see :class:`Timestep`.

    ``host_state`` marks environments whose real state lives on the host (Atari emulators,
    reached through callbacks): their ``state`` is only a handle, checkpoints cannot hold it, and
    evaluation needs its own Env object (see :mod:`plastix.envs.atari`).
    """

    spec: EnvSpec
    reset: Callable[[Array], tuple[Array, Any]]
    step: Callable[[Array, Any, Array], Timestep]
    host_state: bool = False
