"""Interventions: function preservation, exact surgery, optimizer moments by path, jit/vmap, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix.interventions import (
    METHODS,
    REGISTRY,
    Context,
    Intervention,
    OptimizerConfig,
    PlasticityConfig,
    ReDoConfig,
    ResetConfig,
    ShrinkPerturbConfig,
    TrainState,
    every,
    make_intervention,
    make_optimizer,
    recycle_neurons,
    redo,
    register_method,
    reset,
    select_neurons,
    shrink_perturb,
)
from plastix.metrics import diagnose
from plastix.nn import small_cnn
from plastix.nn.topology import get_path

NET = small_cnn(4)
X = jax.random.normal(jax.random.key(0), (32, 8, 8, 1))
Y = jax.random.randint(jax.random.key(1), (32,), 0, 4)
TOPO = NET.topology()


def apply(p, x):
    return NET.apply({"params": p}, x)


def init_params(key):
    return NET.init(key, X[:1])["params"]


def loss_fn(out):
    return optax.softmax_cross_entropy_with_integer_labels(out, Y).mean()


def trained_state(tx=None, steps=3, kill=(("conv_1", 3), ("dense_0", 5))):
    """A state after a few Adam steps, with chosen neurons made dead (bias -1e3)."""
    params = init_params(jax.random.key(2))
    for layer, i in kill:
        params[layer]["bias"] = params[layer]["bias"].at[i].set(-1e3)
    state = TrainState.create(params, tx or optax.adam(1e-3))
    for _ in range(steps):
        state = state.apply_gradients(jax.grad(lambda p: loss_fn(apply(p, X)))(state.params))
    return state


def scores_of(state):
    return diagnose(TOPO, NET.apply, state.params, X, loss_fn)


def test_redo_tau_zero_leaves_outputs_bit_identical():
    state = trained_state()
    scores = scores_of(state)
    assert bool(scores.layers["conv_1"].dormant[3]) and bool(scores.layers["dense_0"].dormant[5])
    new = redo(ReDoConfig(tau=0.0), TOPO, init_params).apply(jax.random.key(9), state, scores, Context.at(state.step))
    assert not np.array_equal(new.params["conv_1"]["kernel"], state.params["conv_1"]["kernel"])  # something changed
    np.testing.assert_array_equal(apply(new.params, X), apply(state.params, X))


def test_redo_without_dormant_neurons_changes_nothing():
    state = trained_state(kill=())
    scores = scores_of(state)
    masks = {n: jnp.zeros_like(layer.dormant) for n, layer in scores.layers.items()}
    new = recycle_neurons(state, TOPO, masks, init_params(jax.random.key(5)))
    for a, b in zip(jax.tree.leaves((new.params, new.opt_state)), jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(a, b)


def test_redo_surgery_on_known_neurons():
    state = trained_state(kill=())  # live neurons: their moments are non-zero before the surgery
    masks = {
        "conv_0": jnp.zeros(16, bool),
        "conv_1": jnp.zeros(32, bool).at[3].set(True),
        "dense_0": jnp.zeros(64, bool).at[5].set(True),
    }
    fresh = init_params(jax.random.key(7))
    new = recycle_neurons(state, TOPO, masks, fresh)
    p, q = state.params, new.params
    # incoming weights re-drawn from the original initializer, bias 0
    np.testing.assert_array_equal(q["conv_1"]["kernel"][..., 3], fresh["conv_1"]["kernel"][..., 3])
    assert not np.allclose(q["conv_1"]["kernel"][..., 3], p["conv_1"]["kernel"][..., 3])
    assert float(q["conv_1"]["bias"][3]) == 0.0 and float(q["dense_0"]["bias"][5]) == 0.0
    # outgoing: conv_1 channel 3 -> flattened rows r % 32 == 3 of dense_0; dense_0 unit 5 -> output row 5
    rows = np.arange(q["dense_0"]["kernel"].shape[0]) % 32 == 3
    # dense_0 unit 5 is re-drawn, except on the rows fed by recycled channel 3 (outgoing zeroed last)
    np.testing.assert_array_equal(
        np.asarray(q["dense_0"]["kernel"])[~rows, 5], np.asarray(fresh["dense_0"]["kernel"])[~rows, 5]
    )
    np.testing.assert_array_equal(np.asarray(q["dense_0"]["kernel"])[rows, 5], 0.0)
    assert np.all(np.asarray(q["dense_0"]["kernel"])[rows][:, np.arange(64) != 5] == 0)
    np.testing.assert_array_equal(q["output"]["kernel"][5], 0.0)
    # everything else identical
    np.testing.assert_array_equal(q["conv_0"]["kernel"], p["conv_0"]["kernel"])
    other = np.ones(32, bool)
    other[3] = False
    np.testing.assert_array_equal(q["conv_1"]["kernel"][..., other], p["conv_1"]["kernel"][..., other])
    keep = np.ones(64, bool)
    keep[5] = False
    np.testing.assert_array_equal(
        np.asarray(q["dense_0"]["kernel"])[~rows][:, keep], np.asarray(p["dense_0"]["kernel"])[~rows][:, keep]
    )
    np.testing.assert_array_equal(np.delete(q["output"]["kernel"], 5, 0), np.delete(p["output"]["kernel"], 5, 0))
    # Adam moments: exactly the touched elements are zero, the rest and the count unchanged
    adam_old, adam_new = state.opt_state[0], new.opt_state[0]
    assert int(adam_new.count) == int(adam_old.count) == 3
    for moment in ("mu", "nu"):
        old, newm = getattr(adam_old, moment), getattr(adam_new, moment)
        touched_kernel = np.zeros(q["dense_0"]["kernel"].shape, bool)
        touched_kernel[:, 5] = True
        touched_kernel[rows] = True
        np.testing.assert_array_equal(np.asarray(newm["dense_0"]["kernel"])[touched_kernel], 0.0)
        np.testing.assert_array_equal(
            np.asarray(newm["dense_0"]["kernel"])[~touched_kernel],
            np.asarray(old["dense_0"]["kernel"])[~touched_kernel],
        )
        assert np.mean(np.asarray(old["dense_0"]["kernel"])[touched_kernel] != 0) > 0.5  # not vacuous
        assert float(newm["conv_1"]["bias"][3]) == 0.0
        np.testing.assert_array_equal(np.delete(newm["conv_1"]["bias"], 3), np.delete(old["conv_1"]["bias"], 3))
        np.testing.assert_array_equal(newm["conv_0"]["kernel"], old["conv_0"]["kernel"])


def test_redo_resets_moments_by_path_in_chained_rmsprop():
    tx = optax.chain(optax.clip_by_global_norm(10.0), optax.rmsprop(1e-3, momentum=0.9))
    state = trained_state(tx)
    masks = {
        "conv_0": jnp.zeros(16, bool),
        "conv_1": jnp.zeros(32, bool),
        "dense_0": jnp.zeros(64, bool).at[0].set(True),
    }
    new = recycle_neurons(state, TOPO, masks, init_params(jax.random.key(1)))
    leaves_old = jax.tree.leaves(state.opt_state)
    leaves_new = jax.tree.leaves(new.opt_state)
    changed = [not np.array_equal(a, b) for a, b in zip(leaves_old, leaves_new)]
    # rmsprop nu and momentum trace of dense_0 kernel, bias and of the output kernel changed, nothing else
    assert sum(changed) == 6
    nu = new.opt_state[1][0].nu
    assert float(nu["dense_0"]["bias"][0]) == 0.0 and np.all(np.asarray(nu["output"]["kernel"][0]) == 0)


def test_resampled_weights_have_initializer_statistics():
    big = small_cnn(4, width_multiplier=4.0)
    x = jnp.zeros((1, 8, 8, 1))
    params = big.init(jax.random.key(0), x)["params"]
    state = TrainState.create(jax.tree.map(jnp.zeros_like, params), optax.sgd(0.1))
    masks = {"dense_0": jnp.ones(256, bool)}
    new = recycle_neurons(state, big.topology(), masks, big.init(jax.random.key(1), x)["params"])
    w = np.asarray(new.params["dense_0"]["kernel"])
    fan_in = w.shape[0]  # lecun normal: std 1 / sqrt(fan_in)
    assert w.std() == pytest.approx(1 / np.sqrt(fan_in), rel=0.05)
    assert abs(w.mean()) < 0.01 / np.sqrt(fan_in) * 10


def test_selection_variants():
    score = jnp.array([0.0, 0.05, 2.0, 1.0, 0.5, 1.5])  # two below τ = 0.1
    cfg = ReDoConfig(tau=0.1)
    key = jax.random.key(0)
    np.testing.assert_array_equal(select_neurons(key, cfg, score, 0), [1, 1, 0, 0, 0, 0])
    inv = ReDoConfig(tau=0.1, selection="inverse")
    np.testing.assert_array_equal(select_neurons(key, inv, score, 0), [0, 0, 1, 0, 0, 1])
    rnd = ReDoConfig(tau=0.1, selection="random")
    picks = [np.asarray(select_neurons(jax.random.key(i), rnd, score, 0)) for i in range(20)]
    assert all(p.sum() == 2 for p in picks) and len({p.tobytes() for p in picks}) > 1
    sch = ReDoConfig(tau=0.1, selection="scheduled", scheduled_fraction=0.5, schedule_steps=100)
    np.testing.assert_array_equal(select_neurons(key, sch, score, 0), [1, 1, 0, 0, 1, 0])  # 3 lowest
    assert int(select_neurons(key, sch, score, 50).sum()) == 1  # 0.5 * 0.5 * 6 = 1.5 -> 1
    assert int(select_neurons(key, sch, score, 100).sum()) == 0


@pytest.mark.parametrize(
    "fraction, steps, step, n, expected",
    [
        (0.1, 100, 50, 20, 1),
        (0.1, 100, 0, 20, 2),
        (0.1, 100, 100, 20, 0),
        (0.2, 10, 5, 10, 1),
        (0.3, 1000, 500, 100, 15),
        (1.0, 4, 2, 6, 3),
        (0.5, 3, 0, 7, 3),
    ],
)
def test_scheduled_selection_at_exact_boundaries(fraction, steps, step, n, expected):
    """Counts whose exact value is an integer: float32 cosine must not floor them one lower."""
    cfg = ReDoConfig(selection="scheduled", scheduled_fraction=fraction, schedule_steps=steps)
    score = jnp.arange(n, dtype=jnp.float32)
    assert int(select_neurons(jax.random.key(0), cfg, score, jnp.int32(step)).sum()) == expected
    assert int(jax.jit(lambda s: select_neurons(jax.random.key(0), cfg, score, s).sum())(jnp.int32(step))) == expected


def test_optimizer_momentum_is_used_or_rejected():
    grads = [{"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.5, 0.5])}, {"w": jnp.array([-1.0, 3.0])}]

    def run(tx):
        params, state, out = {"w": jnp.zeros(2)}, tx.init({"w": jnp.zeros(2)}), []
        for g in grads:
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
            out.append(params["w"])
        return np.stack(out)

    cfg = OptimizerConfig("rmsprop", 0.1, eps=1e-6, momentum=0.9, rms_decay=0.99)
    np.testing.assert_allclose(run(make_optimizer(cfg)), run(optax.rmsprop(0.1, 0.99, 1e-6, momentum=0.9)), rtol=1e-6)
    assert not np.allclose(
        run(make_optimizer(cfg)), run(make_optimizer(OptimizerConfig("rmsprop", 0.1, eps=1e-6, rms_decay=0.99)))
    )
    sgd = OptimizerConfig("sgd", 0.1, momentum=0.5)
    np.testing.assert_allclose(run(make_optimizer(sgd)), run(optax.sgd(0.1, momentum=0.5)), rtol=1e-6)
    with pytest.raises(ValueError, match="momentum.*adam"):
        OptimizerConfig("adam", momentum=0.9)
    with pytest.raises(ValueError, match="momentum must be in"):
        OptimizerConfig("sgd", momentum=1.5)


def test_redo_jit_and_vmap_over_seeds_match_plain_calls():
    iv = redo(ReDoConfig(tau=0.5, selection="random"), TOPO, init_params)

    def one(key):
        state = TrainState.create(init_params(key), optax.adam(1e-3))
        return iv.apply(key, state, scores_of(state), Context.at(0)).params

    keys = jax.random.split(jax.random.key(4), 2)
    batched = jax.jit(jax.vmap(one))(keys)
    for i in range(2):
        plain = one(keys[i])
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(batched)):
            np.testing.assert_allclose(a, b[i], rtol=1e-6, atol=1e-7)
    again = jax.jit(jax.vmap(one))(keys)
    for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)


def test_every_gates_by_the_loop_step():
    state = trained_state(steps=2)
    gated = every(redo(ReDoConfig(tau=10.0), TOPO, init_params), period=2)  # τ = 10: everything recycled
    scores = scores_of(state)
    fired = gated.apply(jax.random.key(0), state, scores, Context.at(4))
    assert not np.array_equal(fired.params["output"]["kernel"], state.params["output"]["kernel"])
    for context in (Context.at(3), Context.at(0), Context.at(3, task=1, task_switched=True)):
        skipped = gated.apply(jax.random.key(0), state, scores, context)
        np.testing.assert_array_equal(skipped.params["output"]["kernel"], state.params["output"]["kernel"])


@pytest.mark.parametrize(
    "trigger, fires_at",
    [
        ("period", {(4, False), (4, True)}),
        ("task_switch", {(3, True), (4, True)}),
        ("both", {(4, False), (4, True), (3, True)}),
    ],
)
def test_triggers_every_f_at_task_switch_or_both(trigger, fires_at):
    state = trained_state(steps=2)
    scores = scores_of(state)
    iv = make_intervention(
        PlasticityConfig("redo", trigger=trigger, redo=ReDoConfig(tau=10.0, period=2)), TOPO, init_params
    )
    run = jax.jit(lambda step, switched: iv.apply(jax.random.key(0), state, scores, Context.at(step, 1, switched)))
    for step in (3, 4):
        for switched in (False, True):
            new = run(step, switched)
            changed = not np.array_equal(new.params["output"]["kernel"], state.params["output"]["kernel"])
            assert changed == ((step, switched) in fires_at), (trigger, step, switched)


def test_registry_is_the_one_vocabulary():
    assert set(METHODS) >= {"none", "redo", "reset", "shrink_perturb", "weight_decay"}
    with pytest.raises(ValueError, match=r"PlasticityConfig.method.*allowed values"):
        PlasticityConfig("wd")
    with pytest.raises(ValueError, match=r"PlasticityConfig.trigger.*allowed values"):
        PlasticityConfig("redo", trigger="sometimes")
    with pytest.raises(ValueError, match="weight_decay must be > 0"):
        PlasticityConfig("weight_decay")
    wd = PlasticityConfig("weight_decay", weight_decay=1e-5)
    assert wd.intervention is None and wd.optimizer(OptimizerConfig()).weight_decay == 1e-5
    assert PlasticityConfig("redo").needs_scores and not PlasticityConfig("reset").needs_scores
    with pytest.raises(ValueError, match="already registered"):
        register_method(REGISTRY["redo"])


def test_on_update_hook_and_typed_state_reach_the_learner():
    """A method with typed state and a per-update hook (the shape CBP needs): counts updates."""
    from typing import NamedTuple

    class Count(NamedTuple):
        updates: jax.Array

    iv = Intervention(
        lambda p: Count(jnp.zeros((), jnp.int32)),
        lambda k, s, sc, c: s,
        lambda key, s, activity: s.replace(intervention_state=Count(s.intervention_state.updates + 1)),
    )
    state = TrainState.create(init_params(jax.random.key(0)), optax.sgd(0.1), iv.init(None))
    step = jax.jit(lambda s: iv.on_update(None, s.apply_gradients(jax.tree.map(jnp.ones_like, s.params)), dict))
    for _ in range(3):
        state = step(state)
    assert isinstance(state.intervention_state, Count) and int(state.intervention_state.updates) == 3


def test_reset_last_k_layers():
    state = trained_state()
    fresh = init_params(jax.random.key(8))
    iv = reset(ResetConfig(last_k=2), TOPO, init_params)
    iv.init(state.params)
    new = iv.apply(jax.random.key(8), state, None, Context.at(state.step))
    for name in ("output", "dense_0"):
        np.testing.assert_array_equal(new.params[name]["kernel"], fresh[name]["kernel"])
        np.testing.assert_array_equal(new.opt_state[0].mu[name]["kernel"], 0.0)
    np.testing.assert_array_equal(new.params["conv_1"]["kernel"], state.params["conv_1"]["kernel"])
    np.testing.assert_array_equal(new.opt_state[0].nu["conv_1"]["kernel"], state.opt_state[0].nu["conv_1"]["kernel"])


def test_shrink_perturb_formula():
    state = trained_state(steps=1)
    fresh = init_params(jax.random.key(3))
    new = shrink_perturb(ShrinkPerturbConfig(shrink=0.5, perturb=0.1), TOPO, init_params).apply(
        jax.random.key(3), state, None, Context.at(1)
    )
    np.testing.assert_allclose(
        new.params["dense_0"]["kernel"],
        0.5 * state.params["dense_0"]["kernel"] + 0.1 * fresh["dense_0"]["kernel"],
        rtol=1e-6,
    )


def test_weight_decay_modes_by_hand():
    params = {"w": jnp.array([2.0, -1.0])}
    grads = {"w": jnp.array([0.5, 0.5])}
    sgd_l2 = make_optimizer(OptimizerConfig("sgd", learning_rate=0.1, weight_decay=0.01))
    upd, _ = sgd_l2.update(grads, sgd_l2.init(params), params)
    np.testing.assert_allclose(upd["w"], -0.1 * (grads["w"] + 0.01 * params["w"]), rtol=1e-6)
    adamw = make_optimizer(OptimizerConfig("adam", learning_rate=0.1, weight_decay=0.01, decay_mode="decoupled"))
    upd, _ = adamw.update(grads, adamw.init(params), params)
    np.testing.assert_allclose(upd["w"], -0.1 * (jnp.sign(grads["w"]) + 0.01 * params["w"]), rtol=1e-4)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: ReDoConfig(tau=-0.1), "tau"),
        (lambda: ReDoConfig(selection="lowest"), r"selection.*allowed values.*dormant"),
        (lambda: ReDoConfig(score="loss"), r"score.*allowed values"),
        (lambda: ReDoConfig(selection="scheduled"), "schedule_steps"),
        (lambda: ResetConfig(last_k=0), "last_k"),
        (
            lambda: reset(ResetConfig(last_k=5), TOPO, init_params).init(init_params(jax.random.key(0))),
            r"last_k.*allowed values are 1..4",
        ),
        (lambda: OptimizerConfig(name="lion"), r"name.*allowed values"),
        (lambda: ShrinkPerturbConfig(shrink=1.5), "shrink"),
        (lambda: make_intervention("redo", TOPO, init_params), "allowed values"),
    ],
)
def test_invalid_settings_name_field_and_allowed_values(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_gated_redo_inside_scan_under_vmap_matches_python_loop():
    """The loop shape of the training runners: scan over periods, diagnose, gated intervention."""
    iv = make_intervention(ReDoConfig(tau=0.3, period=2), TOPO, init_params)

    def period(state, key):
        grads = jax.grad(lambda p: loss_fn(apply(p, X)))(state.params)
        state = state.apply_gradients(grads)
        return iv.apply(key, state, scores_of(state), Context.at(state.step)), state.step

    def run(seed):
        state = TrainState.create(init_params(jax.random.PRNGKey(seed)), optax.adam(1e-2))
        return jax.lax.scan(period, state, jax.random.split(jax.random.PRNGKey(seed + 10), 4))[0].params

    batched = jax.jit(jax.vmap(run))(jnp.arange(2))
    state = TrainState.create(init_params(jax.random.PRNGKey(1)), optax.adam(1e-2))
    step = jax.jit(period)
    for key in jax.random.split(jax.random.PRNGKey(11), 4):
        state, _ = step(state, key)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(batched)):
        np.testing.assert_allclose(a, b[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "optimizer",
    [
        OptimizerConfig("adam", 1e-2, weight_decay=1e-2, decay_mode="decoupled", max_grad_norm=1.0),
        OptimizerConfig("rmsprop", 1e-2, momentum=0.9, weight_decay=1e-3),
        OptimizerConfig("sgd", 1e-1, momentum=0.9, weight_decay=1e-2, decay_mode="decoupled"),
    ],
    ids=["adamw-clip", "rmsprop-momentum-l2", "sgd-momentum-decoupled"],
)
def test_frozen_elements_stay_bit_identical_for_ten_steps(optimizer):
    params = init_params(jax.random.key(3))
    keys = iter(jax.random.split(jax.random.key(4), 100))
    trainable = jax.tree.map(lambda p: jax.random.bernoulli(next(keys), 0.5, p.shape), params)
    state = TrainState.create(params, make_optimizer(optimizer), trainable=trainable)
    step = jax.jit(lambda s: s.apply_gradients(jax.grad(lambda p: loss_fn(apply(p, X)))(s.params)))
    for _ in range(10):
        state = step(state)
    for new, old, t in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), jax.tree.leaves(trainable)):
        t = np.asarray(t)
        np.testing.assert_array_equal(np.asarray(new)[~t], np.asarray(old)[~t])  # frozen: bit-identical
        assert np.all(np.asarray(new)[t] != np.asarray(old)[t])  # trainable: every element moved
    frozen = jax.tree.map(jnp.logical_not, trainable)
    moments = optax.tree_map_params(
        state.tx,
        lambda m, f: jnp.sum(jnp.abs(jnp.where(f, m, 0.0))),
        state.opt_state,
        frozen,
        transform_non_params=lambda leaf: jnp.zeros(()),
    )
    assert float(sum(jax.tree.leaves(moments))) == 0.0  # frozen elements' moments stay zero
    live = optax.tree_map_params(
        state.tx,
        lambda m, f: jnp.sum(jnp.abs(jnp.where(f, 0.0, m))),
        state.opt_state,
        frozen,
        transform_non_params=lambda leaf: jnp.zeros(()),
    )
    assert float(sum(jax.tree.leaves(live))) > 0.0


def test_fixed_parameters_get_no_optimizer_state_and_leave_the_others_stepping_as_before():
    """A ``trainable`` leaf given as the Python ``False`` is a fixed parameter (``TrainState.fixed``):
    no optimizer state, bit-identical through 10 steps (last update 0), and every other parameter
    steps as it does when that leaf is merely frozen by an all-False mask (clipping's global norm
    included: a frozen leaf's gradient is 0 there too); under jit and vmap alike."""
    params = init_params(jax.random.key(3))
    keys = iter(jax.random.split(jax.random.key(4), 100))
    masks = jax.tree.map(lambda p: jax.random.bernoulli(next(keys), 0.5, p.shape), params)
    (first, *_), treedef = jax.tree_util.tree_flatten_with_path(params)
    path = tuple(k.key for k in first[0])
    leaves = jax.tree.leaves(masks)
    fixed_mask = jax.tree.unflatten(treedef, [False] + leaves[1:])
    frozen_mask = jax.tree.unflatten(treedef, [jnp.zeros(leaves[0].shape, bool)] + leaves[1:])
    tx = make_optimizer(OptimizerConfig("adam", 1e-2, weight_decay=1e-2, decay_mode="decoupled", max_grad_norm=1.0))

    def run(mask):
        state = TrainState.create(params, tx, trainable=mask, keep_last_update=True)
        step = lambda _, s: s.apply_gradients(jax.grad(lambda p: loss_fn(apply(p, X)))(s.params))  # noqa: E731
        return jax.lax.fori_loop(0, 10, step, state)

    fixed, frozen = jax.jit(lambda: (run(fixed_mask), run(frozen_mask)))()
    assert fixed.fixed == {path} and frozen.fixed == frozenset()
    assert len(jax.tree.leaves(fixed.opt_state)) == len(jax.tree.leaves(frozen.opt_state)) - 2  # Adam's mu and nu
    np.testing.assert_array_equal(get_path(fixed.params, path), get_path(params, path))
    np.testing.assert_array_equal(get_path(fixed.last_update, path), 0.0)
    np.testing.assert_array_equal(get_path(fixed.trainable, path), False)  # the full mask still has it
    for a, b in zip(jax.tree.leaves(fixed.params), jax.tree.leaves(frozen.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    batched = jax.jit(jax.vmap(lambda _: run(fixed_mask)))(jnp.arange(2))
    for a, b in zip(jax.tree.leaves(batched.params), jax.tree.leaves(fixed.params)):
        np.testing.assert_allclose(a[1], b, rtol=1e-6, atol=1e-7)
    touched = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    fresh = fixed.with_fresh_moments(touched).opt_state
    assert all(float(jnp.abs(m).max()) == 0 for m in jax.tree.leaves(fresh) if m.dtype == jnp.float32)
    with pytest.raises(ValueError, match="never train"):
        fixed.with_trainable(None)
    unfrozen = fixed.with_trainable(jax.tree.map(lambda p: jnp.ones(p.shape, bool), params))
    np.testing.assert_array_equal(get_path(unfrozen.trainable, path), False)  # a fixed parameter stays frozen


CHAINS = {  # every branch of make_optimizer's declaration: stateful or not, L2 or decoupled decay
    f"{name}{'-momentum' if m else ''}-{mode or 'no-decay'}{'-clip' if clip else ''}": OptimizerConfig(
        name, 1e-2, momentum=m, weight_decay=1e-2 if mode else 0.0, decay_mode=mode or "l2", max_grad_norm=clip
    )
    for name, m, mode, clip in [
        ("adam", 0.0, "l2", 1.0),
        ("adam", 0.0, "decoupled", 0.0),
        ("rmsprop", 0.0, None, 1.0),
        ("rmsprop", 0.9, "l2", 0.0),
        ("rmsprop", 0.9, "decoupled", 1.0),
        ("sgd", 0.0, "l2", 0.0),
        ("sgd", 0.9, None, 0.0),
        ("sgd", 0.9, "l2", 1.0),
    ]
}


@pytest.mark.parametrize("optimizer", CHAINS.values(), ids=CHAINS.keys())
def test_zero_preserving_chains_need_no_moment_reset(optimizer):
    """Every chain make_optimizer declares ZeroPreserving keeps the moments of frozen elements at
    exactly 0 without the reset after each step and steps as the same chain with the reset (up to
    float contraction: another program); the chains it does not declare (an L2 penalty before a
    moment) really would leave frozen moments non-zero."""
    from plastix.interventions import ZeroPreserving

    k = jax.random.split(jax.random.key(3), 5)
    params = {"w": jax.random.normal(k[0], (6, 3)), "b": jax.random.normal(k[1], (3,))}
    trainable = {"w": jax.random.bernoulli(k[2], 0.5, (6, 3)), "b": jnp.array([True, False, True])}
    frozen = jax.tree.map(jnp.logical_not, trainable)
    x = jax.random.normal(k[4], (16, 6))
    tx = make_optimizer(optimizer)

    def run(chain):
        state = TrainState.create(params, chain, trainable=trainable)
        grad = jax.grad(lambda p: jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2))
        step = lambda _, s: s.apply_gradients(grad(s.params))  # noqa: E731
        state = jax.lax.fori_loop(0, 5, step, state)
        moments = optax.tree_map_params(
            tx, lambda m, f: jnp.abs(jnp.where(f, m, 0.0)).sum(), state.opt_state, frozen,
            transform_non_params=lambda leaf: jnp.zeros(()),
        )  # fmt: skip
        return state.params, sum(jax.tree.leaves(moments))

    declared = isinstance(tx, ZeroPreserving)
    stateful = optimizer.name != "sgd" or optimizer.momentum > 0
    assert declared == (not (optimizer.weight_decay > 0 and optimizer.decay_mode == "l2" and stateful))
    both = jax.jit(lambda: (run(optax.GradientTransformationExtraArgs(*tx)), run(ZeroPreserving(*tx))))
    (reset_params, reset_moments), (kept_params, kept_moments) = both()  # reset every step / never
    assert reset_moments == 0.0
    assert (kept_moments == 0.0) == declared
    if declared:
        for a, b in zip(jax.tree.leaves(reset_params), jax.tree.leaves(kept_params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_trainable_none_is_the_plain_optimizer_step():
    params = init_params(jax.random.key(3))
    tx = optax.adam(1e-2)
    grads = jax.grad(lambda p: loss_fn(apply(p, X)))(params)
    a = TrainState.create(params, tx).apply_gradients(grads)
    b = TrainState.create(params, tx, trainable=jax.tree.map(lambda p: True, params)).apply_gradients(grads)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)


def test_last_update_is_what_the_step_applied_and_zero_when_frozen():
    params = init_params(jax.random.key(3))
    trainable = jax.tree.map(lambda p: jnp.arange(p.size).reshape(p.shape) % 2 == 0, params)
    for mask in (None, trainable):
        state = TrainState.create(params, optax.adam(1e-2), trainable=mask, keep_last_update=True)
        assert all(float(jnp.abs(u).sum()) == 0 for u in jax.tree.leaves(state.last_update))
        new = state.apply_gradients(jax.grad(lambda p: loss_fn(apply(p, X)))(state.params))
        for u, p1, p0 in zip(*(jax.tree.leaves(t) for t in (new.last_update, new.params, params))):
            np.testing.assert_allclose(np.asarray(u), np.asarray(p1 - p0), atol=1e-7)
    assert TrainState.create(params, optax.adam(1e-2)).last_update is None  # off unless asked for


def test_stagnation_from_last_update_reaches_diagnose():
    state = TrainState.create(init_params(jax.random.key(3)), optax.sgd(0.1), keep_last_update=True)
    state = state.apply_gradients(jax.grad(lambda p: loss_fn(apply(p, X)))(state.params))
    from plastix.metrics import DiagnosticsConfig

    by_update = diagnose(
        TOPO, NET.apply, state.params, X, loss_fn, DiagnosticsConfig(stagnation_source="update"), state.last_update
    )
    # with plain SGD the last update is −lr × the gradient of that step: ratios 0.1× those from that gradient
    grads = jax.grad(lambda p: loss_fn(apply(p, X)))(init_params(jax.random.key(3)))
    config = DiagnosticsConfig(stagnation_source="update")
    by_grad = diagnose(TOPO, NET.apply, state.params, X, loss_fn, config, grads)
    for name in TOPO.names:
        np.testing.assert_allclose(
            by_update.layers[name].stagnation_ratio, 0.1 * by_grad.layers[name].stagnation_ratio, rtol=1e-4, atol=1e-9
        )
        np.testing.assert_allclose(
            by_update.layers[name].stagnant_score, by_grad.layers[name].stagnant_score, rtol=1e-3
        )


@pytest.mark.parametrize(
    "score, mask_field, threshold", [("dormant", "dormant", "tau"), ("grama", "grama_dormant", "grama_tau")]
)
def test_redo_without_tau_recycles_exactly_what_the_diagnostics_report(score, mask_field, threshold):
    from plastix.metrics import DiagnosticsConfig

    state = trained_state()
    diags = diagnose(TOPO, NET.apply, state.params, X, loss_fn, DiagnosticsConfig(**{threshold: 0.5}))
    for layer in TOPO.layers:
        reported = getattr(diags.layers[layer.name], mask_field)
        chosen = select_neurons(
            jax.random.key(0),
            ReDoConfig(score=score),
            getattr(diags.layers[layer.name], f"{score}_score"),
            state.step,
            reported,
        )
        np.testing.assert_array_equal(chosen, reported)
        explicit = select_neurons(
            jax.random.key(0), ReDoConfig(tau=0.5, score=score), getattr(diags.layers[layer.name], f"{score}_score"), 0
        )
        np.testing.assert_array_equal(explicit, reported)
    assert sum(int(getattr(diags.layers[n], mask_field).sum()) for n in TOPO.names) > 0, "the test needs some"


def test_any_run_reduces_over_every_vmapped_level_and_keeps_the_conditional():
    from plastix.jit import any_run

    assert bool(any_run(jnp.asarray(True))) and not bool(jax.jit(any_run)(jnp.asarray(False)))
    runs = jnp.array([False, True, False])  # (vmap broadcasts the one unbatched answer to every run)
    np.testing.assert_array_equal(jax.vmap(any_run)(runs), [True] * 3)
    np.testing.assert_array_equal(jax.vmap(any_run)(jnp.zeros(3, bool)), [False] * 3)
    grid = jnp.array([[False, False], [False, True]])
    np.testing.assert_array_equal(jax.vmap(jax.vmap(any_run))(grid), jnp.ones((2, 2), bool))
    np.testing.assert_array_equal(jax.vmap(jax.vmap(any_run))(jnp.zeros((2, 2), bool)), jnp.zeros((2, 2), bool))

    def step(pred, x):
        return jax.lax.cond(any_run(pred), lambda v: jnp.where(pred, v + 1, v), lambda v: v, x)

    hlo = jax.jit(jax.vmap(step)).lower(runs, jnp.zeros(3)).as_text()
    assert "stablehlo.case" in hlo or "stablehlo.if" in hlo  # still a conditional, not a select of both
    np.testing.assert_array_equal(jax.jit(jax.vmap(step))(runs, jnp.zeros(3)), [0.0, 1.0, 0.0])


def test_when_any_copies_per_run_inside_one_conditional():
    """A target sync: each run gets ``source`` where its own ``pred`` holds; vmapped, one
    conditional that copies only when some run syncs."""
    from plastix.jit import when_any

    def copy_where(pred, source, dest):  # a target sync
        return when_any(pred, lambda dest: source, dest)

    source = {"w": jnp.arange(6.0).reshape(3, 2), "b": jnp.arange(3.0)}
    dest = jax.tree.map(lambda x: -x - 1, source)
    runs = jnp.array([True, False, True])
    out = jax.jit(jax.vmap(copy_where))(runs, source, dest)
    for name in source:
        np.testing.assert_array_equal(out[name], jnp.where(runs.reshape(-1, *[1] * (source[name].ndim - 1)),
                                                           source[name], dest[name]))  # fmt: skip
    none = jax.jit(jax.vmap(copy_where))(jnp.zeros(3, bool), source, dest)
    jax.tree.map(np.testing.assert_array_equal, none, dest)
    single = copy_where(jnp.asarray(True), {"w": source["w"][0]}, {"w": dest["w"][0]})
    np.testing.assert_array_equal(single["w"], source["w"][0])
    hlo = jax.jit(jax.vmap(copy_where)).lower(runs, source, dest).as_text()
    assert "stablehlo.case" in hlo or "stablehlo.if" in hlo


def test_changed_elements_counts_every_differing_element_of_every_dtype():
    from plastix.interventions.base import changed_elements

    before = {
        "w": jnp.zeros((3, 4)),
        "b": jnp.arange(5),
        "mask": jnp.ones(6, bool),
        "opt": (jnp.ones(2), jnp.zeros(())),
    }
    after = {
        "w": jnp.zeros((3, 4)).at[0, 1].set(2.0).at[2, 3].set(-1.0),
        "b": jnp.arange(5).at[4].set(0),
        "mask": jnp.ones(6, bool).at[:3].set(False),
        "opt": (jnp.ones(2), jnp.ones(())),
    }
    assert int(changed_elements(before, after)) == 2 + 1 + 3 + 1
    assert int(jax.jit(changed_elements)(before, before)) == 0
    assert int(changed_elements({}, {})) == 0
