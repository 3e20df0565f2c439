"""Atari 2600 games through ale-py's vectorized C++ environment, stepped from inside ``jit``.

The emulators live on the host. :class:`Env` functions reach them with ``jax.pure_callback``
(``vmap_method="broadcast_all"``): under the loop's ``vmap`` over seeds and parallel envs, a
vector step is **one** host call that steps all ``seeds × num_envs`` emulators at once (on
ale-py's thread pool), so the training loop stays a single jitted function.

Standard preprocessing, Dopamine's flavour (the code base of the dormant-neuron paper): frame
skip 4 with max-pooling of the last two frames, 84×84 grayscale, a stack of the last 4 frames
(observations ``(84, 84, 4)`` uint8), sticky actions with probability 0.25, episodes end at game
over (not at a life loss) or after 108k frames, minimal action set. Training rewards are clipped
to [-1, 1]; the evaluation env (``evaluation=True``) reports raw game scores.

Emulator states are host state, so a handful of rules hold (each checked, with an error naming it):

* One *group* of emulators per :class:`Env` object is alive: a ``reset`` re-seeds the group (and
  invalidates the states of the previous one). Training and evaluation therefore use two Env
  objects (``make_train(..., eval_env=...)``), and seeds must run together (``vmap``).
* Each state carries a step counter; a step on a stale or repeated state raises instead of
  silently stepping the wrong emulator.
* Checkpoints do not hold emulator states: a resumed run restarts its episodes (``Env.host_state``).
"""

from __future__ import annotations

import functools
import threading
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from plastix.envs.base import Env, EnvSpec, Timestep

FRAMES_PER_EPISODE = 108_000  # 30 minutes of play, as in Dopamine and Machado et al. (2018)


def available_games() -> tuple[str, ...]:
    """ROM ids shipped with ale-py (snake_case: ``"breakout"``, ``"space_invaders"``); empty if missing."""
    try:
        from ale_py import roms
    except ImportError:
        return ()
    return tuple(sorted(roms.get_all_rom_ids()))


class AtariState(NamedTuple):
    """Handle of one emulator: its group, its index in the group, and steps taken since reset."""

    group: jax.Array  # int32
    index: jax.Array  # int32
    t: jax.Array  # int32


class _Emulators:
    """The host side: one ``ale_py.vector_env.AtariVectorEnv`` group, re-seeded by every reset."""

    def __init__(self, game: str, evaluation: bool, sticky_actions: float, frame_skip: int, stack: int, size: int):
        self.options = dict(
            frameskip=frame_skip,
            stack_num=stack,
            img_height=size,
            img_width=size,
            grayscale=True,
            maxpool=True,
            noop_max=0,
            use_fire_reset=False,
            episodic_life=False,
            reward_clipping=not evaluation,
            repeat_action_probability=sticky_actions,
            max_num_frames_per_episode=FRAMES_PER_EPISODE,
            full_action_space=False,
        )
        self.game = game
        self.vec = None
        self.group = 0
        self.t = 0
        self.lock = threading.Lock()

    def num_actions(self) -> int:
        from ale_py.vector_env import AtariVectorEnv

        probe = AtariVectorEnv(game=self.game, num_envs=1, **self.options)
        n = int(probe.single_action_space.n)
        probe.close()
        return n

    def reset(self, keys: np.ndarray):
        from ale_py.vector_env import AtariVectorEnv, AutoresetMode

        batch = keys.shape[:-1]
        n = int(np.prod(batch, dtype=np.int64))
        keys = np.asarray(keys, np.uint64).reshape(n, -1)
        seeds = ((keys[:, 0] * np.uint64(2_654_435_761)) ^ keys[:, -1]) % np.uint64(2**31 - 1)
        with self.lock:
            if self.vec is None or self.vec.num_envs != n:
                if self.vec is not None:
                    self.vec.close()
                self.vec = AtariVectorEnv(
                    game=self.game, num_envs=n, autoreset_mode=AutoresetMode.SAME_STEP, **self.options
                )
            obs, _ = self.vec.reset(seed=seeds.astype(np.int64))
            self.group, self.t = self.group + 1, 0
            group = np.full(batch, self.group, np.int32)
        return self._frames(obs, batch), group, np.arange(n, dtype=np.int32).reshape(batch), np.zeros(batch, np.int32)

    def step(self, group, index, t, actions):
        group, index, t, actions = (np.asarray(x) for x in (group, index, t, actions))
        batch = actions.shape
        with self.lock:
            n = 0 if self.vec is None else self.vec.num_envs
            if group.size != n or np.any(group != self.group) or np.any(index.ravel() != np.arange(n)):
                raise RuntimeError(
                    f"atari/{self.game}: a step must cover the whole group of {n} emulators made by the last reset "
                    f"(states of an earlier reset are stale; run seeds together with vmap_seeds=True, and use a "
                    f"separate Env object for evaluation)"
                )
            if np.any(t != self.t):
                raise RuntimeError(
                    f"atari/{self.game}: stale or repeated step (state at step {int(t.ravel()[0])}, "
                    f"emulators at step {self.t})"
                )
            obs, reward, terminated, truncated, _ = self.vec.step(np.ascontiguousarray(actions.reshape(n), np.int32))
            self.t += 1
        terminated = terminated.reshape(batch).astype(bool)
        truncated = truncated.reshape(batch).astype(bool) & ~terminated
        reward = reward.astype(np.float32).reshape(batch)
        return self._frames(obs, batch), reward, terminated, truncated, (t + 1).astype(np.int32)

    @staticmethod
    def _frames(obs: np.ndarray, batch) -> np.ndarray:
        """``(n, stack, H, W)`` → ``(*batch, stack, H, W)`` (moved to channels-last on the device)."""
        return obs.reshape(*batch, *obs.shape[1:])


@functools.lru_cache(maxsize=64)
def _num_actions(game: str) -> int:
    return _Emulators(game, False, 0.0, 4, 4, 84).num_actions()


def make_atari(
    game: str,
    evaluation: bool = False,
    sticky_actions: float = 0.25,
    frame_skip: int = 4,
    stack: int = 4,
    size: int = 84,
) -> Env:
    """Atari game ``game`` (an ale-py ROM id, see :func:`available_games`) as an :class:`Env`.

    Args:
      game: ROM id, e.g. ``"breakout"``, ``"pong"``, ``"space_invaders"``.
      evaluation: raw (unclipped) rewards, for evaluation episodes.
      sticky_actions: probability that the previous action repeats (Machado et al. 2018).
      frame_skip / stack / size: agent steps last ``frame_skip`` frames; observations are the
        last ``stack`` frames at ``size × size``.

    Returns:
      an Env with ``host_state=True`` whose ``obs`` is ``(size, size, stack)`` uint8.
    """
    games = available_games()
    if not games:
        raise ValueError(f"env atari/{game}: ale-py is not installed (pip install 'plastix[atari]')")
    if game not in games:
        from plastix.envs import unknown_name

        raise ValueError(unknown_name("env", f"atari/{game}", tuple("atari/" + g for g in games)))
    emulators = _Emulators(game, evaluation, sticky_actions, frame_skip, stack, size)
    obs_spec = jax.ShapeDtypeStruct((stack, size, size), jnp.uint8)  # as ale-py returns it
    channels_last = lambda obs: jnp.moveaxis(obs, 0, -1)  # noqa: E731
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)  # noqa: E731
    spec = EnvSpec(
        f"atari/{game}",
        (size, size, stack),
        jnp.uint8,
        num_actions=_num_actions(game),
        max_episode_steps=FRAMES_PER_EPISODE // frame_skip,
        obs_scale=1 / 255,
        final_obs=False,
        frame_stack=stack,
    )

    def reset(key):
        obs, group, index, t = jax.pure_callback(
            emulators.reset,
            (obs_spec, scalar(jnp.int32), scalar(jnp.int32), scalar(jnp.int32)),
            jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key,
            vmap_method="broadcast_all",
        )
        return channels_last(obs), AtariState(group, index, t)

    def step(key, state: AtariState, action):
        del key  # the emulators draw sticky actions from their own seeded generators
        obs, reward, terminated, truncated, t = jax.pure_callback(
            emulators.step,
            (obs_spec, scalar(jnp.float32), scalar(jnp.bool_), scalar(jnp.bool_), scalar(jnp.int32)),
            state.group,
            state.index,
            state.t,
            action.astype(jnp.int32),
            vmap_method="broadcast_all",
        )
        obs = channels_last(obs)  # ale-py's same-step autoreset keeps no final frame: spec.final_obs is False
        return Timestep(obs, state._replace(t=t), reward, terminated, truncated, obs)

    return Env(spec, reset, step, host_state=True)
