"""Network-level diagnostics against hand computations on a tiny MLP."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix.metrics import DiagnosticsConfig, diagnose, summarize
from plastix.metrics import neurons as nm
from plastix.nn import MLP


@pytest.fixture(scope="module")
def setup():
    net = MLP((4, 3), out=2)
    x = jax.random.normal(jax.random.key(0), (16, 5))
    params = net.init(jax.random.key(1), x)["params"]
    # make neuron 1 of hidden_0 dead: large negative bias
    params["hidden_0"]["bias"] = params["hidden_0"]["bias"].at[1].set(-100.0)
    target = jax.random.normal(jax.random.key(2), (16, 2))
    apply = lambda p, i: net.apply({"params": p}, i)  # noqa: E731
    loss_of = lambda p: jnp.mean((apply(p, x) - target) ** 2)  # noqa: E731
    return net, x, params, target, apply, loss_of


def test_diagnose_matches_hand_computation(setup):
    net, x, params, target, apply, loss_of = setup
    diag = diagnose(net.topology(), net.apply, params, x, lambda o: jnp.mean((o - target) ** 2))
    k0, b0 = params["hidden_0"]["kernel"], params["hidden_0"]["bias"]
    z0 = x @ k0 + b0
    h0 = jax.nn.relu(z0)
    s = jnp.abs(h0).mean(0) / (jnp.abs(h0).mean(0).mean() + 1e-9)
    layer = diag.layers["hidden_0"]
    np.testing.assert_allclose(layer.dormant_score, s, rtol=1e-5)
    assert bool(layer.dormant[1]) and not bool(layer.active[1])
    grads = jax.grad(loss_of)(params)
    np.testing.assert_allclose(layer.grama_score, nm.grama_scores(grads["hidden_0"]["kernel"]), rtol=1e-5)
    np.testing.assert_allclose(
        layer.stagnation_ratio,
        nm.stagnation_ratios(k0, grads["hidden_0"]["kernel"], b0, grads["hidden_0"]["bias"]),
        rtol=1e-5,
    )
    # ∂L/∂z by hand: ∂L/∂z0 = (∂L/∂h0) * 1[z0 > 0]
    dz0 = jax.grad(lambda z: jnp.mean((_tail(params, jax.nn.relu(z)) - target) ** 2))(z0)
    np.testing.assert_allclose(layer.preact_grama_score, nm.preactivation_grama_scores(dz0), rtol=1e-4)
    assert float(diag.loss) == pytest.approx(float(loss_of(params)), rel=1e-6)
    # network-wide fraction counts neurons: (dormant in layer 0 + dormant in layer 1) / 7
    n_dormant = int(diag.layers["hidden_0"].dormant.sum() + diag.layers["hidden_1"].dormant.sum())
    assert float(diag.dormant_fraction) == pytest.approx(n_dormant / 7)


def _tail(params, h0):
    h1 = jax.nn.relu(h0 @ params["hidden_1"]["kernel"] + params["hidden_1"]["bias"])
    return h1 @ params["output"]["kernel"] + params["output"]["bias"]


def test_stagnation_from_updates_and_absolute_mode(setup):
    net, x, params, target, apply, _ = setup
    updates = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
    cfg = DiagnosticsConfig(stagnation_source="update", rho=1.0)
    diag = diagnose(net.topology(), net.apply, params, x, lambda o: jnp.mean(o**2), cfg, updates=updates)
    k, b = params["hidden_1"]["kernel"], params["hidden_1"]["bias"]
    expected = nm.stagnation_ratios(k, jnp.full_like(k, 1e-3), b, jnp.full_like(b, 1e-3))
    np.testing.assert_allclose(diag.layers["hidden_1"].stagnation_ratio, expected, rtol=1e-5)
    assert bool(diag.layers["hidden_1"].stagnant.all())  # every ratio is far below ρ = 1
    with pytest.raises(ValueError, match="updates"):
        diagnose(net.topology(), net.apply, params, x, lambda o: o.sum(), cfg)


@pytest.mark.parametrize(
    "kwargs,field",
    [({"tau": -0.1}, "tau"), ({"stagnation_source": "adam"}, "stagnation_source"), ({"rho": -1.0}, "rho")],
)
def test_invalid_diagnostics_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DiagnosticsConfig(**kwargs)


def test_diagnose_jit_vmap_equivalence_and_determinism(setup):
    net, x, _, _, apply, _ = setup
    keys = jax.random.split(jax.random.key(3), 2)
    params = jax.vmap(lambda k: net.init(k, x)["params"])(keys)
    loss = lambda o: optax.l2_loss(o).mean()  # noqa: E731
    run = lambda p: summarize(diagnose(net.topology(), net.apply, p, x, loss))  # noqa: E731
    batched = jax.jit(jax.vmap(run))(params)
    for i in range(2):
        single = run(jax.tree.map(lambda a: a[i], params))
        for key, value in single.items():
            np.testing.assert_allclose(batched[key][i], value, rtol=1e-5, atol=1e-6, err_msg=key)
    again = jax.jit(jax.vmap(run))(params)
    for key in batched:
        np.testing.assert_array_equal(batched[key], again[key])


def test_overlaps_pool_the_neurons_of_every_layer_by_hand():
    """Group and network overlaps count neurons of all their layers together, with DESIGN.md's
    convention for empty sets (1.0 when both are empty, 0 when one is)."""
    from types import SimpleNamespace

    from plastix.metrics.network import MASK_FIELDS, group_overlaps

    def layer(stagnant, dormant, grama):
        masks = dict.fromkeys(MASK_FIELDS, jnp.zeros(len(stagnant), bool))
        masks.update(stagnant=jnp.array(stagnant, bool), dormant=jnp.array(dormant, bool))
        return SimpleNamespace(**masks | {"grama_dormant": jnp.array(grama, bool)})

    # stagnant {0, 1, 3}, dormant {0, 3, 4}, GraMa {} over the two layers together
    layers = {"a": layer([1, 1, 0], [1, 0, 0], [0, 0, 0]), "b": layer([1, 0], [1, 1], [0, 0])}
    got = {k: float(v) for k, v in group_overlaps(layers).items()}
    assert got == pytest.approx(
        {"overlap_stagnant_dormant": 2 / 3, "overlap_stagnant_grama": 0.0, "overlap_dormant_grama": 0.0}
    )
    empty = {"a": layer([0, 0], [0, 0], [1, 0])}
    assert float(group_overlaps(empty)["overlap_stagnant_dormant"]) == 1.0  # both empty
