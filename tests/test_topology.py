"""Topology: paths, consumer masks (brute-force flatten order), capture, user-declared modules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix.metrics import diagnose
from plastix.nn import MLP, Consumer, NeuronLayer, Topology, capture, get_path, small_cnn, validate


def test_builtin_topologies_validate():
    net = small_cnn(10)
    params = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    topo = net.topology()
    validate(topo, params)
    assert topo.names == ("conv_0", "conv_1", "dense_0")
    assert topo["conv_1"].consumers[0].axis == 0  # conv -> flatten -> dense: rows of dense_0
    mlp = MLP((8, 4), out=2)
    validate(mlp.topology(), mlp.init(jax.random.key(0), jnp.zeros((1, 3)))["params"])


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_flatten_mask_matches_brute_force_perturbation(layout):
    """Perturb one channel of a conv output; the dense rows whose gradient moves are its rows."""
    n_ch, hw = 3, 2

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(n_ch, (1, 1), name="conv")(x))
            if layout == "channels_first":
                x = jnp.transpose(x, (0, 3, 1, 2))
            return nn.Dense(2, name="head")(x.reshape(x.shape[0], -1))

    net = Net()
    x = jnp.zeros((1, hw, hw, 1))
    params = net.init(jax.random.key(0), x)["params"]
    topo = Topology.sequential(["conv"], "head", kinds=["conv"], flatten_layout=layout)
    consumer = topo["conv"].consumers[0]
    kernel_shape = params["head"]["kernel"].shape
    for c in range(n_ch):
        # only channel c is non-zero: a large positive perturbation of its pre-activation
        delta = jnp.zeros((1, hw, hw, n_ch)).at[..., c].set(1.0 + jnp.arange(hw * hw).reshape(1, hw, hw))

        def out_sum(p):
            return capture(net.apply, topo, {"conv": delta})(p, x)[0].sum()

        p0 = jax.tree.map(jnp.zeros_like, params)  # zero conv weights and bias: z = delta
        grad_rows = np.abs(np.asarray(jax.grad(out_sum)(p0)["head"]["kernel"])).sum(axis=1) > 0
        mask = np.asarray(consumer.input_mask(jnp.arange(n_ch) == c, kernel_shape))
        np.testing.assert_array_equal(mask.any(axis=1), grad_rows)
        assert mask.all(axis=1).sum() == mask.any(axis=1).sum()  # whole rows


def test_conv_consumer_mask_selects_input_channels():
    mask = Consumer(("c", "kernel"), "conv").input_mask(jnp.array([False, True]), (3, 3, 2, 4))
    assert mask.shape == (3, 3, 2, 4)
    assert bool(mask[:, :, 1].all()) and not bool(mask[:, :, 0].any())


def test_consumer_rejects_mismatched_shapes_and_bad_kinds():
    with pytest.raises(ValueError, match="not a multiple"):
        Consumer(("d", "kernel")).input_mask(jnp.zeros(3, bool), (4, 2))
    with pytest.raises(ValueError, match="allowed values"):
        Consumer(("d", "kernel"), kind="sparse")
    with pytest.raises(ValueError, match="allowed values"):
        NeuronLayer("x", ("d",), kind="lstm")


class UserNet(nn.Module):
    """A user's own module: plain Flax, no plastix layers, a non-ReLU activation."""

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(6, name="fc1")(x))
        x = nn.tanh(nn.Dense(5, name="fc2")(x))
        return nn.Dense(2, name="head")(x)


def test_user_module_topology_in_a_few_lines():
    net = UserNet()
    x = jax.random.normal(jax.random.key(1), (7, 3))
    params = net.init(jax.random.key(0), x)["params"]
    topo = Topology.sequential(["fc1", "fc2"], output="head", activation=nn.tanh)
    validate(topo, params)
    apply = lambda p, i: net.apply({"params": p}, i)  # noqa: E731
    out, z = capture(net.apply, topo)(params, x)
    np.testing.assert_allclose(out, apply(params, x), rtol=1e-6)
    h1 = jnp.tanh(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
    np.testing.assert_allclose(z["fc1"], x @ params["fc1"]["kernel"] + params["fc1"]["bias"], rtol=1e-5)
    np.testing.assert_allclose(z["fc2"], h1 @ params["fc2"]["kernel"] + params["fc2"]["bias"], rtol=1e-5)
    diag = diagnose(topo, net.apply, params, x, lambda o: jnp.mean(o**2))
    assert set(diag.layers) == {"fc1", "fc2"}
    assert diag.layers["fc2"].dormant_score.shape == (5,)


def test_capture_names_a_wrong_module_path():
    net = UserNet()
    params = net.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
    topo = Topology.sequential(["fc1", "fc_missing"], output="head")
    with pytest.raises(ValueError, match="fc_missing"):
        capture(net.apply, topo)(params, jnp.zeros((1, 3)))
    with pytest.raises(KeyError, match="fc_missing"):
        validate(topo, params)


def test_prefixed_topology_for_nested_modules():
    class Agent(nn.Module):
        @nn.compact
        def __call__(self, x):
            return MLP((4,), out=2, name="torso")(x)

    agent = Agent()
    params = agent.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
    topo = MLP((4,), out=2).topology().prefixed("torso")
    validate(topo, params)
    assert topo.names == ("torso/hidden_0",)
    assert get_path(params, topo.layers[0].kernel).shape == (3, 4)
    _, z = capture(agent.apply, topo)(params, jnp.ones((2, 3)))
    assert z["torso/hidden_0"].shape == (2, 4)
