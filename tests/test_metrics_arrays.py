"""Array-level metrics against hand-computed references."""

import os

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


def test_vmapped_eigen_solves_run_one_matrix_at_a_time_on_cpu():
    """Batched LAPACK eigen-solves deadlock XLA:CPU's intra-op pool when two run at once (jaxlib 0.10):
    under vmap, the diagnostics' rank measures must call LAPACK on single matrices."""
    import re

    from plastix.metrics import effective_rank, srank

    if jax.default_backend() != "cpu":
        pytest.skip("the single-matrix path is for XLA:CPU")
    x = jax.random.normal(jax.random.key(0), (2, 32, 8))
    y = jax.random.normal(jax.random.key(1), (2, 32, 12))
    f = jax.jit(jax.vmap(lambda a, b: (effective_rank(a), srank(b))))
    hlo = f.lower(x, y).compile().as_text()
    lapack = [line for line in hlo.splitlines() if 'custom_call_target="lapack' in line]
    assert lapack, "expected LAPACK eigen-solves in the program"
    assert not any(re.search(r"f32\[\d+,\d+,\d+\]", line) for line in lapack), lapack
    single = [float(effective_rank(x[i])) for i in range(2)]
    np.testing.assert_allclose(f(x, y)[0], single, rtol=1e-5)


def test_gru_orthogonal_initializer_is_orthonormal_and_lapack_free():
    from plastix.nn.recurrent import orthogonal

    init = orthogonal()
    for shape in ((16, 16), (24, 8), (8, 24)):
        q = np.asarray(init(jax.random.key(0), shape))
        gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
        np.testing.assert_allclose(gram, np.eye(min(shape)), atol=1e-5)
    hlo = jax.jit(jax.vmap(lambda k: init(k, (16, 16)))).lower(jax.random.split(jax.random.key(0), 2)).as_text()
    assert "lapack" not in hlo and "householder" not in hlo.lower()
    from plastix.nn.recurrent import GRUAgent

    agent = GRUAgent(16, 3)
    draw = jax.vmap(lambda k: agent.init(k, jnp.zeros((1, 2, 4))))
    assert "lapack" not in jax.jit(draw).lower(jax.random.split(jax.random.key(0), 2)).as_text()


def test_tf32_emulation_rounds_default_precision_products_only():
    """``tests/tf32_emulation.py`` (a developer's plugin, loaded in a subprocess so the lowering it
    registers stays out of this one): a float32 product at default precision gets TF32's error
    (~1e-4 relative), one at ``precision="highest"`` keeps float32's (~1e-7)."""
    import subprocess
    import sys

    code = """
import numpy as np, jax, jax.numpy as jnp
import tf32_emulation
x = jax.random.normal(jax.random.key(0), (64, 256)); w = jax.random.normal(jax.random.key(1), (256, 64))
ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
err = lambda y: float(np.abs(np.asarray(y) - ref).max() / np.abs(ref).max())
print(err(jax.jit(jnp.dot)(x, w)), err(jax.jit(lambda a, b: jnp.dot(a, b, precision="highest"))(x, w)))
"""
    tests = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    default, highest = map(float, out.stdout.split())
    assert 3e-5 < default < 2e-3, default
    assert highest < 3e-6, highest
