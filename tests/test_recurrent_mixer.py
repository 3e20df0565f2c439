"""Topologies beyond one kernel per layer: a GRU agent over time, QMIX's generated mixing units,
twin critics and ResNet stream convs; capture, diagnostics with validity masks, ReDo, Reset, S&P."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix.agents.sac import TwinCritic
from plastix.interventions import (
    Context,
    ReDoConfig,
    ResetConfig,
    ShrinkPerturbConfig,
    TrainState,
    recycle_neurons,
    redo,
    reset,
    shrink_perturb,
    zero_outgoing,
)
from plastix.interventions.reset import last_layers
from plastix.metrics import diagnose
from plastix.nn import Topology, capture, impala_resnet, validate
from plastix.nn.mixers import QMixer
from plastix.nn.recurrent import GRU, GRUAgent, gru_layer, orthogonal
from plastix.nn.topology import CAPTURE, PERTURB

T, B, N_AGENTS, OBS, STATE, H, E, ACTIONS = 6, 3, 2, 5, 7, 8, 4, 3


class Learner(nn.Module):
    """A QMIX learner's two networks under one parameter tree: ``agent`` and ``mixer``."""

    @nn.compact
    def __call__(self, inputs):
        obs, state = inputs
        q, _ = GRUAgent(H, ACTIONS, name="agent")(obs)
        return QMixer(N_AGENTS, E, 6, name="mixer")(q.max(-1), state)


LEARNER = Learner()
TOPO = Topology.merge(
    GRUAgent(H, ACTIONS).topology().prefixed("agent", group="agent"),
    QMixer(N_AGENTS, E, 6).topology().prefixed("mixer", group="mixer"),
)
OBS_X = jax.random.normal(jax.random.key(1), (T, B, N_AGENTS, OBS))
STATE_X = jax.random.normal(jax.random.key(2), (T, B, STATE))
INPUTS = (OBS_X, STATE_X)
VALID = jnp.arange(T)[:, None] < jnp.array([6, 4, 2])[None, :]  # (T, B): episodes of length 6, 4, 2


def init_params(key):
    return LEARNER.init(key, INPUTS)["params"]


def loss_fn(q_tot):
    return jnp.sum(jnp.where(VALID, (q_tot - 1.0) ** 2, 0.0)) / jnp.sum(VALID)


@jax.jit  # compiled once for the module (eager, every call traces and compiles the GRU's scan)
def diagnosed(params, inputs=INPUTS):
    """``diagnose`` of the learner over the valid steps of ``inputs``."""
    return diagnose(TOPO, LEARNER.apply, params, inputs, loss_fn, valid=VALID)


loss_grads = jax.jit(jax.grad(lambda p: loss_fn(LEARNER.apply({"params": p}, INPUTS))))


def np_gru(params, x):
    """Flax's GRUCell equations in NumPy, over time: x (T, ..., D) -> h (T, ..., H)."""
    p = jax.tree.map(np.asarray, params)

    def sig(v):
        return 1 / (1 + np.exp(-v))

    h = np.zeros(x.shape[1:-1] + (p["hr"]["kernel"].shape[0],), np.float32)
    out = []
    for xt in np.asarray(x):
        r = sig(xt @ p["ir"]["kernel"] + p["ir"]["bias"] + h @ p["hr"]["kernel"])
        z = sig(xt @ p["iz"]["kernel"] + p["iz"]["bias"] + h @ p["hz"]["kernel"])
        n = np.tanh(xt @ p["in"]["kernel"] + p["in"]["bias"] + r * (h @ p["hn"]["kernel"] + p["hn"]["bias"]))
        h = (1 - z) * n + z * h
        out.append(h)
    return np.stack(out)


@pytest.fixture(scope="module")
def params():
    p = init_params(jax.random.key(0))
    validate(TOPO, p)
    return p


def test_capture_under_rnn_stacks_time_and_matches_numpy(params):
    out, z = capture(LEARNER.apply, TOPO)(params, INPUTS)
    np.testing.assert_allclose(out, LEARNER.apply({"params": params}, INPUTS), rtol=1e-6)
    fc1 = np.maximum(
        np.asarray(OBS_X) @ np.asarray(params["agent"]["fc1"]["kernel"]) + np.asarray(params["agent"]["fc1"]["bias"]), 0
    )
    assert z["agent/gru"].shape == (T, B, N_AGENTS, H)
    np.testing.assert_allclose(z["agent/gru"], np_gru(params["agent"]["gru"], fc1), atol=1e-5)
    assert z["mixer/mixing"].shape == (T, B, E)


class _FlaxGRUNet(nn.Module):
    """The reference: Flax's ``nn.GRUCell`` under ``nn.RNN`` (what GRUAgent used before plastix's GRU)."""

    @nn.compact
    def __call__(self, x, h0=None):
        if h0 is None:
            h0 = jnp.zeros(x.shape[1:-1] + (H,))
        cell = nn.GRUCell(H, recurrent_kernel_init=orthogonal(), name="gru")
        rnn = nn.RNN(cell, time_major=True, return_carry=True, variable_axes={CAPTURE: 0, PERTURB: 0})
        h_last, hs = rnn(x, initial_carry=h0)
        return hs.sum(-1), h_last


class _PlastixGRUNet(nn.Module):
    @nn.compact
    def __call__(self, x, h0=None):
        h_last, hs = GRU(H, name="gru")(x, h0)
        return hs.sum(-1), h_last


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("with_h0", [False, True])
def test_gru_equals_flax_grucell_in_values_init_and_neuron_gradients(steps, with_h0):
    x = jax.random.normal(jax.random.key(5), (steps, B, OBS))
    h0 = jax.random.normal(jax.random.key(6), (B, H)) if with_h0 else None
    reference, ours = _FlaxGRUNet(), _PlastixGRUNet()
    params = reference.init(jax.random.key(7), x, h0)["params"]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ours.init(jax.random.key(7), x, h0)["params"])):
        np.testing.assert_array_equal(a, b)  # same parameter tree, same initial draws
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(8), p.shape), params)  # biases ≠ 0
    for got, want in zip(ours.apply({"params": params}, x, h0), reference.apply({"params": params}, x, h0)):
        np.testing.assert_allclose(got, want, atol=1e-6)

    # ∂L/∂z_t through the recurrence: capture's perturbation enters the module's own loop at every step
    weights = jax.random.normal(jax.random.key(9), (steps, B))

    def dz_grad(net, layer):
        topology = Topology((layer,), (), ())
        zeros = {"gru": jnp.zeros((steps, B, H))}

        def loss(dz):
            (out, _), z = capture(lambda v, *a, **k: net.apply(v, *a, **k), topology, dz)(params, x, h0)
            return jnp.sum(weights * out), z["gru"]

        return jax.grad(loss, has_aux=True)(zeros)

    (g_ours, z_ours) = dz_grad(ours, gru_layer("gru", "gru", []))
    (g_ref, z_ref) = dz_grad(reference, gru_layer("gru", "gru", [], flax_cell=True))
    assert z_ours.shape == (steps, B, H)
    np.testing.assert_allclose(z_ours, z_ref, atol=1e-6)
    np.testing.assert_allclose(g_ours["gru"], g_ref["gru"], atol=1e-5)
    if steps > 1:  # the gradient of an early state includes its effect on later steps
        assert not np.allclose(g_ours["gru"][0], np.broadcast_to(weights[0][:, None], (B, H)), atol=1e-3)


def test_gru_names_a_wrong_input_or_initial_state_shape():
    x = jnp.zeros((3, B, OBS))
    with pytest.raises(ValueError, match=r"h0 has shape \(2, 8\), expected"):
        _PlastixGRUNet().init(jax.random.key(0), x, jnp.zeros((2, H)))
    with pytest.raises(ValueError, match="time-major"):
        _PlastixGRUNet().init(jax.random.key(0), jnp.zeros((OBS,)))


def test_diagnostics_skip_padded_steps_and_match_hand_computation(params):
    diag = diagnosed(params)
    assert set(diag.groups) == {"agent", "mixer"}
    # dormant score of the GRU by hand: mean |h| over valid (t, b) and agents, over the layer mean
    fc1 = np.maximum(
        np.asarray(OBS_X) @ np.asarray(params["agent"]["fc1"]["kernel"]) + np.asarray(params["agent"]["fc1"]["bias"]), 0
    )
    h = np.abs(np_gru(params["agent"]["gru"], fc1))
    per_unit = h[np.asarray(VALID)].mean(axis=(0, 1))
    np.testing.assert_allclose(diag.layers["agent/gru"].dormant_score, per_unit / per_unit.mean(), rtol=1e-4)
    # GraMa of generated mixing unit j: mean |dL/dw| over the hypernetwork columns that generate it
    grads = loss_grads(params)
    gw1 = np.abs(np.asarray(grads["mixer"]["hyper_w1_1"]["kernel"]))  # (6, n*E), column i*E + j -> unit j
    gb1 = np.abs(np.asarray(grads["mixer"]["hyper_b1"]["kernel"]))  # (S, E)
    per_unit = np.array(
        [np.concatenate([gw1[:, [i * E + j for i in range(N_AGENTS)]].ravel(), gb1[:, j]]).mean() for j in range(E)]
    )
    np.testing.assert_allclose(diag.layers["mixer/mixing"].grama_score, per_unit / per_unit.mean(), rtol=1e-4)
    # network-wide fractions count neurons of both groups
    sizes = {"agent": 2 * H, "mixer": 6 + 6 + E + E}
    expected = sum(diag.groups[g].dormant_fraction * n for g, n in sizes.items()) / sum(sizes.values())
    np.testing.assert_allclose(diag.dormant_fraction, expected, rtol=1e-6)


def test_padded_steps_change_no_diagnostic(params):
    noisy = OBS_X + 100.0 * (~VALID)[:, :, None, None]  # garbage at padded steps only
    state_noise = STATE_X + 100.0 * (~VALID)[:, :, None]
    a = diagnosed(params)
    b = diagnosed(params, (noisy, state_noise))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_redo_on_gru_and_generated_units_equals_pruning_them(params):
    """Recycled units have zero outgoing weights: the output is that of the network without them
    (unchanged when they were dormant), whatever their fresh incoming weights."""
    state = TrainState.create(params, optax.adam(1e-2))
    for _ in range(2):
        state = state.apply_gradients(loss_grads(state.params))
    masks = {
        name: jax.random.bernoulli(jax.random.key(i), 0.4, (layer.size(params),))
        for i, (name, layer) in enumerate((layer.name, layer) for layer in TOPO.layers)
    }
    masks["agent/gru"] = jnp.array([True, False, True, False, False, False, False, True])
    masks["mixer/mixing"] = jnp.array([False, True, False, True])
    masks["agent/fc1"] = jnp.zeros(H, bool)  # so that the kernels checked below change only by gru / mixing
    masks["mixer/hyper_w1_0"] = jnp.zeros(6, bool)
    new = recycle_neurons(state, TOPO, masks, init_params(jax.random.key(7)))
    pruned = LEARNER.apply({"params": zero_outgoing(state.params, TOPO, masks)}, INPUTS)
    after = LEARNER.apply({"params": new.params}, INPUTS)
    np.testing.assert_allclose(after, pruned, rtol=1e-6, atol=1e-6)
    assert not np.allclose(after, LEARNER.apply({"params": state.params}, INPUTS))  # live units were cut
    gru = new.params["agent"]["gru"]
    for gate in ("hr", "hz", "hn"):  # outgoing: rows of the recurrent kernels
        assert not np.any(np.asarray(gru[gate]["kernel"])[[0, 2, 7]])
    assert not np.any(np.asarray(new.params["agent"]["fc2"]["kernel"])[[0, 2, 7]])
    for gate in ("ir", "iz", "in", "hn"):  # incoming: biases zero, kernels fresh
        assert not np.any(np.asarray(gru[gate]["bias"])[[0, 2, 7]])
    assert not np.allclose(gru["ir"]["kernel"][:, 0], state.params["agent"]["gru"]["ir"]["kernel"][:, 0])
    np.testing.assert_array_equal(gru["ir"]["kernel"][:, 1], state.params["agent"]["gru"]["ir"]["kernel"][:, 1])
    # mixing units 1 and 3: their w2 generator columns are zero, their w1 generator columns fresh
    assert not np.any(np.asarray(new.params["mixer"]["hyper_w2_1"]["kernel"])[:, [1, 3]])
    w1 = np.asarray(new.params["mixer"]["hyper_w1_1"]["kernel"])
    old = np.asarray(state.params["mixer"]["hyper_w1_1"]["kernel"])
    for i in range(N_AGENTS):
        np.testing.assert_array_equal(w1[:, i * E + 0], old[:, i * E + 0])
        assert not np.allclose(w1[:, i * E + 1], old[:, i * E + 1])
    # optimizer moments of exactly the touched elements are zero
    mu = new.opt_state[0].mu
    assert not np.any(np.asarray(mu["agent"]["gru"]["hr"]["kernel"])[[0, 2, 7]])
    kept = np.asarray(mu["agent"]["gru"]["hr"]["kernel"])[1]  # row of a kept unit: only columns 0, 2, 7 are hit
    assert not np.any(kept[[0, 2, 7]]) and np.all(kept[[1, 3, 4, 5, 6]] != 0)


def np_qmix(p, q, s):
    """QMIX's mixing hidden pre-activation ``q @ |w1| + b1`` in NumPy: (..., E)."""
    p = jax.tree.map(np.asarray, p)
    hid = np.maximum(s @ p["hyper_w1_0"]["kernel"] + p["hyper_w1_0"]["bias"], 0)
    w1 = np.abs(hid @ p["hyper_w1_1"]["kernel"] + p["hyper_w1_1"]["bias"]).reshape(*s.shape[:-1], N_AGENTS, E)
    b1 = s @ p["hyper_b1"]["kernel"] + p["hyper_b1"]["bias"]
    return np.einsum("...n,...ne->...e", q, w1) + b1


def test_mixer_dormant_scores_by_hand_over_valid_steps(params):
    diag = diagnosed(params)
    q, _ = GRUAgent(H, ACTIONS).apply({"params": params["agent"]}, OBS_X)
    h = np.abs(jax.nn.elu(np_qmix(params["mixer"], np.asarray(q.max(-1)), np.asarray(STATE_X))))
    per_unit = h[np.asarray(VALID)].mean(axis=0)
    np.testing.assert_allclose(diag.layers["mixer/mixing"].dormant_score, per_unit / per_unit.mean(), rtol=1e-4)


def test_redo_tau_zero_on_dead_gru_and_mixing_units_is_bit_identical(params):
    """Dead units (h exactly 0 on every input) recycled with τ = 0: outputs bit for bit unchanged."""
    p = jax.tree.map(lambda x: x, params)
    for gate in ("ir", "iz", "in", "hr", "hz", "hn"):  # GRU unit 3: every incoming slice 0, so h_3 = 0
        p["agent"]["gru"][gate] = {k: v.at[..., 3].set(0.0) for k, v in p["agent"]["gru"][gate].items()}
    cols = [i * E + 2 for i in range(N_AGENTS)]  # mixing unit 2: generated w1 column and b1 zero, so z_2 = 0
    p["mixer"]["hyper_w1_1"] = {k: v.at[..., cols].set(0.0) for k, v in p["mixer"]["hyper_w1_1"].items()}
    p["mixer"]["hyper_b1"] = {k: v.at[..., 2].set(0.0) for k, v in p["mixer"]["hyper_b1"].items()}
    p["mixer"]["hyper_w2_0"]["bias"] = p["mixer"]["hyper_w2_0"]["bias"].at[1].set(-1e3)  # a dead hypernet unit
    state = TrainState.create(p, optax.adam(1e-3))
    scores = diagnosed(p)
    assert bool(scores.layers["agent/gru"].dormant[3]) and bool(scores.layers["mixer/mixing"].dormant[2])
    assert bool(scores.layers["mixer/hyper_w2_0"].dormant[1])
    new = redo(ReDoConfig(tau=0.0), TOPO, init_params).apply(jax.random.key(5), state, scores, Context.at(1))
    assert not np.array_equal(new.params["agent"]["gru"]["ir"]["kernel"][:, 3], 0.0)  # re-drawn
    np.testing.assert_array_equal(LEARNER.apply({"params": new.params}, INPUTS), LEARNER.apply({"params": p}, INPUTS))


def _reset_changed(topology, params, last_k):
    state = TrainState.create(params, optax.sgd(1.0))
    iv = reset(ResetConfig(last_k=last_k), topology, lambda k: jax.tree.map(lambda p: p + 1.0, params))
    iv.init(params)
    new = iv.apply(jax.random.key(0), state, None, Context.at(1))
    changed = jax.tree_util.tree_map_with_path(lambda path, a, b: bool(np.any(a != b)), new.params, state.params)
    return {"/".join(k.key for k in path) for path, hit in jax.tree_util.tree_leaves_with_path(changed) if hit}


def test_reset_counts_depth_from_every_head_per_network(params):
    assert _reset_changed(TOPO, params, 1) == {
        "agent/fc2/kernel",
        "agent/fc2/bias",
        "mixer/hyper_w2_1/kernel",
        "mixer/hyper_w2_1/bias",
        "mixer/hyper_b2_1/kernel",
        "mixer/hyper_b2_1/bias",
    }
    two = _reset_changed(TOPO, params, 2)
    assert {"agent/gru/hr/kernel", "mixer/hyper_w1_1/kernel", "mixer/hyper_b1/bias", "mixer/hyper_w2_0/kernel"} <= two
    assert not any(p.startswith("agent/fc1") or p.startswith("mixer/hyper_w1_0") for p in two)


def test_reset_twin_critic_resets_both_heads():
    critic = TwinCritic((8, 8))
    params = critic.init(jax.random.key(0), jnp.zeros((1, 5)))["params"]
    assert _reset_changed(critic.topology(), params, 1) == {
        "q0/output/kernel",
        "q0/output/bias",
        "q1/output/kernel",
        "q1/output/bias",
    }


def test_reset_resnet_follows_the_residual_stream():
    net = impala_resnet(3, width_multiplier=0.25)
    params = net.init(jax.random.key(0), jnp.zeros((1, 16, 16, 2)))["params"]
    assert set(last_layers(net.topology(), 3)) == {"output", "dense_0", "s2_b1_conv_b"}
    assert net.topology().depths()["s0_conv"] == 17  # 3 stacks of conv + 2 blocks of 2 convs, dense, output
    changed = _reset_changed(net.topology(), params, 3)
    assert {p.split("/")[0] for p in changed} == {"output", "dense_0", "s2_b1_conv_b"}
    every = {p.split("/")[0] for p in _reset_changed(net.topology(), params, 17)}
    assert every == set(params)  # stack convs can be reset too
    assert "s0_conv" not in {p.split("/")[0] for p in _reset_changed(net.topology(), params, 16)}


def test_shrink_perturb_covers_agent_and_mixer(params):
    state = TrainState.create(params, optax.sgd(1.0))
    fresh = init_params(jax.random.key(3))
    new = shrink_perturb(ShrinkPerturbConfig(0.5, 0.5), TOPO, lambda k: fresh).apply(
        jax.random.key(0), state, None, Context.at(1)
    )
    for a, b, c in zip(jax.tree.leaves(new.params), jax.tree.leaves(params), jax.tree.leaves(fresh)):
        np.testing.assert_allclose(a, 0.5 * b + 0.5 * c, rtol=1e-6)
