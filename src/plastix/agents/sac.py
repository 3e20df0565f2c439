"""SAC (Haarnoja et al. 2018): twin critics, tanh-Gaussian actor, learned temperature.

Paper Table 4 defaults: 2×256 MLPs, Adam lr 3e-4, batch 256, Polyak τ = 0.005 every update,
10,000 warm-up steps, ReDo with τ = 0 every 200,000 updates. Both networks (``actor`` and
``critic``) are diagnosed and receive the same intervention.

Losses, with ``a' ~ π(·|s')`` and ``α = exp(log_α)``:
  critic  ``Σ_i mean (Q_i(s, a) − y)²``, ``y = r + d · (min_i Q̄_i(s', a') − α log π(a'|s'))``
  actor   ``mean (α log π(ã|s) − min_i Q_i(s, ã))``, ``ã ~ π(·|s)`` (reparameterized)
  alpha   ``mean (−log_α · (log π(ã|s) + H̄))`` with target entropy ``H̄ = −action_dim``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import Array

from plastix.agents.off_policy import Agent, Transition, apply_update, diagnose_state
from plastix.envs.base import EnvSpec
from plastix.interventions import (
    OptimizerConfig,
    PlasticityConfig,
    TrainState,
    create_train_state,
    make_intervention,
    make_optimizer,
)
from plastix.metrics import DiagnosticsConfig
from plastix.nn import MLP
from plastix.nn.mlp import check_width_fields
from plastix.nn.topology import Topology

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """SAC settings (paper Table 4).

    Attributes:
      hidden: hidden widths of actor and critics.
      width_multiplier: scales every hidden width (paper Table 6: ×0.5, ×0.25).
      optimizer: optimizer of all three learners (Adam, lr 3e-4).
      polyak: target smoothing coefficient (τ in the paper's table).
      init_temperature: initial α.

    The plasticity treatment (for actor and critic alike) and the diagnostics' thresholds (the
    paper reports SAC at τ = 0) are given to :func:`make_sac`, as for every agent.
    """

    hidden: tuple[int, ...] = (256, 256)
    width_multiplier: float = 1.0
    optimizer: OptimizerConfig = OptimizerConfig("adam", 3e-4)
    polyak: float = 0.005
    init_temperature: float = 1.0

    def __post_init__(self):
        if not 0 < self.polyak <= 1:
            raise ValueError(f"SACConfig.polyak must be in (0, 1], got {self.polyak}")
        if self.init_temperature <= 0:
            raise ValueError(f"SACConfig.init_temperature must be > 0, got {self.init_temperature}")
        check_width_fields("SACConfig", "hidden", self.hidden, self.width_multiplier)


class TwinCritic(nn.Module):
    """Two independent Q-MLPs ``q0``, ``q1`` on ``concat(obs, action)``; output ``(batch, 2)``."""

    hidden: Sequence[int] = (256, 256)
    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        q = [MLP(tuple(self.hidden), 1, self.width_multiplier, name=f"q{i}")(x)[:, 0] for i in range(2)]
        return jnp.stack(q, -1)

    def topology(self) -> Topology:
        """Two networks, groups ``q0`` and ``q1``, each with its own output head."""
        single = MLP(tuple(self.hidden), 1, self.width_multiplier, parent=None).topology()
        return Topology.merge(*(single.prefixed(f"q{i}", group=f"q{i}") for i in range(2)))


def squashed_gaussian(key: Array, out: Array, low: float, high: float) -> tuple[Array, Array]:
    """Sample ``a = low + (tanh(u) + 1)/2 · (high − low)``, ``u ~ N(μ, σ)``, and its log-probability.

    Args:
      key: PRNG key.
      out: ``(B, 2·A)`` actor output: means, then raw log-stds (squashed into
        ``[LOG_STD_MIN, LOG_STD_MAX]``).
      low / high: action bounds.

    Returns:
      ``(actions (B, A), log_prob (B,))``.
    """
    mean, raw = jnp.split(out, 2, -1)
    log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(raw) + 1)
    noise = jax.random.normal(key, mean.shape)
    u = mean + jnp.exp(log_std) * noise
    log_prob = jnp.sum(-0.5 * noise**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), -1)
    t = jnp.tanh(u)
    scale = 0.5 * (high - low)
    log_prob -= jnp.sum(jnp.log(scale * (1 - t**2) + 1e-6), -1)
    return low + (t + 1) * scale, log_prob


def deterministic_action(out: Array, low: float, high: float) -> Array:
    """The evaluation action: the squashed mean."""
    mean, _ = jnp.split(out, 2, -1)
    return low + (jnp.tanh(mean) + 1) * 0.5 * (high - low)


def soft_target(q_next: Array, log_prob_next: Array, alpha: Array, reward: Array, discount: Array) -> Array:
    """``y = r + d · (min_i Q̄_i(s', a') − α log π(a'|s'))`` for ``q_next`` of shape ``(B, 2)``."""
    return reward + discount * (jnp.min(q_next, -1) - alpha * log_prob_next)


def temperature_loss(log_alpha: Array, log_prob: Array, target_entropy: float) -> Array:
    """``mean(−log_α · (log π + H̄))`` with ``log π`` treated as a constant."""
    return -jnp.mean(log_alpha * jax.lax.stop_gradient(log_prob + target_entropy))


class SACState(NamedTuple):
    actor: TrainState
    critic: TrainState
    log_alpha: TrainState
    target_critic: Any


def make_sac(
    spec: EnvSpec,
    config: SACConfig,
    period: int = 1,
    *,
    plasticity: PlasticityConfig = PlasticityConfig(),
    diagnostics: DiagnosticsConfig = DiagnosticsConfig(),
) -> tuple[Agent, dict[str, nn.Module], dict[str, Topology]]:
    """SAC as an :class:`~plastix.agents.off_policy.Agent` for a continuous-action ``spec``.

    Args:
      spec: a continuous-action environment.
      config: agent settings.
      period: the loop's ``F``; the intervention's period must be a multiple of it.
      plasticity: the intervention of actor and critic (registry method, trigger), weight decay.
      diagnostics: thresholds of the neuron diagnostics (τ, GraMa τ, κ, stagnation source).

    Returns:
      ``(agent, {"actor": module, "critic": module}, {"actor": topology, "critic": topology})``.
    """
    spec.check_single_agent("SAC")
    if spec.discrete:
        raise ValueError(f"SAC needs continuous actions; {spec.name} has {spec.num_actions} discrete actions")
    plasticity.check_loop_period(period)
    A = spec.action_dim
    low, high = spec.action_low, spec.action_high
    actor = MLP(tuple(config.hidden), 2 * A, config.width_multiplier)
    critic = TwinCritic(tuple(config.hidden), config.width_multiplier)
    topologies = {"actor": actor.topology(), "critic": critic.topology()}
    tx = make_optimizer(plasticity.optimizer(config.optimizer))
    alpha_tx = make_optimizer(config.optimizer)
    target_entropy = -float(A)
    keep_update = diagnostics.stagnation_source == "update"
    obs_dim = math.prod(spec.obs_shape)

    def flat(obs):
        return obs.reshape(obs.shape[0], -1).astype(jnp.float32) * spec.obs_scale

    def init_actor(key):
        return actor.init(key, jnp.zeros((1, obs_dim)))["params"]

    def init_critic(key):
        return critic.init(key, jnp.zeros((1, obs_dim + A)))["params"]

    interventions = {
        "actor": make_intervention(plasticity, topologies["actor"], init_actor),
        "critic": make_intervention(plasticity, topologies["critic"], init_critic),
    }
    actor_apply = interventions["actor"].forward(actor.apply)  # the interventions' forward passes
    critic_apply = interventions["critic"].forward(critic.apply)

    def apply_actor(params, obs):
        return actor_apply({"params": params}, obs)

    def apply_critic(params, x):
        return critic_apply({"params": params}, x)

    def init(key, obs):
        k_actor, k_critic = jax.random.split(key)
        actor_state = create_train_state(interventions["actor"], init_actor(k_actor), tx, keep_update)
        critic_state = create_train_state(interventions["critic"], init_critic(k_critic), tx, keep_update)
        log_alpha = jnp.log(jnp.asarray(config.init_temperature, jnp.float32))
        return SACState(actor_state, critic_state, TrainState.create(log_alpha, alpha_tx), critic_state.params)

    def act(key, state: SACState, obs, step, greedy: bool):
        out = apply_actor(state.actor.params, flat(obs))
        if greedy:
            return deterministic_action(out, low, high)
        return squashed_gaussian(key, out, low, high)[0]

    def critic_loss_fn(q, target):
        """Sum over the twin critics of the mean squared error to the soft target; ``q`` is ``(B, 2)``."""
        return jnp.sum(jnp.mean((q - target[:, None]) ** 2, 0))

    def critic_targets(key, state: SACState, batch: Transition):
        s_next = flat(batch.next_obs)
        a_next, logp_next = squashed_gaussian(key, apply_actor(state.actor.params, s_next), low, high)
        q_next = apply_critic(state.target_critic, jnp.concatenate([s_next, a_next], -1))
        alpha = jnp.exp(state.log_alpha.params)
        return jax.lax.stop_gradient(soft_target(q_next, logp_next, alpha, batch.reward, batch.discount))

    def actor_loss_fn(out, s, critic_params, alpha, key):
        a, logp = squashed_gaussian(key, out, low, high)
        q = apply_critic(critic_params, jnp.concatenate([s, a], -1))
        return jnp.mean(alpha * logp - jnp.min(q, -1)), logp

    def update(key, state: SACState, batch: Transition):
        k_target, k_actor, k_hooks = jax.random.split(key, 3)
        s = flat(batch.obs)
        sa = jnp.concatenate([s, batch.action], -1)
        y = critic_targets(k_target, state, batch)
        c_loss, c_grads = jax.value_and_grad(lambda p: critic_loss_fn(apply_critic(p, sa), y))(state.critic.params)
        critic_state = apply_update(
            interventions["critic"], topologies["critic"], critic_apply, state.critic, c_grads, k_hooks, (sa,)
        )
        alpha = jnp.exp(state.log_alpha.params)
        (a_loss, logp), a_grads = jax.value_and_grad(
            lambda p: actor_loss_fn(apply_actor(p, s), s, critic_state.params, alpha, k_actor), has_aux=True
        )(state.actor.params)
        actor_state = apply_update(
            interventions["actor"], topologies["actor"], actor_apply, state.actor, a_grads, k_hooks, (s,)
        )
        t_loss, t_grad = jax.value_and_grad(temperature_loss)(state.log_alpha.params, logp, target_entropy)
        alpha_state = state.log_alpha.apply_gradients(t_grad)
        target = optax.incremental_update(critic_state.params, state.target_critic, config.polyak)
        metrics = {"loss": c_loss, "actor_loss": a_loss, "alpha": alpha, "entropy": -jnp.mean(logp)}
        return SACState(actor_state, critic_state, alpha_state, target), metrics

    def diagnose_fn(state: SACState, batch: Transition):
        key = jax.random.PRNGKey(0)  # fixed: the scores are a deterministic function of the batch
        s = flat(batch.obs)
        sa = jnp.concatenate([s, batch.action], -1)
        y = critic_targets(key, state, batch)
        alpha = jnp.exp(state.log_alpha.params)
        return {
            "actor": diagnose_state(
                interventions["actor"],
                topologies["actor"],
                actor_apply,
                state.actor,
                s,
                lambda out: actor_loss_fn(out, s, state.critic.params, alpha, key)[0],
                diagnostics,
            ),
            "critic": diagnose_state(
                interventions["critic"],
                topologies["critic"],
                critic_apply,
                state.critic,
                sa,
                lambda q: critic_loss_fn(q, y),
                diagnostics,
            ),
        }

    def intervene(key, state: SACState, diags, context):
        k_actor, k_critic = jax.random.split(key)
        pick = (lambda name: None) if diags is None else (lambda name: diags[name])
        return state._replace(
            actor=interventions["actor"].apply(k_actor, state.actor, pick("actor"), context),
            critic=interventions["critic"].apply(k_critic, state.critic, pick("critic"), context),
        )

    agent = Agent(init, act, update, diagnose_fn, intervene, plasticity.needs_scores)
    return agent, {"actor": actor, "critic": critic}, topologies
