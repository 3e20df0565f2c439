"""IMPALA ResNet: its inner convs are neuron layers that metrics and ReDo handle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix.interventions import OptimizerConfig, TrainState, make_optimizer, recycle_neurons
from plastix.metrics import DiagnosticsConfig, diagnose
from plastix.nn import impala_resnet, validate


@pytest.mark.slow  # 25 s on a 2-core CPU; test_reset_resnet_follows_the_residual_stream stays in the default run
def test_impala_inner_convs_are_recycled_function_preserving_at_tau_zero():
    net = impala_resnet(4, width_multiplier=0.5)
    x = jax.random.uniform(jax.random.PRNGKey(0), (6, 12, 12, 2))
    params = net.init(jax.random.PRNGKey(1), x)["params"]
    topology = net.topology()
    validate(topology, params)
    assert topology.names[:2] == ("s0_b0_conv_a", "s0_b1_conv_a") and topology.names[-1] == "dense_0"
    assert len(topology.layers) == 3 * 2 + 1
    apply = lambda p, inp: net.apply({"params": p}, inp)  # noqa: E731
    diag = diagnose(topology, net.apply, params, x, lambda out: jnp.mean(out**2), DiagnosticsConfig(tau=0.0))
    assert diag.layers["s1_b0_conv_a"].dormant_score.shape == (16,)
    # recycle half the channels of one inner conv: its outgoing weights (conv_b input channels) become 0 ...
    state = TrainState.create(params, make_optimizer(OptimizerConfig()))
    mask = jnp.arange(16) < 8
    fresh = net.init(jax.random.PRNGKey(2), x)["params"]
    new = recycle_neurons(state, topology, {"s1_b0_conv_a": mask}, fresh).params
    assert jnp.all(new["s1_b0_conv_b"]["kernel"][:, :, :8, :] == 0)
    # ... so zeroing their contribution equals silencing them: with the old incoming weights kept,
    # the output equals the output with those channels' outgoing weights zeroed
    silenced = jax.tree.map(lambda a: a, params)
    silenced["s1_b0_conv_b"] = dict(
        params["s1_b0_conv_b"], kernel=params["s1_b0_conv_b"]["kernel"].at[:, :, :8, :].set(0)
    )
    np.testing.assert_allclose(apply(new, x), apply(silenced, x), rtol=1e-5, atol=1e-6)
    # τ = 0 with no dormant neuron: nothing changes, bit for bit
    none = {name: jnp.zeros_like(diag.layers[name].dormant) for name in topology.names}
    same = recycle_neurons(state, topology, none, fresh).params
    assert jnp.array_equal(apply(same, x), apply(params, x))
