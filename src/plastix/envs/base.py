"""The environment interface the training loops use: three pure functions of one environment.

Adapters (gymnax, brax, Atari through ale-py) turn their library's environments into an :class:`Env`; the
loops ``vmap`` ``reset`` and ``step`` over parallel environments and seeds. Episodes reset
themselves: after a step with ``done`` the returned observation is the first of a new episode.
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

    @property
    def discrete(self) -> bool:
        return self.num_actions > 0


class Env(NamedTuple):
    """``reset(key) -> (obs, state)``; ``step(key, state, action) -> (obs, state, reward, done)``.

    One environment, unbatched: ``obs`` has ``spec.obs_shape``, ``reward`` and ``done`` are
    scalars (float32, bool). ``done`` marks the last step of an episode (termination or time
    limit); the returned ``obs`` is then already the first observation of the next episode.

    ``host_state`` marks environments whose real state lives on the host (Atari emulators,
    reached through callbacks): their ``state`` is only a handle, checkpoints cannot hold it, and
    evaluation needs its own Env object (see :mod:`plastix.envs.atari`).
    """

    spec: EnvSpec
    reset: Callable[[Array], tuple[Array, Any]]
    step: Callable[[Array, Any, Array], tuple[Array, Any, Array, Array]]
    host_state: bool = False
