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

Only a truncated episode's final observation is ever read, so the steps are stored without one
(it would double the buffer: 12 of the 24.6 GB of a paper-scale SMAX cell's 8 seeds) and a
second, small ring per env keeps the final observations of the last ``R = C // L + 1`` truncated
episodes (``C`` steps per env): a time limit ends an episode after ``L`` steps, so no more than
``C // L`` truncated episodes fit in the buffer at once. An env that truncates earlier may
overwrite the final observation of an episode still in the buffer; that episode is then no longer
sampled (never one with a wrong final observation).
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
        holds the final observation of a truncated episode (the state it ended in; after a
        termination it is some other stored observation, never bootstrapped from); later positions
        are padding. ``W = L`` for an env that never truncates (no final observation is needed).
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
    steps: Any  # flashbax TrajectoryBufferState, experience leaves (E, C, ...); Step.final_obs None
    time: Array  # int32: steps written per env so far
    current_start: Array  # (E,) int32: where the running episode of each env started
    episode_start: Array  # (E, C) int32 ring of completed episodes' starts
    episode_length: Array  # (E, C) int32
    episodes: Array  # (E,) int32 completed episodes so far
    final_obs: Any  # pytree of (E, R, ...): final observations of the last R truncated episodes
    episode_final: Array | None  # (E, C) int32: the truncation number of each completed episode (-1: terminated)
    truncations: Array | None  # (E,) int32 truncated episodes so far
    # the last three are None for an env that gives no final observation (nothing to keep)


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
    R = capacity // L + 1  # final observations kept per env (see the module docstring)
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
        keep = example.final_obs is not None
        finals = jax.tree.map(lambda x: jnp.zeros((E, R) + x.shape, x.dtype), example.final_obs)  # None stays None
        return EpisodeReplayState(
            storage.init(example._replace(final_obs=None)),
            scalar,
            jnp.zeros(E, jnp.int32),
            zeros,
            zeros,
            zeros[:, 0],
            finals,
            zeros - 1 if keep else None,
            zeros[:, 0] if keep else None,
        )

    def add(state: EpisodeReplayState, steps: Step) -> EpisodeReplayState:
        done = steps.terminated | steps.truncated  # (E, T)
        keep_final = state.final_obs is not None  # Step.final_obs is None exactly when the env gives none
        rows = jnp.arange(E)

        def record(carry, t):
            start, starts, lengths, count, finals, final_of, truncs = carry
            now = state.time + t
            ended = done[:, t]
            slot = count % capacity
            starts = starts.at[rows, slot].set(jnp.where(ended, start, starts[rows, slot]))
            lengths = lengths.at[rows, slot].set(jnp.where(ended, now - start + 1, lengths[rows, slot]))
            if keep_final:
                truncated = steps.truncated[:, t]
                number = jnp.where(truncated, truncs, -1)  # the episode's truncation number, -1: terminated
                final_of = final_of.at[rows, slot].set(jnp.where(ended, number, final_of[rows, slot]))
                ring = truncs % R

                def store(kept, new):  # (E, R, ...), (E, T, ...)
                    mask = truncated.reshape((E,) + (1,) * (new.ndim - 2))
                    return kept.at[rows, ring].set(jnp.where(mask, new[:, t], kept[rows, ring]))

                finals = jax.tree.map(store, finals, steps.final_obs)
                truncs = truncs + truncated
            start = jnp.where(ended, now + 1, start)
            return (start, starts, lengths, count + ended, finals, final_of, truncs), None

        T = done.shape[1]
        carry = (
            state.current_start,
            state.episode_start,
            state.episode_length,
            state.episodes,
            state.final_obs,
            state.episode_final,
            state.truncations,
        )
        (start, starts, lengths, count, finals, final_of, truncs), _ = jax.lax.scan(record, carry, jnp.arange(T))
        stored = storage.add(state.steps, steps._replace(final_obs=None))
        return EpisodeReplayState(stored, state.time + T, start, starts, lengths, count, finals, final_of, truncs)

    def sample(state: EpisodeReplayState, key: Array, batch: int) -> EpisodeBatch:
        # Usable: completed (in the ring), wholly in the buffer still, and newer than every
        # truncated episode whose final observation was overwritten (none where truncations come
        # at the time limit). Starts grow with the episode number, so an env's usable episodes are
        # its most recent ``count`` ones: in slot order a range of the ring, perhaps wrapped. The
        # k-th usable episode (env-major, then slot order) is found by arithmetic, not by a
        # cumulative sum over all E × C slots.
        slots = jnp.arange(capacity)[None, :]
        completed = slots < state.episodes[:, None]
        usable = completed & (state.episode_start >= state.time - capacity)
        if state.final_obs is not None:
            lost = completed & (state.episode_final >= 0) & (state.truncations[:, None] - state.episode_final > R)
            usable &= state.episode_start > jnp.max(jnp.where(lost, state.episode_start, -1), axis=1, keepdims=True)
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
        obs = window.obs
        if state.final_obs is not None:  # position ``length``: the kept final observation
            at_end = (jnp.arange(W)[None, :] == length[:, None]).reshape(batch, W)
            final_slot = jnp.maximum(state.episode_final[env, slot], 0) % R  # terminated: any (masked by the learner)

            def with_final(obs, finals):
                mask = at_end.reshape(at_end.shape + (1,) * (obs.ndim - 2))
                return jnp.where(mask, finals[env, final_slot][:, None], obs)

            obs = jax.tree.map(with_final, obs, state.final_obs)
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
