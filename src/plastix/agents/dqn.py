"""DQN (Mnih et al. 2015, Dopamine's settings) and DrQ(ε) (Kostrikov et al. 2020; Agarwal et al. 2021).

Both share one update: Huber loss on the n-step TD error against a target network that is copied
from the online network every ``target_update_period`` updates. DrQ(ε) is DQN with random-shift
augmentation of observations and its own defaults (:func:`drq_epsilon_config`).

Target-update scaling with the replay ratio (paper Table 2, after van Hasselt et al. 2019): the
period is counted in *gradient updates*, so it stays at 2,000 updates for every replay ratio,
which is 8,000 env steps at RR 0.25, 2,000 at RR 1 and 1,000 at RR 2.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import Array

from plastix.agents.off_policy import (
    Agent,
    Transition,
    apply_update,
    diagnose_state,
    linear_epsilon,
    uniform_below,
    unit_interval,
)
from plastix.envs.base import EnvSpec
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
from plastix.nn import MLP, ConvNet, nature_cnn
from plastix.nn.mlp import check_width_fields
from plastix.nn.resnet import impala_resnet
from plastix.nn.topology import Topology

NETWORKS = ("auto", "mlp", "minatar", "nature", "impala")
DQN_OPTIMIZER = OptimizerConfig("adam", 6.25e-5, eps=1.5e-4)


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """DQN / DrQ(ε) settings (defaults: Dopamine DQN as used by the paper).

    Attributes:
      network: ``auto`` (``mlp`` for vector observations, ``minatar`` for 10×10 grids, ``nature``
        for Atari frames), ``mlp``, ``minatar`` (conv 16-3/1 + dense 128), ``nature`` (Nature
        CNN) or ``impala`` (IMPALA ResNet; its inner convs are the recycled neuron layers).
      mlp_hidden: hidden widths of the ``mlp`` network.
      width_multiplier: scales every hidden width.
      optimizer: optimizer (Adam, lr 6.25e-5, ε 1.5e-4).
      target_update_period: updates between copies of the online network to the target.
      epsilon_start / epsilon_end: ε-greedy exploration, decayed linearly ...
      epsilon_decay_steps: ... over this many learning env steps.
      epsilon_eval: ε of the evaluation policy.
      huber_delta: δ of the Huber loss.
      double_q: double-DQN targets (off in both papers' DQN).
      augment_shift: random-shift augmentation padding in pixels (DrQ); 0 = off.

    The plasticity treatment and the diagnostics' thresholds are not DQN settings: every agent
    takes them from :func:`make_dqn`'s ``plasticity`` and ``diagnostics`` (``RLConfig`` holds them
    once for every agent).
    """

    network: Literal["auto", "mlp", "minatar", "nature", "impala"] = "auto"
    mlp_hidden: tuple[int, ...] = (256, 256)
    width_multiplier: float = 1.0
    optimizer: OptimizerConfig = DQN_OPTIMIZER
    target_update_period: int = 2_000
    epsilon_start: float = 1.0
    epsilon_end: float = 0.01
    epsilon_decay_steps: int = 250_000
    epsilon_eval: float = 0.001
    huber_delta: float = 1.0
    double_q: bool = False
    augment_shift: int = 0

    def __post_init__(self):
        if self.network not in NETWORKS:
            raise ValueError(f"DQNConfig.network: got {self.network!r}, allowed values are {NETWORKS}")
        if self.target_update_period < 1:
            raise ValueError(f"DQNConfig.target_update_period must be >= 1 update, got {self.target_update_period}")
        for field in ("epsilon_start", "epsilon_end", "epsilon_eval"):
            if not 0 <= getattr(self, field) <= 1:
                raise ValueError(f"DQNConfig.{field} must be in [0, 1], got {getattr(self, field)}")
        if self.epsilon_decay_steps < 1:
            raise ValueError(f"DQNConfig.epsilon_decay_steps must be >= 1, got {self.epsilon_decay_steps}")
        if self.augment_shift < 0:
            raise ValueError(f"DQNConfig.augment_shift must be >= 0, got {self.augment_shift}")
        check_width_fields("DQNConfig", "mlp_hidden", self.mlp_hidden, self.width_multiplier)


def drq_epsilon_config(**overrides) -> DQNConfig:
    """DrQ(ε) defaults (Agarwal et al. 2021, used by the paper on Atari 100k): random shifts of 4 px,
    Adam lr 1e-4 (ε 1.5e-4), target copied every update, ε decayed to 0.01 over 5,000 env steps.
    Use it with ``LoopConfig(n_step=10, replay_ratio=1, warmup_steps=1600, batch_size=32)``.
    """
    base = dict(
        optimizer=OptimizerConfig("adam", 1e-4, eps=1.5e-4),
        target_update_period=1,
        epsilon_decay_steps=5_000,
        augment_shift=4,
    )
    base.update(overrides)
    return DQNConfig(**base)


def q_network(spec: EnvSpec, config: DQNConfig) -> nn.Module:
    """The Q-network for ``spec`` (see ``DQNConfig.network``); it has a ``topology()``."""
    kind = config.network
    if kind == "auto":
        kind = "mlp" if len(spec.obs_shape) == 1 else ("minatar" if spec.obs_shape[0] <= 16 else "nature")
    if kind != "mlp" and len(spec.obs_shape) != 3:
        raise ValueError(f"DQNConfig.network={kind!r} needs (H, W, C) observations, {spec.name} has {spec.obs_shape}")
    wm = config.width_multiplier
    if kind == "mlp":
        return MLP(tuple(config.mlp_hidden), spec.num_actions, wm)
    if kind == "minatar":
        return ConvNet((16,), (3,), (1,), (128,), spec.num_actions, wm, "VALID")
    if kind == "nature":
        return nature_cnn(spec.num_actions, wm)
    return impala_resnet(spec.num_actions, wm)


def random_shift(key: Array, obs: Array, pad: int) -> Array:
    """DrQ's augmentation: replicate-pad ``(B, H, W, C)`` images by ``pad`` and crop back at a random offset."""
    b, h, w, c = obs.shape
    padded = jnp.pad(obs, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)
    crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


class DQNState(NamedTuple):
    """Online train state and target parameters."""

    online: TrainState
    target: Any


def td_targets(q_next_target: Array, q_next_online: Array | None, reward: Array, discount: Array) -> Array:
    """``r + discount · Q_target(s', a*)`` with ``a* = argmax Q_target`` (DQN) or ``argmax Q_online`` (double)."""
    if q_next_online is None:
        best = jnp.max(q_next_target, -1)
    else:
        best = jnp.take_along_axis(q_next_target, jnp.argmax(q_next_online, -1)[:, None], -1)[:, 0]
    return reward + discount * best


def make_dqn(
    spec: EnvSpec,
    config: DQNConfig,
    period: int = 1,
    *,
    plasticity: PlasticityConfig = PlasticityConfig(),
    diagnostics: DiagnosticsConfig = DiagnosticsConfig(),
) -> tuple[Agent, nn.Module, Topology]:
    """DQN / DrQ(ε) as an :class:`~plastix.agents.off_policy.Agent`.

    Args:
      spec: a discrete-action environment.
      config: agent settings.
      period: the loop's ``F``; the intervention's period must be a multiple of it.
      plasticity: the intervention (registry method, trigger) and weight decay.
      diagnostics: thresholds of the neuron diagnostics (τ, GraMa τ, κ, stagnation source).

    Returns:
      ``(agent, network, topology)``.
    """
    spec.check_single_agent("DQN")
    if not spec.discrete:
        raise ValueError(f"DQN needs discrete actions; {spec.name} has continuous actions (use SAC)")
    plasticity.check_loop_period(period)
    net = q_network(spec, config)
    topology = net.topology()
    tx = make_optimizer(plasticity.optimizer(config.optimizer))
    keep_update = diagnostics.stagnation_source == "update"

    def preprocess(obs):
        return obs.astype(jnp.float32) * spec.obs_scale

    def init_params(key):
        return net.init(key, jnp.zeros((1, *spec.obs_shape), jnp.float32))["params"]

    intervention = make_intervention(plasticity, topology, init_params)
    net_apply = intervention.forward(net.apply)  # every forward pass, online and target, sees the intervention

    def apply_variables(variables, obs, **kwargs):  # flax's apply signature, for diagnostics
        return net_apply(variables, preprocess(obs), **kwargs)

    def apply(params, obs):
        return apply_variables({"params": params}, obs)

    def init(key, obs):
        online = create_train_state(intervention, init_params(key), tx, keep_update)
        return DQNState(online, online.params)

    def act(key, state: DQNState, obs, step, greedy: bool):
        q = apply(state.online.params, obs)
        eps = config.epsilon_eval if greedy else linear_epsilon(config, step)
        bits = jax.random.bits(key, (2, obs.shape[0]))  # one random call for both draws (see uniform_below)
        explore = unit_interval(bits[0]) < eps
        random_action = uniform_below(bits[1], jnp.int32(spec.num_actions))
        return jnp.where(explore, random_action, jnp.argmax(q, -1))

    def augment(key, batch: Transition) -> Transition:
        if config.augment_shift == 0:
            return batch
        k1, k2 = jax.random.split(key)
        return batch._replace(
            obs=random_shift(k1, batch.obs, config.augment_shift),
            next_obs=random_shift(k2, batch.next_obs, config.augment_shift),
        )

    def targets(state: DQNState, batch: Transition) -> Array:
        q_next = apply(state.target, batch.next_obs)
        q_next_online = apply(state.online.params, batch.next_obs) if config.double_q else None
        return jax.lax.stop_gradient(td_targets(q_next, q_next_online, batch.reward, batch.discount))

    def loss_on(q, action, target):
        q_a = jnp.take_along_axis(q, action[:, None], -1)[:, 0]
        return jnp.mean(optax.huber_loss(q_a, target, delta=config.huber_delta)), q_a

    def update(key, state: DQNState, batch: Transition):
        batch = augment(key, batch)
        target = targets(state, batch)
        (loss, q_a), grads = jax.value_and_grad(
            lambda p: loss_on(apply(p, batch.obs), batch.action, target), has_aux=True
        )(state.online.params)
        hook_key = jax.random.fold_in(key, 1)
        online = apply_update(intervention, topology, apply_variables, state.online, grads, hook_key, (batch.obs,))
        sync = online.step % config.target_update_period == 0
        target_params = when_any(sync, lambda target: online.params, state.target)
        return DQNState(online, target_params), {"loss": loss, "q_mean": jnp.mean(q_a)}

    def diagnose_fn(state: DQNState, batch: Transition):
        target = targets(state, batch)
        loss_fn = lambda q: loss_on(q, batch.action, target)[0]
        online = state.online
        return {"q": diagnose_state(intervention, topology, apply_variables, online, batch.obs, loss_fn, diagnostics)}

    def intervene(key, state: DQNState, diags, context):
        scores = None if diags is None else diags["q"]
        return state._replace(online=intervention.apply(key, state.online, scores, context))

    agent = Agent(init, act, update, diagnose_fn, intervene, plasticity.needs_scores)
    return agent, net, topology
