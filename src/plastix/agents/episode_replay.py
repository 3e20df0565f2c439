"""A replay of whole episodes for recurrent learners (PyMARL's episode buffer, without its padding cost).

Storage is per parallel env: a flashbax trajectory buffer holds each env's time series of
:class:`~plastix.agents.off_policy.Step` s (no padding is stored), and a ring per env records
where every completed episode starts and how long it is. A sample draws completed episodes
uniformly (across envs, among those still wholly in the buffer) and returns each as a window of
``L + 1`` steps, ``L`` the env's time limit, with a validity mask: an :class:`EpisodeBatch` of
*padded episodes*. Episodes may span the loop's iterations; an episode still running is never
sampled. flashbax holds the steps well; what it lacks is episode-aligned sampling (its sampler
draws windows at random offsets), so the ring and the sampler are written here.

Bootstrapping: in the returned window, the observation right after the episode's last step
(position ``length``) is the episode's *final observation* (``Step.final_obs``), so a learner
that runs a recurrent network over all ``L + 1`` observations gets the value of the state a
truncated episode ended in; after a termination it is masked out by the learner (no bootstrap).
An env that never truncates (``EnvSpec.truncates`` false) needs no final observation: its windows
are ``L`` steps long.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from plastix.agents.off_policy import LoopConfig, Replay, Step, layout
from plastix.envs.base import EnvSpec


class EpisodeBatch(NamedTuple):
    """B padded episodes of at most L steps (batch-major).

    Attributes:
      obs: pytree of ``(B, W, ...)``, ``W = L + 1``: observations of steps 0…L; position ``length``
        holds the final observation of the episode (the state it ended in); later positions are
        padding. ``W = L`` for an env that never truncates (no final observation is needed).
      action: ``(B, L, ...)`` actions.
      reward: ``(B, L)`` rewards.
      terminated: ``(B, L)`` the episode terminated at this step (only at its last step).
      truncated: ``(B, L)`` the episode was cut by the time limit at this step.
      valid: ``(B, L)`` bool: the step belongs to the episode (``t < length``).
    """

    obs: Any
    action: Array
    reward: Array
    terminated: Array
    truncated: Array
    valid: Array


class EpisodeReplayState(NamedTuple):
    steps: Any  # flashbax TrajectoryBufferState, experience leaves (E, C, ...)
    time: Array  # int32: steps written per env so far
    current_start: Array  # (E,) int32: where the running episode of each env started
    episode_start: Array  # (E, C) int32 ring of completed episodes' starts
    episode_length: Array  # (E, C) int32
    episodes: Array  # (E,) int32 completed episodes so far


def episode_replay(config: LoopConfig, spec: EnvSpec) -> Replay:
    """An :class:`~plastix.agents.off_policy.Replay` of whole episodes (pass as ``Agent.replay``).

    ``config.buffer_size`` counts env steps (split over the parallel envs), ``batch_size`` and
    ``scoring_batch`` count episodes. The warm-up must complete at least one episode per env.
    """
    import flashbax

    E = config.num_envs
    capacity = config.buffer_size // E
    L = spec.max_episode_steps
    W = L + 1 if spec.truncates else L  # observations per sampled episode
    if capacity < L + 1:
        raise ValueError(
            f"LoopConfig.buffer_size ({config.buffer_size}) must hold one episode of {spec.name} per env: "
            f"at least {(L + 1) * E} steps with num_envs={E}"
        )
    if layout(config).warmup_vector_steps < L:
        raise ValueError(
            f"LoopConfig.warmup_steps ({config.warmup_steps}) must complete one episode per env before learning: "
            f"at least {L * E} for {spec.name} (episode limit {L}) with num_envs={E}"
        )
    storage = flashbax.make_trajectory_buffer(
        add_batch_size=E,
        sample_batch_size=1,
        sample_sequence_length=1,
        period=1,
        min_length_time_axis=1,
        max_length_time_axis=capacity,
    )

    def init(example: Step) -> EpisodeReplayState:
        zeros = jnp.zeros((E, capacity), jnp.int32)
        scalar = jnp.zeros((), jnp.int32)
        return EpisodeReplayState(storage.init(example), scalar, jnp.zeros(E, jnp.int32), zeros, zeros, zeros[:, 0])

    def add(state: EpisodeReplayState, steps: Step) -> EpisodeReplayState:
        done = steps.terminated | steps.truncated  # (E, T)

        def record(carry, t):
            start, starts, lengths, count = carry
            now = state.time + t
            ended = done[:, t]
            slot = count % capacity
            rows = jnp.arange(E)
            starts = starts.at[rows, slot].set(jnp.where(ended, start, starts[rows, slot]))
            lengths = lengths.at[rows, slot].set(jnp.where(ended, now - start + 1, lengths[rows, slot]))
            return (jnp.where(ended, now + 1, start), starts, lengths, count + ended), None

        T = done.shape[1]
        carry = (state.current_start, state.episode_start, state.episode_length, state.episodes)
        (start, starts, lengths, count), _ = jax.lax.scan(record, carry, jnp.arange(T))
        return EpisodeReplayState(storage.add(state.steps, steps), state.time + T, start, starts, lengths, count)

    def sample(state: EpisodeReplayState, key: Array, batch: int) -> EpisodeBatch:
        # Usable: completed (in the ring) and wholly in the buffer still. Starts grow with the
        # episode number, so an env's usable episodes are its most recent ``count`` ones: in slot
        # order a range of the ring, perhaps wrapped. The k-th usable episode (env-major, then slot
        # order) is found by arithmetic, not by a cumulative sum over all E × C slots.
        slots = jnp.arange(capacity)[None, :]
        usable = (slots < state.episodes[:, None]) & (state.episode_start >= state.time - capacity)
        count = usable.sum(axis=1, dtype=jnp.int32)  # (E,)
        ends = jnp.cumsum(count)  # usable episodes of envs 0..e
        total = ends[-1]
        u = jax.random.uniform(key, (batch,)) * total.astype(jnp.float32)
        k = jnp.clip(jnp.floor(u).astype(jnp.int32), 0, jnp.maximum(total - 1, 0))
        env = jnp.minimum(jnp.searchsorted(ends, k, side="right"), E - 1)
        in_env = count[env]
        k = k - (ends[env] - in_env)  # rank among the env's usable episodes
        first = (state.episodes[env] - in_env) % capacity  # slot of its oldest usable episode
        wrapped = jnp.maximum(first + in_env - capacity, 0)  # usable slots 0, 1, ... after a wrap
        slot = jnp.where(k < wrapped, k, first + k - wrapped)
        start, length = state.episode_start[env, slot], state.episode_length[env, slot]
        positions = (start[:, None] + jnp.arange(W)[None, :]) % capacity  # (B, W)
        window = jax.tree.map(lambda x: x[env[:, None], positions], state.steps.experience)
        at_end = (jnp.arange(W)[None, :] == length[:, None]).reshape(batch, W)
        last = jnp.maximum(length - 1, 0)

        def with_final(obs, final):
            final_at_end = final[jnp.arange(batch), last]  # (B, ...)
            mask = at_end.reshape(at_end.shape + (1,) * (obs.ndim - 2))
            return jnp.where(mask, final_at_end[:, None], obs)

        obs = jax.tree.map(with_final, window.obs, window.final_obs) if window.final_obs is not None else window.obs
        valid = jnp.arange(L)[None, :] < length[:, None]
        return EpisodeBatch(
            obs,
            window.action[:, :L],
            jnp.where(valid, window.reward[:, :L], 0.0),
            window.terminated[:, :L] & valid,
            window.truncated[:, :L] & valid,
            valid,
        )

    return Replay(
        init=init,
        add=add,
        sample=lambda state, key: sample(state, key, config.batch_size),
        sample_scoring=lambda state, key: sample(state, key, config.scoring_batch),
        fence="barrier",  # the agent state of a recurrent learner is large for its batches
    )
