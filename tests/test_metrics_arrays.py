"""Array-level metrics against hand-computed references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import metrics as pm

EPS = 1e-9


def test_dormant_scores_hand_computed():
    h = jnp.array([[1.0, 0.0, -2.0], [3.0, 0.0, 2.0]])  # E|h| = [2, 0, 2], layer mean 4/3
    np.testing.assert_allclose(pm.dormant_scores(h), [1.5, 0.0, 1.5], rtol=1e-6)


def test_dormant_scores_all_zero_layer_is_all_dormant():
    s = pm.dormant_scores(jnp.zeros((5, 4)))
    np.testing.assert_array_equal(s, np.zeros(4))
    assert bool(jnp.all(s <= 0.0))  # τ = 0: every neuron dormant


def test_dormant_scores_batch_of_one():
    np.testing.assert_allclose(pm.dormant_scores(jnp.array([[2.0, 0.0, 4.0, 2.0]])), [1.0, 0.0, 2.0, 1.0])


def test_dormant_scores_conv_channels_average_over_spatial_positions():
    h = np.zeros((2, 2, 2, 2), np.float32)  # (batch, H, W, C)
    h[0, 0, 0, 0] = 8.0  # channel 0: mean over 8 positions = 1
    h[:, :, :, 1] = 3.0  # channel 1: mean 3
    np.testing.assert_allclose(pm.dormant_scores(h), [1.0 / 2.0, 3.0 / 2.0], rtol=1e-6)


def test_grama_scores_mean_abs_over_incoming_weights():
    g = jnp.array([[1.0, -4.0], [-3.0, 0.0]])  # g_i = [2, 2]
    np.testing.assert_allclose(pm.grama_scores(g), [1.0, 1.0], rtol=1e-6)
    conv = np.zeros((3, 3, 2, 2), np.float32)
    conv[..., 1] = -1.0  # neuron 0: 0, neuron 1: 1 -> mean 0.5
    np.testing.assert_allclose(pm.grama_scores(conv), [0.0, 2.0], rtol=1e-6)


def test_preactivation_grama_is_dormant_formula_on_dz():
    dz = jnp.array([[0.5, -1.5], [-0.5, 0.5]])  # E|dz| = [0.5, 1.0], mean 0.75
    np.testing.assert_allclose(pm.preactivation_grama_scores(dz), [2 / 3, 4 / 3], rtol=1e-6)


def test_stagnation_ratios_include_bias():
    kernel = jnp.array([[3.0, 0.0], [0.0, 1.0]])
    bias = jnp.array([4.0, 0.0])  # ‖w_0‖ = 5, ‖w_1‖ = 1
    dk = jnp.array([[0.0, 0.3], [0.0, 0.4]])
    db = jnp.array([0.5, 0.0])  # ‖Δ_0‖ = 0.5, ‖Δ_1‖ = 0.5
    r = pm.stagnation_ratios(kernel, dk, bias, db)
    np.testing.assert_allclose(r, [0.1, 0.5], rtol=1e-6)
    np.testing.assert_allclose(pm.stagnant_scores(kernel, dk, bias, db), [0.1 / 0.3, 0.5 / 0.3], rtol=1e-6)
    # without bias only the kernel counts
    np.testing.assert_allclose(pm.stagnation_ratios(kernel, dk), [0.0, 0.5], rtol=1e-6)


def test_stagnation_ratio_of_zero_weights_uses_eps():
    r = pm.stagnation_ratios(jnp.zeros((2, 1)), jnp.ones((2, 1)))
    np.testing.assert_allclose(r, [np.sqrt(2) / EPS], rtol=1e-5)


def test_stagnation_ratios_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="delta_bias"):
        pm.stagnation_ratios(jnp.ones((2, 2)), jnp.ones((2, 2)), bias=jnp.ones(2))
    with pytest.raises(ValueError, match="same shape"):
        pm.stagnation_ratios(jnp.ones((2, 2)), jnp.ones((3, 2)))


@pytest.mark.parametrize(
    "a,b,expected",
    [
        ([1, 1, 0, 0], [1, 0, 1, 0], 0.5),
        ([1, 0, 0, 0], [1, 1, 1, 0], 1.0),  # subset -> 1
        ([0, 0, 0, 0], [0, 0, 0, 0], 1.0),  # both empty
        ([0, 0, 0, 0], [1, 0, 0, 0], 0.0),  # exactly one empty
        ([1, 1, 0, 0], [0, 0, 1, 1], 0.0),
    ],
)
def test_overlap_coefficient(a, b, expected):
    assert float(pm.overlap_coefficient(jnp.array(a, bool), jnp.array(b, bool))) == expected


def test_active_fraction():
    h = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    assert float(pm.active_fraction(h)) == pytest.approx(2 / 3)


def test_effective_rank_and_srank_hand_computed():
    f = jnp.diag(jnp.array([3.0, 1.0, 0.0]))  # σ = [3, 1, 0], p = [.75, .25]
    expected = np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    assert float(pm.effective_rank(f)) == pytest.approx(expected, rel=1e-5)
    assert int(pm.srank(f, 0.01)) == 2
    assert int(pm.srank(f, 0.3)) == 1  # 3/4 >= 0.7
    eye = jnp.eye(4)
    assert float(pm.effective_rank(eye)) == pytest.approx(4.0, rel=1e-5)
    assert int(pm.srank(eye)) == 4
    assert int(pm.srank(jnp.zeros((3, 3)))) == 0


def test_metrics_jit_and_vmap_match_plain_calls():
    h = jax.random.normal(jax.random.key(0), (3, 16, 5))
    plain = jnp.stack([pm.dormant_scores(x) for x in h])
    np.testing.assert_allclose(jax.vmap(pm.dormant_scores)(h), plain, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(pm.dormant_scores)(h[0]), plain[0], rtol=1e-6)


def test_rank_measures_match_numpy_svd_on_random_features():
    f = np.asarray(jax.random.normal(jax.random.key(5), (64, 16))) @ np.diag(np.logspace(0, -2, 16))
    s = np.linalg.svd(f, compute_uv=False)
    p = s / s.sum()
    assert float(pm.effective_rank(f)) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-3)
    assert int(pm.srank(f, 0.01)) == int(np.searchsorted(np.cumsum(s) / s.sum(), 0.99) + 1)
    assert float(pm.effective_rank(f.T)) == pytest.approx(float(pm.effective_rank(f)), rel=1e-3)  # wide matrices too
