"""One value-factorization learner for VDN, QMIX and QPLEX; the methods differ only in the mixer.

Per agent, PyMARL's recurrent network (:class:`~plastix.nn.recurrent.GRUAgent`: fc → GRU → fc,
parameters shared across agents) reads the agent's observation with its id one-hot and its last
action one-hot appended. Acting is ε-greedy over the *available* actions. Learning uses whole
padded episodes (:func:`~plastix.agents.episode_replay.episode_replay`): the agent network runs
over the ``L + 1`` observations of each episode (``L`` where the env never truncates, so no
final observation is bootstrapped from: a one-step game's targets are its rewards), the mixer
(:mod:`plastix.nn.mixers`) combines the chosen per-agent values into ``Q_tot`` with the global
state, and the loss is the squared TD(λ) error over the valid steps only (padded steps contribute
exactly zero)::

    G_t = r_t + γ (1 − term_t) [V_{t+1} + λ·c_t·(G_{t+1} − V_{t+1})]

with ``V_{t+1}`` the target mixer's value of the double-Q greedy joint action at t+1 and
``c_t = 1`` if step t+1 is in the episode (else the λ-return stops). At the episode's last step a
termination bootstraps nothing and a truncation (time limit) bootstraps from the final observation.
λ = 0 gives 1-step targets.

Diagnostics and interventions see one parameter tree ``{"agent": ..., "mixer": ...}`` whose
topology has two groups, ``agent`` and ``mixer`` (fractions per group and together).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from plastix.agents.episode_replay import EpisodeBatch, episode_replay
from plastix.agents.off_policy import Agent, apply_update, diagnose_state, linear_epsilon
from plastix.envs.base import EnvSpec, MultiAgentObs
from plastix.interventions import (
    OptimizerConfig,
    PlasticityConfig,
    TrainState,
    create_train_state,
    make_intervention,
    make_optimizer,
)
from plastix.jit import when_any
from plastix.metrics import DiagnosticsConfig
from plastix.nn.mixers import QMixer, QPLEXMixer, VDNMixer
from plastix.nn.mlp import _check_widths
from plastix.nn.recurrent import GRUAgent
from plastix.nn.topology import Topology

MIXERS = ("vdn", "qmix", "qplex")
PYMARL2_OPTIMIZER = OptimizerConfig("adam", 1e-3, max_grad_norm=10.0)


@dataclasses.dataclass(frozen=True)
class MARLConfig:
    """Value-factorization settings (defaults: PyMARL2's published QMIX, ``default.yaml`` + ``qmix.yaml``).

    Attributes:
      mixer: ``vdn`` (sum), ``qmix`` (monotonic hypernetwork mixer) or ``qplex`` (duplex dueling).
      hidden: GRU agent width (PyMARL2 ``rnn_hidden_dim``: 64).
      mixing_embed: QMIX mixing hidden units (PyMARL2 ``mixing_embed_dim``: 32).
      hypernet_hidden: QMIX hypernetwork / QPLEX extractor hidden width (PyMARL2 ``hypernet_embed`` /
        ``adv_hypernet_embed``: 64).
      qplex_heads: QPLEX attention heads (PyMARL2 ``num_kernel``: 4).
      width_multiplier: scales every hidden width.
      optimizer: Adam lr 1e-3 with gradient-norm clipping at 10 (PyMARL2 ``qmix.yaml``; older PyMARL:
        RMSProp 5e-4).
      td_lambda: λ of the TD(λ) targets (PyMARL2: 0.6; 0 = 1-step).
      double_q: double-Q targets (PyMARL2: on).
      target_update_period: updates between target copies (PyMARL2: every 200 episodes, which is
        25 updates at its 8 episodes collected per update).
      epsilon_start / epsilon_end / epsilon_decay_steps: ε-greedy, 1.0 → 0.05 over 100,000 env
        steps (PyMARL2).
      epsilon_eval: ε of evaluation episodes (PyMARL: greedy).
    """

    mixer: Literal["vdn", "qmix", "qplex"] = "qmix"
    hidden: int = 64
    mixing_embed: int = 32
    hypernet_hidden: int = 64
    qplex_heads: int = 4
    width_multiplier: float = 1.0
    optimizer: OptimizerConfig = PYMARL2_OPTIMIZER
    td_lambda: float = 0.6
    double_q: bool = True
    target_update_period: int = 25
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 100_000
    epsilon_eval: float = 0.0

    def __post_init__(self):
        if self.mixer not in MIXERS:
            raise ValueError(f"MARLConfig.mixer: got {self.mixer!r}, allowed values are {MIXERS}")
        for field in ("hidden", "mixing_embed", "hypernet_hidden", "qplex_heads", "target_update_period"):
            if getattr(self, field) < 1:
                raise ValueError(f"MARLConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.epsilon_decay_steps < 1:
            raise ValueError(f"MARLConfig.epsilon_decay_steps must be >= 1, got {self.epsilon_decay_steps}")
        if not self.width_multiplier > 0:
            raise ValueError(f"MARLConfig.width_multiplier must be > 0, got {self.width_multiplier}")
        for field in ("td_lambda", "epsilon_start", "epsilon_end", "epsilon_eval"):
            if not 0 <= getattr(self, field) <= 1:
                raise ValueError(f"MARLConfig.{field} must be in [0, 1], got {getattr(self, field)}")


def make_mixer(spec: EnvSpec, config: MARLConfig) -> nn.Module:
    """The mixer of ``config.mixer`` for ``spec``'s agents."""
    n, wm = spec.agents, config.width_multiplier
    if config.mixer == "vdn":
        return VDNMixer(n)
    if config.mixer == "qmix":
        return QMixer(n, config.mixing_embed, config.hypernet_hidden, wm)
    return QPLEXMixer(n, spec.num_actions, config.hypernet_hidden, config.qplex_heads, wm)


class FactorizedQ(nn.Module):
    """Agent network and mixer under one parameter tree (``agent``, ``mixer``).

    ``__call__(inputs, actions, state, avail)``: agent inputs ``(T, B, n, D')``, actions ``(T, B, n)``,
    state ``(T, B, S)``, available actions ``(T, B, n, A)`` → ``Q_tot (T, B)``.
    """

    agent: GRUAgent
    mixer: nn.Module

    def __call__(self, inputs: Array, actions: Array, state: Array, avail: Array) -> Array:
        q, _ = self.agent(inputs)
        return mix(self.mixer, q, actions, state, avail)

    def agent_q(self, inputs: Array, h0: Array | None = None) -> tuple[Array, Array]:
        return self.agent(inputs, h0)

    def mixed(self, q: Array, actions: Array, state: Array, avail: Array) -> Array:
        return mix(self.mixer, q, actions, state, avail)


def mix(mixer: nn.Module, q: Array, actions: Array, state: Array, avail: Array) -> Array:
    """``Q_tot`` of joint ``actions (…, n)`` from per-agent values ``q (…, n, A)``."""
    chosen = jnp.take_along_axis(q, actions[..., None], -1)[..., 0]
    # An agent with no available action (SMAX after a battle's last step: the observation a
    # terminated episode ended in, and the padding after it) gets its largest value: a masked-out
    # step must stay finite, or QPLEX's advantage (Q − Q̄ = +inf) makes its loss and gradients NaN.
    q_max = jnp.where(avail.any(-1), jnp.max(jnp.where(avail, q, -jnp.inf), -1), jnp.max(q, -1))
    return mixer(chosen, state, q_max, jax.nn.one_hot(actions, q.shape[-1]))


class MARLState(NamedTuple):
    """Online train state (agent + mixer) and target parameters."""

    online: TrainState
    target: Any


def agent_inputs(obs: Array, last_action: Array) -> Array:
    """Observation ``(…, n, D)`` with the agent-id one-hot and the last action one-hot ``(…, n, A)`` appended."""
    n = obs.shape[-2]
    ids = jnp.broadcast_to(jnp.eye(n, dtype=obs.dtype), obs.shape[:-2] + (n, n))
    return jnp.concatenate([obs, ids, last_action.astype(obs.dtype)], axis=-1)


def lambda_returns(reward: Array, terminated: Array, valid: Array, next_value: Array, gamma: float, lam: float):
    """TD(λ) targets ``(T, B)`` of the module docstring (time-major inputs, each ``(T, B)``)."""
    cont = jnp.concatenate([valid[1:], jnp.zeros_like(valid[:1])], 0)  # step t+1 is in the episode

    def back(g_next, xs):
        r, term, c, v = xs
        # values the masks discard are replaced by 0 first (0 · NaN would be NaN): a non-finite
        # value past an episode's end cannot reach its targets; the arithmetic is otherwise the
        # masked formula's, so finite inputs give the same bits as before
        v = jnp.where(term > 0, 0.0, v)
        g_next = jnp.where(c > 0, g_next, 0.0)
        g = r + gamma * (1.0 - term) * (v + lam * c * (g_next - v))
        return g, g

    _, g = jax.lax.scan(
        back, jnp.zeros_like(reward[0]), (reward, terminated.astype(reward.dtype), cont, next_value), reverse=True
    )
    return g


def make_marl(
    spec: EnvSpec,
    config: MARLConfig,
    gamma: float = 0.99,
    period: int = 1,
    *,
    plasticity: PlasticityConfig = PlasticityConfig(),
    diagnostics: DiagnosticsConfig = DiagnosticsConfig(),
) -> tuple[Agent, FactorizedQ, Topology]:
    """VDN / QMIX / QPLEX as an :class:`~plastix.agents.off_policy.Agent` with an episode replay.

    Args:
      spec: a multi-agent env (``spec.agents > 0``, discrete actions).
      config: learner settings.
      gamma: discount (the loop's ``LoopConfig.gamma``).
      period: the loop's ``F``; the intervention's period must be a multiple of it.
      plasticity: the intervention and weight decay.
      diagnostics: thresholds of the neuron diagnostics.

    Returns:
      ``(agent, network, topology)``; the topology has groups ``agent`` and ``mixer``.
    """
    if spec.agents < 1 or not spec.discrete:
        raise ValueError(
            f"the value-factorization learner needs a multi-agent env with discrete actions; got {spec.name}"
        )
    plasticity.check_loop_period(period)
    n, A = spec.agents, spec.num_actions
    agent_net = GRUAgent(config.hidden, A, config.width_multiplier)
    mixer = make_mixer(spec, config)
    net = FactorizedQ(agent_net, mixer)
    topology = Topology.merge(
        agent_net.topology().prefixed("agent", group="agent"),
        mixer.topology().prefixed("mixer", group="mixer"),
    )
    tx = make_optimizer(plasticity.optimizer(config.optimizer))
    keep_update = diagnostics.stagnation_source == "update"
    D = spec.obs_shape[0] + n + A

    def init_params(key):
        inputs = jnp.zeros((1, 1, n, D), jnp.float32)
        actions = jnp.zeros((1, 1, n), jnp.int32)
        state = jnp.zeros((1, 1, *spec.state_shape), jnp.float32)
        return net.init(key, inputs, actions, state, jnp.ones((1, 1, n, A), bool))["params"]

    intervention = make_intervention(plasticity, topology, init_params)
    apply = intervention.forward(net.apply)  # every forward pass, online and target, sees the intervention

    def init(key, obs):
        online = create_train_state(intervention, init_params(key), tx, keep_update)
        return MARLState(online, online.params)

    (width,) = _check_widths((config.hidden,), config.width_multiplier, "MARLConfig")

    def init_memory(e: int):
        return (jnp.zeros((e, n, width), jnp.float32), jnp.zeros((e, n, A), jnp.float32))

    def act(key, state: MARLState, obs: MultiAgentObs, step, greedy: bool, memory):
        h, last = memory
        inputs = agent_inputs(obs.obs.astype(jnp.float32), last)[None]  # (1, E, n, D')
        q, h = apply({"params": state.online.params}, inputs, h, method=FactorizedQ.agent_q)
        q = jnp.where(obs.avail, q[0], -jnp.inf)
        eps = config.epsilon_eval if greedy else linear_epsilon(config, step)
        k_explore, k_action = jax.random.split(key)
        explore = jax.random.uniform(k_explore, q.shape[:-1]) < eps
        random_action = jax.random.categorical(k_action, jnp.where(obs.avail, 0.0, -jnp.inf))
        actions = jnp.where(explore, random_action, jnp.argmax(q, -1)).astype(jnp.int32)
        return actions, (h, jax.nn.one_hot(actions, A))

    def time_major(batch: EpisodeBatch):
        """``(inputs (W, B, n, D'), state (W, B, S), avail (W, B, n, A))`` and time-major steps
        (``W = L + 1`` observations, ``L`` for an env that never truncates)."""
        swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
        obs = jax.tree.map(swap, batch.obs)
        actions = swap(batch.action)
        W = obs.obs.shape[0]
        last = jax.nn.one_hot(jnp.concatenate([jnp.full_like(actions[:1], -1), actions[: W - 1]], 0), A)  # -1: 0s
        inputs = agent_inputs(obs.obs.astype(jnp.float32), last)
        return (
            inputs,
            obs.state.astype(jnp.float32),
            obs.avail,
            actions,
            swap(batch.reward),
            swap(batch.terminated),
            swap(batch.valid),
        )

    def acting_steps(inputs, actions, global_state, avail):
        """``(inputs, actions, state, avail)`` of the ``L`` steps acted in (the final observation dropped)."""
        L = actions.shape[0]
        return inputs[:L], actions, global_state[:L], avail[:L]

    def targets(state: MARLState, inputs, global_state, avail, reward, terminated, valid, q_online=None):
        """TD(λ) targets ``(L, B)``; ``q_online``: the online agent values over ``inputs`` if already computed.

        ``inputs`` hold ``W = L + 1`` observations, or ``W = L`` when the env never truncates: then
        the last step of an episode of ``L`` steps always terminates and bootstraps nothing (its
        ``V`` is 0), and a one-step env (``L = 1``) needs no target network at all.
        """
        L, W = reward.shape[0], inputs.shape[0]
        if W == 1:
            v_next = jnp.zeros_like(reward)
        else:
            q_target, _ = apply({"params": state.target}, inputs, method=FactorizedQ.agent_q)
            chooser = q_target
            if config.double_q:
                if q_online is None:
                    q_online, _ = apply({"params": state.online.params}, inputs, method=FactorizedQ.agent_q)
                chooser = jax.lax.stop_gradient(q_online)
            greedy = jnp.argmax(jnp.where(avail, chooser, -jnp.inf), -1)[1:]
            v_next = apply(
                {"params": state.target}, q_target[1:], greedy, global_state[1:], avail[1:], method=FactorizedQ.mixed
            )
            v_next = jnp.concatenate([v_next, jnp.zeros((L + 1 - W,) + v_next.shape[1:], v_next.dtype)], 0)
        return jax.lax.stop_gradient(lambda_returns(reward, terminated, valid, v_next, gamma, config.td_lambda))

    def masked_loss(q_tot, g, valid):
        td = jnp.where(valid, q_tot - g, 0.0)
        return jnp.sum(td**2) / jnp.maximum(jnp.sum(valid), 1)

    def update(key, state: MARLState, batch: EpisodeBatch):
        inputs, global_state, avail, actions, reward, terminated, valid = time_major(batch)
        L = actions.shape[0]

        def loss_fn(params):  # one online forward serves the loss and the double-Q argmax
            q, _ = apply({"params": params}, inputs, method=FactorizedQ.agent_q)
            g = targets(state, inputs, global_state, avail, reward, terminated, valid, q_online=q)
            q_tot = apply({"params": params}, q[:L], actions, global_state[:L], avail[:L], method=FactorizedQ.mixed)
            return masked_loss(q_tot, g, valid), q_tot

        (loss, q_tot), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.online.params)
        scoring_inputs = acting_steps(inputs, actions, global_state, avail)
        online = apply_update(intervention, topology, apply, state.online, grads, key, scoring_inputs, valid)
        sync = online.step % config.target_update_period == 0
        target = when_any(sync, lambda target: online.params, state.target)
        q_mean = jnp.sum(jnp.where(valid, q_tot, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
        return MARLState(online, target), {"loss": loss, "q_tot_mean": q_mean}

    def diagnose_fn(state: MARLState, batch: EpisodeBatch):
        inputs, global_state, avail, actions, reward, terminated, valid = time_major(batch)
        g = targets(state, inputs, global_state, avail, reward, terminated, valid)
        scoring_inputs = acting_steps(inputs, actions, global_state, avail)

        def apply_fn(variables, x, **kwargs):
            return apply(variables, *x, **kwargs)

        loss_fn = lambda q_tot: masked_loss(q_tot, g, valid)  # noqa: E731
        return {
            "marl": diagnose_state(
                intervention, topology, apply_fn, state.online, scoring_inputs, loss_fn, diagnostics, valid
            )
        }

    def intervene(key, state: MARLState, diags, context):
        scores = None if diags is None else diags["marl"]
        return state._replace(online=intervention.apply(key, state.online, scores, context))

    agent = Agent(
        init,
        act,
        update,
        diagnose_fn,
        intervene,
        plasticity.needs_scores,
        replay=episode_replay,
        init_memory=init_memory,
    )
    return agent, net, topology
