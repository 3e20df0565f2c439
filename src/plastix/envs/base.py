"""The environment interface the training loops use: three pure functions of one environment.

Adapters (gymnax, brax, Atari through ale-py) turn their library's environments into an :class:`Env`; the
loops ``vmap`` ``reset`` and ``step`` over parallel environments and seeds. Episodes reset
themselves: after a step that ends an episode the returned observation is the first of a new
episode, and the observation the episode ended in is returned separately (``final_obs``).

An episode ends by *termination* (a terminal state: no future reward, value 0) or by
*truncation* (a time limit: the state has a value, and targets bootstrap from ``final_obs``).
Pendulum never terminates; every one of its episode ends is a truncation.

**Multi-agent environments** (``spec.agents = n > 0``) are the same three functions with a
cooperative team: the observation is a :class:`MultiAgentObs` pytree (per-agent observations,
the global state and the available-action masks), actions are ``(n,)`` int32, and the reward
is the team's scalar.

**Tasks as data.** An environment with several tasks (matrix games with different payoffs,
predator-prey with other penalties, SMAX with other unit-type mixes) lists their parameters in
``Env.tasks``, a pytree whose leaves have a leading axis of length K (one entry per task); its
``reset(key, task=...)`` and ``step(key, state, action, task=...)`` receive one task's entry.
The loop picks the entry with a traced index (:meth:`Env.at_task`), so a schedule of tasks
(:class:`~plastix.envs.tasks.TaskSchedule`) switches inside one jitted run.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
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
      agents: number of agents of a cooperative multi-agent env (0: a single-agent env). Then
        ``obs_shape`` is one agent's observation, ``num_actions`` one agent's actions, and the
        observation is a :class:`MultiAgentObs`.
      state_shape: shape of the global state of a multi-agent env (what a mixer conditions on).
      frame_stack: ``k > 1`` when an observation is the last ``k`` frames along its last axis
        (newest last) and at an episode start the older frames are zero, as ale-py resets its
        stack; a replay may then store single frames and rebuild the stacks
        (:func:`~plastix.agents.off_policy.rebuild_stacks`). 0: not a frame stack.
      truncates: an episode can be cut by the time limit. ``False`` where every episode ends in a
        termination at or before ``max_episode_steps`` (a one-step matrix game): no target ever
        bootstraps from an episode's final observation, so an episode replay need not return it
        and a recurrent learner runs its networks over ``L`` steps instead of ``L + 1``.
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
    agents: int = 0
    state_shape: tuple[int, ...] = ()
    frame_stack: int = 0
    truncates: bool = True

    @property
    def discrete(self) -> bool:
        return self.num_actions > 0

    def check_single_agent(self, learner: str) -> None:
        """Raise when this is a multi-agent env: ``learner`` acts for one agent.

        Raises:
          ValueError: naming the multi-agent learners to use instead.
        """
        if self.agents:
            raise ValueError(
                f"{learner} is a single-agent learner; {self.name} is a cooperative multi-agent env "
                f"({self.agents} agents): use --agent vdn, qmix or qplex"
            )


class MultiAgentObs(NamedTuple):
    """What a multi-agent env observes at one step (for one env; the loop adds batch axes in front).

    Attributes:
      obs: ``(n, *obs_shape)`` each agent's own (partial) observation.
      state: ``(*state_shape,)`` the global state (for centralized training only).
      avail: ``(n, num_actions)`` bool, the actions each agent may take now.
    """

    obs: Array
    state: Array
    avail: Array


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


@contextlib.contextmanager
def quiet_output():
    """Silence file descriptors 1 and 2 (e.g. a library that prints while it is imported, such as jaxmarl,
    whose import also rebinds ``sys.stdout`` so that ``contextlib.redirect_stdout`` misses it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def select_reset(done: Array, fresh: Any, current: Any) -> Any:
    """``fresh`` where the episode ended (``done``), else ``current`` (any pytree): the automatic reset."""
    return jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, current)


class Env(NamedTuple):
    """``reset(key) -> (obs, state)``; ``step(key, state, action) -> Timestep``.

    With ``tasks`` (a pytree, leading axis = task): ``reset(key, task=t)`` and
    ``step(key, state, action, task=t)`` with ``t`` one task's entry; see :meth:`at_task`.

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
    tasks: Any = None

    @property
    def num_tasks(self) -> int:
        """K, the number of tasks (1 for an env without ``tasks``)."""
        if self.tasks is None:
            return 1
        return int(jax.tree.leaves(self.tasks)[0].shape[0])

    def at_task(self, index: Array | int) -> tuple[Callable, Callable]:
        """``(reset, step)`` of task ``index`` (a traced int32 is fine): the plain functions without tasks."""
        if self.tasks is None:
            return self.reset, self.step
        task = jax.tree.map(lambda x: x[index], self.tasks)
        return partial(self.reset, task=task), partial(self.step, task=task)
