"""The one off-policy training loop shared by DQN, DrQ(ε) and SAC.

A run, per seed, is::

    warm-up: ``warmup_steps`` env steps with uniform random actions into the replay buffer
    repeat n_periods times:                                  (lax.scan, inside one jit)
        repeat F / u times:                                  (one *iteration*)
            k vector env steps (num_envs envs each) -> replay buffer
            u updates, each on a fresh batch sampled from the buffer
        diagnostics on a scoring batch (256 from the buffer)
        the agent's intervention (unconditional, gated by a mask inside)
    greedy evaluation episodes after every chunk of ``eval_every`` periods

``u / (k · num_envs)`` is the replay ratio exactly (0.25: one update every 4 env steps; 2: two
updates per env step), so after N learning env steps exactly ``N · replay_ratio`` updates have
been made. Seeds are ``vmap``-ed over the whole chunk function; the host calls it once per chunk
(to show progress and save a checkpoint) and only stores the stacked metrics it returns.

What is stored and what a batch is belongs to the agent (:attr:`Agent.replay`, a
:class:`Replay`); the loop only hands it every vector step as a :class:`Step` and asks for batches,
so a recurrent learner with a replay of whole episodes reuses the schedule, the replay-ratio
bookkeeping, the periods, diagnostics, interventions and evaluation as they are (a recurrent
policy's memory is carried per env and restarted at episode ends, :attr:`Agent.init_memory`).
The default, :func:`transition_replay`, is a flashbax trajectory buffer holding, per parallel
environment, the time series of ``(obs, action, reward, terminated, truncated, final_obs)``;
sampled sequences of length ``n + 1`` give n-step transitions (:func:`n_step_targets`). An
episode end cuts the n-step sum; after a *termination* nothing is bootstrapped (discount 0),
after a *truncation* (time limit) the target bootstraps from the episode's final observation with
discount ``γ^k`` (k = steps summed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from plastix.envs.base import Env, EnvSpec
from plastix.envs.tasks import TaskSchedule
from plastix.interventions import Context, Intervention, TrainState
from plastix.interventions.base import changed_elements, tallies
from plastix.jit import jit_program, xla_cpu_pool_threads
from plastix.metrics import Diagnostics, DiagnosticsConfig, diagnose, summarize
from plastix.metrics.neurons import mean_abs
from plastix.nn.topology import Topology, capture


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Settings of the off-policy loop (per seed).

    Attributes:
      env_steps: environment steps of the learning phase (after warm-up), per seed.
      num_envs: parallel environments per seed (one vector step = ``num_envs`` env steps).
      replay_ratio: gradient updates per environment step; fractional (0.25) or above 1 (2).
      warmup_steps: env steps of uniform random actions that fill the buffer before learning.
      buffer_size: replay capacity in transitions (split evenly over the parallel envs).
      batch_size: transitions per update.
      n_step: n of the n-step return (1 = one-step TD).
      gamma: discount factor.
      period: ``F``, updates between two diagnostics + intervention points.
      eval_every: periods per chunk; greedy evaluation and checkpoints happen after each chunk.
      eval_envs: parallel evaluation episodes.
      eval_steps: steps per evaluation episode (0: the env's time limit); an episode not done by
        then counts its partial return.
      scoring_batch: transitions sampled from the buffer to score neurons.
      diagnostics: compute and log neuron diagnostics after every period.
      tasks: a task schedule ``((task, env steps), ...)`` over the env's tasks (``Env.tasks``),
        whose env steps add up to ``env_steps``; empty: task 0 throughout. Every period logs the
        task in use, whether it switched and at which env step (see :class:`TaskSchedule`).
      single_frames: where observations are frame stacks (``EnvSpec.frame_stack``, Atari), store
        only each step's newest frame and rebuild the stacks when sampling (``frame_stack`` × less
        replay memory; the transitions are the same). False: store whole stacks.
    """

    env_steps: int = 100_000
    num_envs: int = 1
    replay_ratio: float = 1.0
    warmup_steps: int = 1_000
    buffer_size: int = 100_000
    batch_size: int = 32
    n_step: int = 1
    gamma: float = 0.99
    period: int = 1_000
    eval_every: int = 10
    eval_envs: int = 8
    eval_steps: int = 0
    scoring_batch: int = 256
    diagnostics: bool = True
    tasks: tuple[tuple[int, int], ...] = ()
    single_frames: bool = True

    def __post_init__(self):
        positive = (
            "env_steps",
            "num_envs",
            "warmup_steps",
            "buffer_size",
            "batch_size",
            "n_step",
            "period",
            "eval_every",
            "eval_envs",
            "scoring_batch",
        )
        for field in positive:
            if getattr(self, field) < 1:
                raise ValueError(f"LoopConfig.{field} must be >= 1, got {getattr(self, field)}")
        if not 0 < self.replay_ratio < float("inf"):  # also refuses NaN
            raise ValueError(f"LoopConfig.replay_ratio must be a finite number > 0, got {self.replay_ratio}")
        k, u = replay_schedule(self.replay_ratio, self.num_envs)
        if u < 1 or k > self.env_steps:
            raise ValueError(
                f"LoopConfig.replay_ratio={self.replay_ratio} with num_envs={self.num_envs} gives no update in "
                f"env_steps={self.env_steps} (resolution 1/10,000 updates per env step)"
            )
        int32_max = 2**31 - 1
        total_steps = self.env_steps + self.warmup_steps
        if total_steps > int32_max or self.env_steps * self.replay_ratio > int32_max:
            raise ValueError(
                f"LoopConfig.env_steps={self.env_steps} (+ warmup_steps, × replay_ratio) overflows the int32 step "
                f"and update counters (at most {int32_max}); split the run into several"
            )
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"LoopConfig.gamma must be in [0, 1], got {self.gamma}")
        if self.eval_steps < 0:
            raise ValueError(f"LoopConfig.eval_steps must be >= 0, got {self.eval_steps}")
        if self.tasks and self.schedule.total_steps != self.env_steps:
            raise ValueError(
                f"LoopConfig.tasks: the segments' env steps add up to {self.schedule.total_steps}, "
                f"but env_steps={self.env_steps}"
            )

    @property
    def schedule(self) -> TaskSchedule:
        """The task schedule (task 0 throughout when ``tasks`` is empty)."""
        return TaskSchedule(self.tasks) if self.tasks else TaskSchedule.single(self.env_steps)


class Transition(NamedTuple):
    """A batch of n-step transitions, what an agent's ``update`` receives.

    Attributes:
      obs: ``(B, *obs_shape)`` observations.
      action: ``(B,)`` int32 or ``(B, action_dim)`` float32.
      reward: ``(B,)`` n-step discounted reward sum.
      discount: ``(B,)`` bootstrap discount: ``gamma**n`` if no episode ended within the n steps, 0 after a
        termination, ``gamma**k`` after a truncation k steps in (``next_obs`` is then its final observation).
      next_obs: ``(B, *obs_shape)`` observation n steps later (bootstrap state).
    """

    obs: Array
    action: Array
    reward: Array
    discount: Array
    next_obs: Array


class Agent(NamedTuple):
    """What the loop needs from an agent (every function pure; ``agent_state`` a pytree).

    Attributes:
      init: ``init(key, obs) -> agent_state`` with ``obs`` one example ``(1, *obs_shape)``.
      act: ``act(key, agent_state, obs, explore_step, greedy) -> actions`` for ``obs`` of shape
        ``(E, *obs_shape)``; ``explore_step`` counts learning env steps (for ε schedules);
        ``greedy`` (a Python bool) selects the evaluation policy.
      update: ``update(key, agent_state, batch) -> (agent_state, {name: scalar})``.
      diagnose: ``diagnose(agent_state, batch) -> {network name: Diagnostics}``.
      intervene: ``intervene(key, agent_state, {network name: Diagnostics} | None, context) -> agent_state``
        with the loop's :class:`~plastix.interventions.Context` (update step, task, task switch).
      needs_scores: whether ``intervene`` reads the diagnostics (then they are computed even
        with ``diagnostics=False``).
      replay: ``replay(loop_config, spec) -> Replay``: how env steps are stored and what a batch
        is (``update`` and ``diagnose`` receive what its ``sample`` returns). ``None``: flat n-step
        :class:`Transition` s (:func:`transition_replay`). An episode replay of a recurrent learner
        goes here; the loop's schedule, replay-ratio bookkeeping, periods and evaluation stay.
      init_memory: ``init_memory(n) -> memory`` for a recurrent policy (e.g. GRU hidden states of
        ``n`` envs); then ``act(..., memory=memory)`` returns ``(actions, memory)``, and the loop
        carries the memory across env steps and re-initializes it where an episode ended.
        ``None``: a feed-forward policy (``act`` returns the actions only).
    """

    init: Callable[[Array, Array], Any]
    act: Callable[..., Array]
    update: Callable[[Array, Any, Any], tuple[Any, dict]]
    diagnose: Callable[[Any, Any], dict[str, Diagnostics]]
    intervene: Callable[[Array, Any, dict[str, Diagnostics] | None, Context], Any]
    needs_scores: bool = False
    replay: Callable[[LoopConfig, EnvSpec], Replay] | None = None
    init_memory: Callable[[int], Any] | None = None

    def policy(self, key: Array, state: Any, obs: Array, step: Array, greedy: bool, memory: Any, done: Array):
        """``(actions, memory)`` for ``obs (E, ...)``: the one place feed-forward and recurrent policies meet.

        ``done`` ``(E,)`` marks envs whose previous step ended an episode: their memory restarts.
        """
        if self.init_memory is None:
            return self.act(key, state, obs, step, greedy), memory
        fresh = self.init_memory(done.shape[0])
        memory = jax.tree.map(lambda f, m: jnp.where(done.reshape((-1,) + (1,) * (m.ndim - 1)), f, m), fresh, memory)
        return self.act(key, state, obs, step, greedy, memory=memory)

    def start_memory(self, n: int) -> Any:
        return () if self.init_memory is None else self.init_memory(n)


REPLAY_FENCES = ("auto", "conditional", "barrier")
"""Allowed values of :attr:`Replay.fence`."""


class Replay(NamedTuple):
    """How the loop stores env steps and what an update's batch is (chosen by the agent).

    Attributes:
      init: ``init(example) -> replay_state`` from one env's :class:`Step` (no batch axes).
      add: ``add(replay_state, steps) -> replay_state`` with ``steps`` a :class:`Step` of arrays
        ``(E, T, ...)``: T consecutive vector steps of the E parallel envs.
      sample: ``sample(replay_state, key) -> batch`` for one update.
      sample_scoring: ``sample_scoring(replay_state, key) -> batch`` of the diagnostics' size.
      fence: how the loop keeps an iteration's buffer write apart from its updates' sampling on
        XLA:CPU, where fusing the two costs copies: ``"conditional"`` runs the updates in a
        conditional (fusion cannot cross it; best for the flat transition replay: ~5 % of a small
        DQN's run time), ``"barrier"`` passes the buffer through ``lax.optimization_barrier``
        (no conditional, whose outputs XLA:CPU copies: every leaf of the agent state, each
        iteration; 10–25 % of the QMIX matrix-game study's chunk time with the episode replay).
        ``"auto"`` (the default): the barrier where XLA:CPU runs one thread, the conditional
        otherwise (DQN at PureJaxRL's settings, 2-core Xeon: with one XLA thread the barrier ran
        8 seeds ~9 % faster and 1 seed alike; with two, the conditional 1 seed ~25 % faster).
    """

    init: Callable[[Any], Any]
    add: Callable[[Any, Any], Any]
    sample: Callable[[Any, Array], Any]
    sample_scoring: Callable[[Any, Array], Any]
    fence: str = "auto"


class Step(NamedTuple):
    """One stored env step (per parallel env).

    ``final_obs`` is the observation the step reached when it ended the episode by truncation
    (``None`` when the env cannot return it, see :attr:`EnvSpec.final_obs`, or never truncates,
    see :attr:`EnvSpec.truncates`).
    """

    obs: Array
    action: Array
    reward: Array
    terminated: Array
    truncated: Array
    final_obs: Array | None


class Carry(NamedTuple):
    """Per-seed state carried from period to period."""

    agent: Any
    buffer: Any
    env_state: Any
    obs: Array  # (num_envs, *obs_shape)
    episode_return: Array  # (num_envs,) running return of the current episodes
    memory: Any  # the policy's memory per env (``()`` for feed-forward agents)
    done: Array  # (num_envs,) bool: the last step ended the env's episode
    key: Array
    env_steps: Array  # int32, learning env steps so far (warm-up excluded)
    updates: Array  # int32, gradient updates so far


def replay_schedule(replay_ratio: float, num_envs: int) -> tuple[int, int]:
    """``(vector_steps, updates)`` per iteration with ``updates / (vector_steps · num_envs) = replay_ratio``.

    Examples: RR 0.25 with 1 env → (4, 1); RR 2 with 1 env → (1, 2); RR 1 with 8 envs → (1, 8).
    """
    ratio = Fraction(str(replay_ratio)).limit_denominator(10_000) * num_envs
    return ratio.denominator, ratio.numerator


def n_step_targets(
    rewards: Array, terminated: Array, truncated: Array, gamma: float
) -> tuple[Array, Array, Array, Array]:
    """n-step discounted reward sums, bootstrap discounts and where to bootstrap from.

    Args:
      rewards: ``(B, n)`` rewards r_t … r_{t+n-1}.
      terminated: ``(B, n)`` the episode terminated at each of those steps.
      truncated: ``(B, n)`` the episode was cut by a time limit at each of those steps.
      gamma: discount.

    Returns:
      ``(returns, discounts, from_final, end)``, each ``(B,)``: ``Σ_k γ^k r_{t+k}`` over the steps
      up to and including the first episode end; the discount of the bootstrap value: ``γ^n`` when
      no episode ended within the n steps, 0 after a termination, ``γ^(k+1)`` after a truncation at
      step k; whether the bootstrap observation is the final observation of a truncated episode
      (else the observation n steps later); and ``k``, the step of the first episode end (or n-1).
    """
    n = rewards.shape[-1]
    done = terminated | truncated
    not_done = 1.0 - done.astype(jnp.float32)
    alive = jnp.cumprod(jnp.concatenate([jnp.ones_like(not_done[..., :1]), not_done[..., :-1]], -1), -1)
    powers = gamma ** jnp.arange(n, dtype=jnp.float32)
    returns = jnp.sum(powers * alive * rewards, -1)
    ended = jnp.any(done, -1)
    end = jnp.where(ended, jnp.argmax(done, -1), n - 1)
    terminal = jnp.take_along_axis(terminated, end[..., None], -1)[..., 0] & ended
    discounts = jnp.where(terminal, 0.0, gamma ** (end + 1).astype(jnp.float32))
    return returns, discounts, ended & ~terminal, end


def n_step_return(rewards: Array, dones: Array, gamma: float) -> tuple[Array, Array]:
    """n-step sums and discounts when every episode end is a termination (no bootstrap after it)."""
    returns, discounts, _, _ = n_step_targets(rewards, dones, jnp.zeros_like(dones), gamma)
    return returns, discounts


def diagnose_state(
    intervention: Intervention,
    topology: Topology,
    apply_fn: Callable,
    state: TrainState,
    inputs: Any,
    loss_fn: Callable[[Any], Array],
    config: DiagnosticsConfig,
    valid: Array | None = None,
) -> Diagnostics:
    """:func:`~plastix.metrics.diagnose` of one network's train state under its intervention: the
    topology as the intervention's forward pass has it, the state's last update and trainable mask.

    Args:
      intervention: the network's intervention (``apply_fn`` already goes through its ``forward``).
      topology: the network's own neuron layers.
      apply_fn: ``apply_fn(variables, inputs, **kwargs)``.
      state: the network's :class:`~plastix.interventions.TrainState`.
      inputs: the scoring batch.
      loss_fn: ``loss_fn(output) -> scalar`` on that batch.
      config: thresholds.
      valid: sample mask for padded episodes (see ``diagnose``).
    """
    return diagnose(
        intervention.extend_topology(topology),
        apply_fn,
        state.params,
        inputs,
        loss_fn,
        config,
        updates=state.last_update,
        valid=valid,
        trainable=state.trainable,
    )


def apply_update(
    intervention: Intervention,
    topology: Topology,
    apply_fn: Callable,
    state: TrainState,
    grads: Any,
    key: Array,
    inputs: tuple,
    valid: Array | None = None,
) -> TrainState:
    """One optimizer step of a network, then its intervention's per-update hook.

    The hook may call ``activity()``: ``{layer name: E|h_i| (N,)}`` of ``inputs`` (the batch just
    trained on; ``valid`` masks padded samples) at the parameters before the step. Hooks that do not
    call it cost nothing.

    Args:
      intervention: the network's intervention.
      topology: the network's own neuron layers.
      apply_fn: ``apply_fn(variables, *inputs, **kwargs)`` (through the intervention's ``forward``).
      state: the train state the gradient was taken at.
      grads: the gradient.
      key: PRNG key for the hook.
      inputs: the batch as ``apply_fn``'s positional inputs.
      valid: sample mask (see :func:`~plastix.metrics.diagnose`).
    """

    def activity() -> dict[str, Array]:
        _, _, h = capture(apply_fn, intervention.extend_topology(topology), activations=True)(state.params, *inputs)
        return {name: mean_abs(value, valid) for name, value in h.items()}

    return intervention.on_update(key, state.apply_gradients(grads), activity)


def linear_epsilon(config: Any, step: Array) -> Array:
    """ε after ``step`` learning env steps: linear from ``config.epsilon_start`` to ``config.epsilon_end``
    over ``config.epsilon_decay_steps`` (any config with those fields: DQN, the MARL learner)."""
    frac = jnp.clip(step / config.epsilon_decay_steps, 0.0, 1.0)
    return config.epsilon_start + frac * (config.epsilon_end - config.epsilon_start)


def random_actions(key: Array, spec: EnvSpec, n: int, obs: Any = None) -> Array:
    """``n`` uniform random actions: ``(n,)`` int32 or ``(n, action_dim)`` float32; for a
    multi-agent env ``(n, agents)`` int32, uniform over each agent's available actions (``obs.avail``)."""
    if spec.agents:
        logits = jnp.where(obs.avail, 0.0, -jnp.inf)
        return jax.random.categorical(key, logits).astype(jnp.int32)
    if spec.discrete:
        return uniform_below(jax.random.bits(key, (n,)), jnp.int32(spec.num_actions))
    return jax.random.uniform(key, (n, spec.action_dim), minval=spec.action_low, maxval=spec.action_high)


class Layout(NamedTuple):
    """How a run splits into iterations, periods and chunks (all static)."""

    vector_steps: int  # per iteration
    updates: int  # per iteration
    iterations: int  # per period
    periods: int  # per chunk
    chunks: int
    warmup_vector_steps: int

    @property
    def env_steps_per_period(self) -> int:
        return self.iterations * self.vector_steps

    @property
    def total_periods(self) -> int:
        return self.periods * self.chunks


def layout(config: LoopConfig) -> Layout:
    """Check that the config splits evenly and return the split.

    Raises:
      ValueError: naming the fields to change when it does not.
    """
    k, u = replay_schedule(config.replay_ratio, config.num_envs)
    if config.period % u:
        raise ValueError(
            f"LoopConfig.period ({config.period}) must be a multiple of the {u} updates per iteration that "
            f"replay_ratio={config.replay_ratio} with num_envs={config.num_envs} needs"
        )
    iterations = config.period // u
    steps_per_period = iterations * k * config.num_envs
    if config.env_steps % steps_per_period:
        raise ValueError(
            f"LoopConfig.env_steps ({config.env_steps}) must be a multiple of the {steps_per_period} env steps "
            f"of one period (period={config.period} updates at replay_ratio={config.replay_ratio})"
        )
    total = config.env_steps // steps_per_period
    chunk = max(d for d in range(1, min(total, config.eval_every) + 1) if total % d == 0)
    warmup = math.ceil(config.warmup_steps / config.num_envs)
    capacity = config.buffer_size // config.num_envs
    if warmup < config.n_step + 1:
        raise ValueError(f"LoopConfig.warmup_steps must give at least n_step + 1 = {config.n_step + 1} steps per env")
    if capacity < max(warmup, k, config.n_step + 1):
        raise ValueError(
            f"LoopConfig.buffer_size ({config.buffer_size}) must hold the warm-up: at least "
            f"{max(warmup, k, config.n_step + 1) * config.num_envs} transitions"
        )
    return Layout(k, u, iterations, chunk, total // chunk, warmup)


class Train(NamedTuple):
    """The compiled pieces of a run (see :func:`make_train`).

    Attributes:
      init: ``init(keys (S, 2)) -> Carry`` for S seeds: networks, buffer, env, warm-up done.
      run_chunk: ``run_chunk(carry) -> (carry, period_metrics, eval_metrics)``; period metrics
        are ``{name: (S, periods)}``, eval metrics ``{name: (S,)}``.
      layout: the static split of the run.
      init_single / run_chunk_single: the same functions for one seed, neither jitted nor vmapped.
      evaluate: ``evaluate(agent_state, key) -> {eval_return, ...}`` for one seed (greedy episodes).
      scoring_batch: ``scoring_batch(buffer_state, key) -> batch`` of ``scoring_batch`` samples (the
        agent's replay decides the batch type; :class:`Transition` by default).
      host_env: the environment keeps its state on the host (Atari): seeds must be vmapped, and a
        restored carry needs fresh ``env_state`` / ``obs`` (see :mod:`plastix.envs.atari`).
    """

    init: Callable[[Array], Carry]
    run_chunk: Callable[[Carry], tuple[Carry, dict, dict]]
    layout: Layout
    init_single: Callable[[Array], Carry]
    run_chunk_single: Callable[[Carry], tuple[Carry, dict, dict]]
    evaluate: Callable[[Any, Array], dict]
    scoring_batch: Callable[[Any, Array], Transition]
    host_env: bool = False


def rebuild_stacks(frames: Array, ended: Array, k: int) -> Array:
    """Frame stacks from single frames, as an env that zero-fills its stack at reset returns them.

    Args:
      frames: ``(B, L, *frame)`` consecutive frames of one env per row (the newest frame of each
        stored observation).
      ended: ``(B, L)`` step ``t`` ended the episode (terminated or truncated): frame ``t + 1`` is
        the first frame of a new episode.
      k: frames per stack.

    Returns:
      ``(B, L - k + 1, *frame, k)``: the stack of each position ``t ≥ k - 1``, newest frame last;
      frames from before the episode that ``t`` belongs to are zero.
    """
    length = frames.shape[1]
    before = jnp.cumsum(ended.astype(jnp.int32), axis=1)  # episode ends at or before each step
    before = jnp.concatenate([jnp.zeros_like(before[:, :1]), before], axis=1)  # ... strictly before
    newest = jnp.arange(k - 1, length)
    stack = []
    for age in range(k - 1, -1, -1):  # oldest first: channel k - 1 is the newest frame
        source = newest - age
        # same episode iff no episode ended at steps source .. newest - 1
        same = before[:, newest] == before[:, source]
        frame = frames[:, source]
        stack.append(jnp.where(same.reshape(same.shape + (1,) * (frame.ndim - 2)), frame, jnp.zeros_like(frame)))
    return jnp.stack(stack, axis=-1)


def unit_interval(bits: Array) -> Array:
    """Uniform ``float32`` in ``[0, 1)`` (multiples of ``2**-24``) from uniform ``uint32`` ``bits``."""
    return (bits >> 8).astype(jnp.float32) * (2.0**-24)


def uniform_below(bits: Array, n: Array) -> Array:
    """Integers in ``[0, n)`` from uniform ``uint32`` ``bits`` (any shape; ``n`` a positive int32
    broadcastable to it), as ``int32``.

    ``bits mod n``: a value's probability is off by at most ``n / 2**32`` relative (``2e-4`` for a
    million), which lets a whole batch's draws come from one threefry call (``jax.random.randint``
    makes three per draw: a split and two bit draws).
    """
    return (bits % n.astype(jnp.uint32)).astype(jnp.int32)


def sample_sequences(state: Any, key: Array, batch_size: int, length: int) -> Any:
    """``batch_size`` windows of ``length`` consecutive steps from a flashbax trajectory buffer state.

    Each window is drawn uniformly among all (env, start) pairs whose steps are all stored and that
    do not cross the write position (flashbax's own sampling with ``period=1``), from one random
    call (see :func:`uniform_below`; flashbax's sampler makes eight).

    Args:
      state: ``TrajectoryBufferState`` with experience leaves ``(E, C, ...)``, holding at least
        ``length`` steps per env.
      key: PRNG key.
      batch_size: windows B.
      length: steps per window L.

    Returns:
      The experience pytree with leaves ``(B, L, ...)``.
    """
    envs, capacity = jax.tree.leaves(state.experience)[0].shape[:2]
    stored = jnp.where(state.is_full, capacity, state.current_index)
    oldest = jnp.where(state.is_full, state.current_index, 0)
    starts = jnp.maximum(stored - length + 1, 1)  # valid window starts per env
    bits = jax.random.bits(key, (2, batch_size))
    env = uniform_below(bits[0], jnp.int32(envs))
    start = oldest + uniform_below(bits[1], starts)
    time = (start[:, None] + jnp.arange(length)) % capacity
    return jax.tree.map(lambda x: x[env[:, None], time], state.experience)


def transition_replay(config: LoopConfig, spec: EnvSpec) -> Replay:
    """Flat n-step :class:`Transition` s from a flashbax trajectory buffer (DQN, DrQ(ε), SAC).

    Per parallel env the buffer holds the time series of :class:`Step` s; a sampled sequence of
    ``n + 1`` steps gives one transition through :func:`n_step_targets`. With frame-stacked
    observations and ``config.single_frames`` the buffer holds each step's newest frame only and a
    sequence reaches ``k - 1`` steps further back, from which :func:`rebuild_stacks` rebuilds the
    ``n + 1`` stacks (episode starts zero-filled like the env's).
    """
    import flashbax

    n = config.n_step
    E = config.num_envs
    capacity = config.buffer_size // E
    k = spec.frame_stack if config.single_frames and spec.frame_stack > 1 else 1
    length = n + k

    buffer = flashbax.make_trajectory_buffer(  # storage only: sequences are drawn by sample_sequences
        add_batch_size=E,
        sample_batch_size=config.batch_size,
        sample_sequence_length=length,
        period=1,
        min_length_time_axis=length,
        max_length_time_axis=capacity,
    )

    def newest_frame(steps: Step) -> Step:
        return steps if k == 1 else steps._replace(obs=steps.obs[..., -1])

    def to_transition(seq: Step) -> Transition:
        if k > 1:
            stacks = rebuild_stacks(seq.obs, seq.terminated | seq.truncated, k)
            seq = jax.tree.map(lambda x: x[:, k - 1 :], seq._replace(obs=None))._replace(obs=stacks)
        if seq.final_obs is None:  # no final observation from this env: a truncation ends like a termination
            terminated, truncated = seq.terminated[:, :n] | seq.truncated[:, :n], jnp.zeros_like(seq.truncated[:, :n])
        else:
            terminated, truncated = seq.terminated[:, :n], seq.truncated[:, :n]
        rewards, discounts, from_final, end = n_step_targets(seq.reward[:, :n], terminated, truncated, config.gamma)
        next_obs = seq.obs[:, n]
        if seq.final_obs is not None:
            final = jnp.take_along_axis(seq.final_obs, end.reshape((-1,) + (1,) * (seq.final_obs.ndim - 1)), 1)[:, 0]
            next_obs = jnp.where(from_final.reshape((-1,) + (1,) * (next_obs.ndim - 1)), final, next_obs)
        return Transition(seq.obs[:, 0], seq.action[:, 0], rewards, discounts, next_obs)

    return Replay(
        init=lambda example: buffer.init(newest_frame(example)),
        add=lambda state, steps: buffer.add(state, newest_frame(steps)),
        sample=lambda state, key: to_transition(sample_sequences(state, key, config.batch_size, length)),
        sample_scoring=lambda state, key: to_transition(sample_sequences(state, key, config.scoring_batch, length)),
    )


def make_train(config: LoopConfig, env: Env, agent: Agent, eval_env: Env | None = None) -> Train:
    """Build the jitted, seed-vmapped functions of a run of ``agent`` on ``env``.

    Args:
      config: the loop.
      env: the training environment.
      agent: the learner.
      eval_env: environment of the greedy evaluation episodes (default ``env``); required, as a
        separate object, for environments with host state (Atari).
    """
    if eval_env is None:
        if env.host_state:
            raise ValueError(
                f"{env.spec.name} keeps its state on the host: pass make_train(..., eval_env=...) "
                "a separate Env object for evaluation (make_env(name, evaluation=True))"
            )
        eval_env = env
    elif eval_env.spec.obs_shape != env.spec.obs_shape or eval_env.spec.num_actions != env.spec.num_actions:
        raise ValueError(f"eval_env {eval_env.spec.name} does not match env {env.spec.name} (observations / actions)")

    lay = layout(config)
    spec = env.spec
    E = config.num_envs
    replay = (agent.replay or transition_replay)(config, spec)
    if replay.fence not in REPLAY_FENCES:
        allowed = ", ".join(map(repr, REPLAY_FENCES))
        raise ValueError(f"Replay.fence: got {replay.fence!r}, allowed values are {allowed}")
    fence = replay.fence
    if fence == "auto":
        fence = "barrier" if xla_cpu_pool_threads() == 1 else "conditional"
    eval_steps = config.eval_steps or spec.max_episode_steps
    keep_final = spec.final_obs and spec.truncates  # final observations are only bootstrapped from after a truncation
    schedule = config.schedule
    schedule.check(env.num_tasks, spec.name)
    switch_steps = jnp.asarray(schedule.switch_steps or (-1,), jnp.int32)

    def vector_env(env: Env, task: Array):
        """``(reset, step)`` of ``env`` at ``task``, vmapped over parallel envs."""
        reset, step = env.at_task(task)
        return jax.vmap(reset), jax.vmap(step)

    def env_step(carry: Carry, keys: Array, explore: bool):
        """One vector step with ``keys (1 + E, key)`` (the policy's, then one per env); returns the
        stored steps and (completed return sum, completed count)."""
        k_act, k_envs = keys[0], keys[1:]
        if explore:
            actions, memory = agent.policy(
                k_act, carry.agent, carry.obs, carry.env_steps, False, carry.memory, carry.done
            )
        else:
            actions, memory = random_actions(k_act, spec, E, carry.obs), carry.memory
        _, vstep = vector_env(env, schedule.task_at(carry.env_steps))
        ts = vstep(k_envs, carry.env_state, actions)
        done = ts.done
        ret = carry.episode_return + ts.reward
        finished = (jnp.sum(jnp.where(done, ret, 0.0)), jnp.sum(done))
        step = Step(carry.obs, actions, ts.reward, ts.terminated, ts.truncated, ts.final_obs if keep_final else None)
        carry = carry._replace(
            env_state=ts.state,
            obs=ts.obs,
            episode_return=jnp.where(done, 0.0, ret),
            memory=memory,
            done=done,
            env_steps=carry.env_steps + (E if explore else 0),
        )
        return carry, (step, finished)

    def collect(carry: Carry, keys: Array, explore: bool):
        """``len(keys)`` vector steps (``keys (length, 1 + E, key)``) added to the buffer; returns
        (carry, (return sum, episodes))."""
        carry, (steps, finished) = jax.lax.scan(lambda c, k: env_step(c, k, explore), carry, keys)
        steps = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), steps)  # (E, length, ...)
        carry = carry._replace(buffer=replay.add(carry.buffer, steps))
        return carry, jax.tree.map(jnp.sum, finished)

    def init_single(key: Array) -> Carry:
        k_agent, k_env, k_warm, k_next = jax.random.split(key, 4)
        vreset, _ = vector_env(env, schedule.task_at(jnp.zeros((), jnp.int32)))
        obs, env_state = vreset(jax.random.split(k_env, E))
        first = jax.tree.map(lambda x: x[0], obs)
        no = jnp.zeros((), bool)
        example = Step(
            first,
            random_actions(k_warm, spec, E, obs)[0],
            jnp.zeros((), jnp.float32),
            no,
            no,
            first if keep_final else None,
        )
        carry = Carry(
            agent=agent.init(k_agent, jax.tree.map(lambda x: x[:1], obs)),
            buffer=replay.init(example),
            env_state=env_state,
            obs=obs,
            episode_return=jnp.zeros(E, jnp.float32),
            memory=agent.start_memory(E),
            done=jnp.zeros(E, bool),
            key=k_next,
            env_steps=jnp.zeros((), jnp.int32),
            updates=jnp.zeros((), jnp.int32),
        )
        warm_keys = jax.random.split(k_warm, (lay.warmup_vector_steps, 1 + E))
        carry, _ = collect(carry, warm_keys, explore=False)
        return carry

    def iteration(carry: Carry, xs: tuple[Array, Array]):
        key, index = xs  # index: the iteration's number in the period, unbatched under the seed vmap
        # Every key of the iteration (the policy's, each env's, each update's) from one split: one
        # threefry call (a kernel on an accelerator, a small loop on XLA:CPU) instead of one per step.
        keys = jax.random.split(key, lay.vector_steps * (1 + E) + 2 * lay.updates)
        step_keys = keys[: lay.vector_steps * (1 + E)].reshape(lay.vector_steps, 1 + E, *key.shape)
        update_keys = keys[lay.vector_steps * (1 + E) :].reshape(lay.updates, 2, *key.shape)
        carry, finished = collect(carry, step_keys, explore=True)

        def updates(agent_state, buffer=carry.buffer):
            def one_update(agent_state, k):
                k_sample, k_agent = k
                return agent.update(k_agent, agent_state, replay.sample(buffer, k_sample))

            return jax.lax.scan(one_update, agent_state, update_keys)

        # XLA:CPU fuses the buffer write just made into the updates' sampling gathers and then
        # copies the replay's columns each iteration; ``Replay.fence`` says how to keep them apart.
        if fence == "barrier":  # the updates are traced once; only the buffer differs by platform
            buffer = jax.lax.platform_dependent(carry.buffer, cpu=jax.lax.optimization_barrier, default=lambda b: b)
            agent_state, stats = updates(carry.agent, buffer)
        else:

            def updates_apart(agent_state):
                # A conditional is a computation of its own that fusion cannot cross; its predicate
                # (always true) is unbatched under the seed vmap, so it stays a conditional.
                skipped = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(updates, agent_state))
                return jax.lax.cond(index >= 0, updates, lambda _: skipped, agent_state)

            agent_state, stats = jax.lax.platform_dependent(carry.agent, cpu=updates_apart, default=updates)
        carry = carry._replace(agent=agent_state, updates=carry.updates + lay.updates)
        return carry, (finished, jax.tree.map(jnp.mean, stats))

    def period(carry: Carry, _):
        key, k_iter, k_score, k_int = jax.random.split(carry.key, 4)
        carry = carry._replace(key=key)
        start = carry.env_steps
        xs = (jax.random.split(k_iter, lay.iterations), jnp.arange(lay.iterations))
        carry, (finished, stats) = jax.lax.scan(iteration, carry, xs)
        returns, episodes = jax.tree.map(jnp.sum, finished)
        metrics = {k: jnp.mean(v) for k, v in stats.items()}
        metrics.update(
            env_steps=carry.env_steps,
            updates=carry.updates,
            episodes=episodes,
            train_return=jnp.where(episodes > 0, returns / jnp.maximum(episodes, 1), jnp.nan),
        )
        # a switch at env step s means step s uses the new task; one at the period's last step
        # boundary belongs to this period, so an intervention at its end sees it before new data
        task = schedule.task_at(carry.env_steps)
        in_period = (switch_steps > start) & (switch_steps <= carry.env_steps)
        switched = jnp.any(in_period)
        metrics.update(
            task=task, task_switched=switched, task_switch_step=jnp.max(jnp.where(in_period, switch_steps, -1))
        )
        if config.diagnostics or agent.needs_scores:
            diags = agent.diagnose(carry.agent, replay.sample_scoring(carry.buffer, k_score))
            if config.diagnostics:
                for net, diag in diags.items():
                    metrics.update({f"{net}/{k}": v for k, v in summarize(diag).items()})
        else:
            diags = None
        context = Context.at(carry.updates, task, switched)
        intervened = agent.intervene(k_int, carry.agent, diags, context)
        # what the interventions did, so that a method that never acts reads as 0, not as "no effect"
        metrics["intervention/changed_elements"] = changed_elements(carry.agent, intervened)
        metrics.update({f"intervention/{name}": count for name, count in tallies(intervened).items()})
        carry = carry._replace(agent=intervened)
        return carry, metrics

    def evaluate_task(agent_state, key: Array, task: Array) -> dict:
        """Greedy episodes on ``eval_envs`` fresh environments of ``task``: return of each first episode."""
        eval_reset, eval_step = vector_env(eval_env, task)
        k_reset, k_run = jax.random.split(key)
        obs, env_state = eval_reset(jax.random.split(k_reset, config.eval_envs))
        n = config.eval_envs
        zeros = jnp.zeros(n, jnp.float32)

        def step(c, k):
            obs, env_state, ret, running, memory, done = c
            k_act, k_env = jax.random.split(k)
            actions, memory = agent.policy(k_act, agent_state, obs, jnp.zeros((), jnp.int32), True, memory, done)
            ts = eval_step(jax.random.split(k_env, n), env_state, actions)
            ret = ret + jnp.where(running, ts.reward, 0.0)
            return (ts.obs, ts.state, ret, running & ~ts.done, memory, ts.done), None

        start = (obs, env_state, zeros, jnp.ones(n, bool), agent.start_memory(n), jnp.zeros(n, bool))
        (_, _, ret, running, _, _), _ = jax.lax.scan(step, start, jax.random.split(k_run, eval_steps))
        return {"eval_return": jnp.mean(ret), "eval_episodes_finished": jnp.mean(~running)}

    def evaluate(agent_state, key: Array, task: Array | int = 0) -> dict:
        """:func:`evaluate_task` on ``task``; with several tasks also ``eval_return/task_k`` for every task k."""
        out = evaluate_task(agent_state, key, jnp.asarray(task, jnp.int32))
        if eval_env.num_tasks > 1:
            every = jax.vmap(lambda k: evaluate_task(agent_state, key, k)["eval_return"])(
                jnp.arange(eval_env.num_tasks, dtype=jnp.int32)
            )
            out.update({f"eval_return/task_{k}": every[k] for k in range(eval_env.num_tasks)})
        return out

    def run_chunk_single(carry: Carry):
        carry, metrics = jax.lax.scan(period, carry, None, length=lay.periods)
        key, k_eval = jax.random.split(carry.key)
        return carry._replace(key=key), metrics, evaluate(carry.agent, k_eval, schedule.task_at(carry.env_steps))

    return Train(
        init=jit_program(jax.vmap(init_single)),
        run_chunk=jit_program(jax.vmap(run_chunk_single)),
        layout=lay,
        init_single=init_single,
        run_chunk_single=run_chunk_single,
        evaluate=evaluate,
        scoring_batch=replay.sample_scoring,
        host_env=env.host_state,
    )
