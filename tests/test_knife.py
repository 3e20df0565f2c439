"""The interventions of the stagnant-neuron study on the QMIX / QPLEX learner's network (agent
network + mixer): KNIFE and plasticity injection (function preservation at every injection, a
second one included; frozen parts bit-identical; fresh optimizer moments; no-op masks; jit / vmap
equivalence), diagnostics of injected neurons, ReBorn (equals the pruned network, hand-computed
weight sharing) and CBP (hand-computed utilities and replacements, inside a jitted update), and
their config errors."""

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix.agents.marl import FactorizedQ, MARLConfig, make_mixer
from plastix.envs.base import EnvSpec
from plastix.interventions import (
    CBPConfig,
    Context,
    InjectionConfig,
    KnifeConfig,
    PlasticityConfig,
    ReBornConfig,
    cbp,
    create_train_state,
    knife,
    make_intervention,
    plasticity_injection,
    reborn,
)
from plastix.interventions.injection import SLOT_PARAMS, SLOTS
from plastix.nn.recurrent import GRUAgent
from plastix.nn.topology import Topology, get_path

N_AGENTS, A, D, S, T, B = 3, 4, 5, 6, 4, 2
CONTEXT = Context.at(10, 1, True)


@functools.cache  # one network and one compiled init per mixer for the whole module
def build(mixer="qmix"):
    """``(net, topology, init_params, inputs)`` of a tiny agent network + mixer; ``init_params`` is
    jitted (eager, every call would trace and compile the GRU's scan again)."""
    spec = EnvSpec("toy", (D,), jnp.float32, num_actions=A, agents=N_AGENTS, state_shape=(S,))
    config = MARLConfig(mixer=mixer, hidden=8, mixing_embed=4, hypernet_hidden=8, qplex_heads=2)
    net = FactorizedQ(GRUAgent(8, A), make_mixer(spec, config))
    topology = Topology.merge(
        net.agent.topology().prefixed("agent", group="agent"), net.mixer.topology().prefixed("mixer", group="mixer")
    )
    k = jax.random.split(jax.random.key(0), 3)
    inputs = (
        jax.random.normal(k[0], (T, B, N_AGENTS, D + N_AGENTS + A)),
        jax.random.randint(k[1], (T, B, N_AGENTS), 0, A),
        jax.random.normal(k[2], (T, B, S)),
        jnp.ones((T, B, N_AGENTS, A), bool),
    )

    @jax.jit
    def init_params(key):
        return net.init(key, *inputs)["params"]

    return net, topology, init_params, inputs


def assert_same_values(actual, desired):
    """Bit-identical on the CPU; on other backends within 1e-6, the float32 function-preservation
    tolerance: XLA:GPU compiles two programs that compute the same values (a network with empty
    slots and the plain one; a re-drawn initializer inside an intervention and the same draw
    outside) with different fusions and summation orders (H200, 2026-12-04: up to 3e-7 apart)."""
    if jax.default_backend() == "cpu":
        np.testing.assert_array_equal(actual, desired)
    else:
        np.testing.assert_allclose(actual, desired, rtol=0, atol=1e-6)


@functools.partial(jax.jit, static_argnums=0)  # compiled once per forward function
def outputs(apply, params, inputs):
    """Agent Qs ``(T, B, n, A)`` and ``Q_tot (T, B)``."""
    q, _ = apply({"params": params}, inputs[0], method=FactorizedQ.agent_q)
    return q, apply({"params": params}, *inputs)


def random_scores(key, topology, params, p=0.5):
    """Diagnostics stand-in: random stagnant / dormant / GraMa masks per neuron layer."""
    layers = {}
    for layer, k in zip(topology.layers, jax.random.split(key, len(topology.layers))):
        n = layer.size(params)
        m = jax.random.uniform(k, (3, n)) < p
        layers[layer.name] = SimpleNamespace(stagnant=m[0], dormant=m[1], grama_dormant=m[2])
    return SimpleNamespace(layers=layers)


def train_steps(state, apply, inputs, steps=10, seed=0):
    """``steps`` Adam steps on a random regression of ``Q_tot``."""
    target = jax.random.normal(jax.random.key(seed), inputs[2].shape[:2])

    @jax.jit  # one compile for the ten steps (eager, every step would re-trace the GRU's scan)
    def step(state):
        grads = jax.grad(lambda p: jnp.mean((apply({"params": p}, *inputs) - target) ** 2))(state.params)
        return state.apply_gradients(grads)

    for _ in range(steps):
        state = step(state)
    return state


@pytest.fixture(scope="module", params=["qmix", "qplex"])
def learner(request):
    return build(request.param)


@pytest.mark.parametrize("selection", ["stagnant", "random", "all"])
def test_knife_preserves_every_output_at_first_and_second_injection(learner, selection):
    net, topology, init_params, inputs = learner
    method = knife(KnifeConfig(slots=2, selection=selection), topology, init_params)
    apply = method.forward(net.apply)
    state = create_train_state(method, init_params(jax.random.key(1)), optax.adam(1e-2))
    assert jax.tree.map(np.array, outputs(apply, state.params, inputs)) is not None
    # the slots add nothing before any injection: bit-identical to the plain network (CPU)
    plain = outputs(net.apply, {k: v for k, v in state.params.items() if k != SLOTS}, inputs)
    for a, b in zip(outputs(apply, state.params, inputs), plain):
        assert_same_values(a, b)
    for round_ in range(2):
        before = outputs(apply, state.params, inputs)
        scores = random_scores(jax.random.key(10), topology, state.params)  # same neurons: injected twice
        state = method.apply(jax.random.key(20 + round_), state, scores, CONTEXT)
        for a, b in zip(outputs(apply, state.params, inputs), before):
            np.testing.assert_allclose(a, b, atol=1e-6)
        state = train_steps(state, apply, inputs, seed=round_)  # active ≠ compensation before the next one
    gate = get_path(state.params, (SLOTS, "agent", "fc1", "gate"))
    if selection != "random":  # the same neurons were selected twice
        assert float(gate[1].sum()) > 0 and bool((gate[1] <= gate[0]).all()), "no neuron was injected a second time"


def test_frozen_parts_stay_bit_identical_and_active_ones_train(learner):
    net, topology, init_params, inputs = learner
    method = knife(KnifeConfig(slots=1, selection="stagnant"), topology, init_params)
    apply = method.forward(net.apply)
    state = create_train_state(method, init_params(jax.random.key(1)), optax.adam(1e-2))
    scores = random_scores(jax.random.key(3), topology, state.params)
    state = method.apply(jax.random.key(4), state, scores, CONTEXT)
    chosen = scores.layers["agent/fc1"].stagnant
    assert bool(chosen.any()) and not bool(chosen.all())
    kernel, slot = ("agent", "fc1", "kernel"), (SLOTS, "agent", "fc1")
    w0 = get_path(state.params, kernel)
    slots0 = get_path(state.params, slot)
    # optimizer moments of the injected slot start at zero
    mu = state.opt_state[0].mu
    assert float(jnp.abs(get_path(mu, slot + ("kernel",))).max()) == 0
    for never in ("comp_kernel", "comp_bias", "gate", "comp_gate"):  # fixed: no optimizer state at all
        assert get_path(mu, slot + (never,)) is None and slot + (never,) in state.fixed
    after = train_steps(state, apply, inputs)
    w1, slots1 = get_path(after.params, kernel), get_path(after.params, slot)
    np.testing.assert_array_equal(w1[:, chosen], w0[:, chosen])  # knowledge: frozen
    assert not np.array_equal(w1[:, ~chosen], w0[:, ~chosen])  # the others train
    for name in ("comp_kernel", "comp_bias", "gate"):
        np.testing.assert_array_equal(slots1[name], slots0[name])
    assert not np.array_equal(slots1["kernel"][0][:, chosen], slots0["kernel"][0][:, chosen])  # active trains
    np.testing.assert_array_equal(slots1["kernel"][0][:, ~chosen], slots0["kernel"][0][:, ~chosen])  # unused: 0


def test_injection_zeroes_the_moments_of_what_it_freezes(learner):
    """After training (non-zero moments), a first and a second injection into the same neurons: every
    frozen element's optimizer moments are 0 (zeroing all of them again changes nothing), and the
    elements that injection froze had non-zero moments before it (the original weights, then the
    first slot), so ``inject`` zeroes exactly what it freezes without re-zeroing the whole state."""
    net, topology, init_params, inputs = learner
    method = knife(KnifeConfig(slots=2, selection="stagnant"), topology, init_params)
    apply = method.forward(net.apply)
    state = create_train_state(method, init_params(jax.random.key(1)), optax.adam(1e-2))
    state = train_steps(state, apply, inputs, steps=3)
    scores = random_scores(jax.random.key(10), topology, state.params)
    for round_ in range(2):
        before = state
        state = method.apply(jax.random.key(20 + round_), state, scores, CONTEXT)
        jax.tree.map(np.testing.assert_array_equal, state.with_trainable(state.trainable).opt_state, state.opt_state)
        newly = jax.tree.map(lambda was, now: was & ~now, before.trainable, state.trainable)
        moved = [
            float(jnp.abs(jnp.where(n, m, 0)).max())
            for n, m in zip(jax.tree.leaves(before.trainable_part(newly)), jax.tree.leaves(before.opt_state[0].mu))
        ]
        assert max(moved) > 0, f"round {round_}: nothing frozen by this injection had moments to zero"
        state = train_steps(state, apply, inputs, seed=round_)


def test_no_selected_neuron_leaves_the_train_state_bit_identical(learner):
    net, topology, init_params, inputs = learner
    method = knife(KnifeConfig(slots=2), topology, init_params)
    state = create_train_state(method, init_params(jax.random.key(1)), optax.adam(1e-2))
    state = train_steps(state, method.forward(net.apply), inputs, steps=2)
    none = random_scores(jax.random.key(3), topology, state.params, p=0.0)
    after = method.apply(jax.random.key(4), state, none, CONTEXT)
    jax.tree.map(np.testing.assert_array_equal, after, state)


def test_knife_jit_and_vmap_match_plain_calls():
    net, topology, init_params, inputs = build("qmix")
    method = knife(KnifeConfig(slots=1, selection="random"), topology, init_params)
    tx = optax.adam(1e-2)

    def injected(seed):
        state = create_train_state(method, init_params(jax.random.fold_in(jax.random.key(1), seed)), tx)
        scores = random_scores(jax.random.fold_in(jax.random.key(2), seed), topology, state.params)
        return method.apply(jax.random.fold_in(jax.random.key(3), seed), state, scores, CONTEXT).params

    plain = [injected(jnp.int32(s)) for s in range(2)]
    jitted = jax.jit(injected)(jnp.int32(1))
    vmapped = jax.vmap(injected)(jnp.arange(2, dtype=jnp.int32))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), jitted, plain[1])
    for s in range(2):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[s], b, atol=1e-6), vmapped, plain[s])


def test_ablations_change_what_they_say():
    net, topology, init_params, inputs = build("qmix")
    params = init_params(jax.random.key(1))
    scores = random_scores(jax.random.key(3), topology, params)

    def run(**flags):
        method = knife(KnifeConfig(**flags), topology, init_params)
        state = create_train_state(method, params, optax.adam(1e-2))
        before = outputs(method.forward(net.apply), state.params, inputs)[1]
        state = method.apply(jax.random.key(4), state, scores, CONTEXT)
        return state, before, outputs(method.forward(net.apply), state.params, inputs)[1]

    _, before, after = run(compensation=False)
    assert float(jnp.abs(after - before).max()) > 1e-4  # no compensation: the output jumps
    state, _, _ = run(freeze_knowledge=False)
    assert bool(get_path(state.trainable, ("agent", "fc1", "kernel")).all())
    state, _, _ = run(active_init="copy")
    chosen = scores.layers["agent/fc1"].stagnant
    np.testing.assert_array_equal(
        get_path(state.params, (SLOTS, "agent", "fc1", "kernel"))[0][:, chosen],
        get_path(params, ("agent", "fc1", "kernel"))[:, chosen],
    )


def test_knife_and_its_ablations_share_one_program_and_one_apply():
    """The ablations are data (the selection, a closed ``comp_gate``, the freeze and copy flags in
    KNIFE's state), not other programs: a bundle of KNIFE and every ablation runs KNIFE's ``apply``
    once and computes, for each member, the outputs and train state of that method alone, bit for
    bit, after the injection and 10 updates."""
    from plastix.interventions.bundle import assign_members, bundle

    net, topology, init_params, inputs = build("qmix")
    params = init_params(jax.random.key(1))
    scores = random_scores(jax.random.key(3), topology, params)
    configs = [KnifeConfig(compensation=c) for c in (True, False)] + [
        KnifeConfig(selection="random", freeze_knowledge=False),
        KnifeConfig(selection="dormant", active_init="copy"),
    ]
    methods = [knife(c, topology, init_params) for c in configs]
    assert len({m.shares for m in methods}) == 1
    calls = []
    counted = methods[0]._replace(apply=lambda *a: calls.append(1) or methods[0].apply(*a))
    both = bundle([counted, *methods[1:]])
    both.apply(jax.random.key(4), create_train_state(both, params, optax.adam(1e-2)), scores, CONTEXT)
    assert len(calls) == 1
    for member, alone in enumerate(methods):
        expected = alone.apply(jax.random.key(4), create_train_state(alone, params, optax.adam(1e-2)), scores, CONTEXT)
        expected = train_steps(expected, alone.forward(net.apply), inputs)
        got = assign_members(create_train_state(both, params, optax.adam(1e-2)), jnp.int32(member))
        got = train_steps(both.apply(jax.random.key(4), got, scores, CONTEXT), both.forward(net.apply), inputs)
        leaves = jax.tree.leaves
        for a, b in zip(leaves((expected.params, expected.opt_state)), leaves((got.params, got.opt_state))):
            np.testing.assert_array_equal(a, b)
        comp_gate = get_path(got.params, (SLOTS, "agent", "fc1", "comp_gate"))
        gate = get_path(got.params, (SLOTS, "agent", "fc1", "gate"))
        np.testing.assert_array_equal(comp_gate, gate if configs[member].compensation else jnp.zeros_like(gate))


def test_knife_and_plasticity_injection_share_one_program_with_the_union_of_their_slots():
    """KNIFE (slots on the dense neuron layers) and plasticity injection (slots on the output heads)
    in one bundle: the bundle allocates both; each member computes the outputs and, on the
    parameters it has alone, the train state of that method alone after its injection and 10
    updates (up to float rounding: a closed slot adds exactly 0, but the extra terms change how XLA
    fuses a layer's sums, by ~1 ulp); the other method's slots stay closed, zero and frozen."""
    from plastix.interventions.bundle import assign_members, bundle

    net, topology, init_params, inputs = build("qmix")
    params = init_params(jax.random.key(1))
    scores = random_scores(jax.random.key(3), topology, params)
    methods = [
        knife(KnifeConfig(slots=2), topology, init_params),
        plasticity_injection(InjectionConfig(slots=2), topology, init_params),
    ]
    both = bundle(methods)
    union = {t.module for t in both.slots[0]}
    assert union == {t.module for m in methods for t in m.slots[0]} and both.slots[1] == 2
    for member, alone in enumerate(methods):
        expected = alone.apply(jax.random.key(4), create_train_state(alone, params, optax.adam(1e-2)), scores, CONTEXT)
        expected = train_steps(expected, alone.forward(net.apply), inputs)
        got = assign_members(create_train_state(both, params, optax.adam(1e-2)), jnp.int32(member))
        got = train_steps(both.apply(jax.random.key(4), got, scores, CONTEXT), both.forward(net.apply), inputs)
        alone_out = outputs(alone.forward(net.apply), expected.params, inputs)
        for a, b in zip(alone_out, outputs(both.forward(net.apply), got.params, inputs)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        for module in union - {t.module for t in alone.slots[0]}:  # the other method's slots
            for name in SLOT_PARAMS:
                path = (SLOTS, *module, name)
                assert not np.any(get_path(got.params, path)), f"{path} was touched"
                assert not np.any(get_path(got.trainable, path)), f"{path} trains"
        for tree in ("params", "opt_state", "trainable"):  # every array the method has alone
            got_flat = dict(jax.tree_util.tree_flatten_with_path(getattr(got, tree))[0])
            for path, value in jax.tree_util.tree_flatten_with_path(getattr(expected, tree))[0]:
                np.testing.assert_allclose(got_flat[path], value, rtol=1e-5, atol=1e-6, err_msg=f"{tree} {path}")


def test_plasticity_injection_preserves_outputs_and_trains_the_new_head():
    net, topology, init_params, inputs = build("qmix")
    method = plasticity_injection(InjectionConfig(), topology, init_params)
    apply = method.forward(net.apply)
    state = create_train_state(method, init_params(jax.random.key(1)), optax.adam(1e-2))
    before = outputs(apply, state.params, inputs)
    state = method.apply(jax.random.key(2), state, None, CONTEXT)
    for a, b in zip(outputs(apply, state.params, inputs), before):
        np.testing.assert_allclose(a, b, atol=1e-6)
    head = ("agent", "fc2", "kernel")
    new = (SLOTS, "agent", "fc2", "kernel")
    after = train_steps(state, apply, inputs)
    np.testing.assert_array_equal(get_path(after.params, head), get_path(state.params, head))  # old head frozen
    assert not np.array_equal(get_path(after.params, new), get_path(state.params, new))  # new head learns


def test_linear_head_slots_are_one_layer_equal_to_the_per_slot_sum():
    """A linear head adds its K slots as one kernel Σ gate·U − comp_gate·U⁰: values and slot
    gradients equal the per-slot formula, and an injection leaves the output bit-identical."""
    import flax.linen as nn

    from plastix.interventions.injection import Target, injection_forward

    x = jax.random.normal(jax.random.key(0), (7, 5))
    params = nn.Dense(3).init(jax.random.key(1), x)["params"]
    ks = jax.random.split(jax.random.key(2), 6)
    shapes = {"kernel": (2, 5, 3), "bias": (2, 3)}
    slots = {name: jax.random.normal(k, shapes[name.removeprefix("comp_")]) for name, k in zip(SLOT_PARAMS[:4], ks)}
    for name, k in zip(("gate", "comp_gate"), ks[4:]):
        slots[name] = (jax.random.uniform(k, (2, 3)) < 0.5).astype(jnp.float32)
    apply = injection_forward([Target("head", (), lambda z: z, neuron=False)])(nn.Dense(3).apply)

    def reference(slots):
        out = x @ params["kernel"] + params["bias"]
        for k in range(2):
            out = out + slots["gate"][k] * (x @ slots["kernel"][k] + slots["bias"][k])
            out = out - slots["comp_gate"][k] * (x @ slots["comp_kernel"][k] + slots["comp_bias"][k])
        return out

    def ours(slots):
        return apply({"params": {"kernel": params["kernel"], "bias": params["bias"], SLOTS: slots}}, x)

    np.testing.assert_allclose(ours(slots), reference(slots), rtol=1e-5, atol=1e-5)
    g_ours = jax.grad(lambda s: jnp.sum(jnp.sin(ours(s))))(slots)
    g_ref = jax.grad(lambda s: jnp.sum(jnp.sin(reference(s))))(slots)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(g_ours[name], g_ref[name], rtol=1e-5, atol=1e-5)
    # a fresh injection into slot 1 of every unit (U = U⁰, both gates open): bit-identical output
    fresh = jax.random.normal(jax.random.key(3), (5, 3))
    injected = dict(slots, gate=slots["gate"].at[1].set(1.0), comp_gate=slots["comp_gate"].at[1].set(1.0))
    injected["kernel"] = slots["kernel"].at[1].set(fresh)
    injected["comp_kernel"] = slots["comp_kernel"].at[1].set(fresh)
    injected["bias"] = slots["bias"].at[1].set(0.0)
    injected["comp_bias"] = slots["comp_bias"].at[1].set(0.0)
    closed = dict(slots, gate=slots["gate"].at[1].set(0.0), comp_gate=slots["comp_gate"].at[1].set(0.0))
    np.testing.assert_array_equal(ours(injected), ours(closed))


def test_trigger_defaults_to_task_switch_and_fires_only_there():
    net, topology, init_params, inputs = build("qmix")
    config = PlasticityConfig("knife", knife=KnifeConfig(selection="all"))
    method = make_intervention(config, topology, init_params)
    state = create_train_state(method, init_params(jax.random.key(1)), optax.adam(1e-2))
    scores = random_scores(jax.random.key(3), topology, state.params)
    same = method.apply(jax.random.key(4), state, scores, Context.at(1000, 0, False))
    jax.tree.map(np.testing.assert_array_equal, same, state)
    switched = method.apply(jax.random.key(4), state, scores, Context.at(1000, 1, True))
    assert float(get_path(switched.params, (SLOTS, "agent", "fc1", "gate")).min()) == 1


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: KnifeConfig(slots=0), r"KnifeConfig.slots: got 0"),
        (lambda: KnifeConfig(selection="best"), r"KnifeConfig.selection: got 'best', allowed values are \('stagnant'"),
        (lambda: KnifeConfig(active_init="zeros"), r"KnifeConfig.active_init: got 'zeros', allowed values"),
        (lambda: InjectionConfig(slots=0), r"InjectionConfig.slots: got 0"),
        (
            lambda: knife(KnifeConfig(layers=("agent/nope",)), build()[1], None),
            r"KnifeConfig.layers: 'agent/nope' is not a dense neuron layer; allowed values are \('agent/fc1'",
        ),
        (
            lambda: knife(KnifeConfig(layers=("agent/gru",)), build()[1], None),
            r"'agent/gru' is not a dense neuron layer",
        ),
        (
            lambda: plasticity_injection(InjectionConfig(layers=("agent/fc1",)), build()[1], None),
            r"InjectionConfig.layers: 'agent/fc1' is not an output head module; allowed values are \('agent/fc2'",
        ),
        (lambda: PlasticityConfig(trigger="sometimes"), r"PlasticityConfig.trigger: got 'sometimes'"),
        (lambda: ReBornConfig(beta=0), r"ReBornConfig.beta must be > 0"),
        (lambda: CBPConfig(decay=1.0), r"CBPConfig.decay must be in \[0, 1\)"),
        (lambda: CBPConfig(replacement_rate=2), r"CBPConfig.replacement_rate must be in \[0, 1\]"),
        (
            lambda: cbp(CBPConfig(layers=("agent/fc9",)), build()[1], None),
            r"CBPConfig.layers: 'agent/fc9' is not a neuron layer; allowed values are \('agent/fc1', 'agent/gru'",
        ),
        (
            lambda: PlasticityConfig("cbp", trigger="period"),
            r"PlasticityConfig.trigger is set but method='cbp' does not use it",
        ),
        (lambda: ReBornConfig(alpha_low=0.9, alpha_high=0.8), r"ReBornConfig.alpha_low / alpha_high"),
        (
            lambda: reborn(ReBornConfig(layers=("mixer/mixing",)), build()[1], None),
            r"ReBornConfig.layers: 'mixer/mixing' is not a dense ReLU neuron layer .* allowed values are "
            r"\('agent/fc1', 'mixer/hyper_w1_0'",
        ),
        (
            lambda: reborn(ReBornConfig(groups=("critic",)), build()[1], None),
            r"ReBornConfig.groups: 'critic' is not a group of this network; allowed values are \('agent', 'mixer'\)",
        ),
    ],
)
def test_invalid_settings_name_the_field_and_allowed_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_knife_injects_at_the_task_switch_inside_the_jitted_marl_loop():
    """QMIX + KNIFE (every neuron, at the switch) on two matrix games: no slot is used before the
    switch, every dense neuron has one after it, and training goes on with finite losses."""
    from plastix.agents import LoopConfig, make_train
    from plastix.agents.marl import make_marl
    from plastix.envs import make_env

    env = make_env("matrix-sequential")
    loop = LoopConfig(env_steps=240, num_envs=8, replay_ratio=1 / 8, warmup_steps=64, buffer_size=512, batch_size=8,
                      period=5, eval_every=3, eval_envs=2, scoring_batch=8, tasks=((0, 120), (1, 120)))  # fmt: skip
    plasticity = PlasticityConfig("knife", knife=KnifeConfig(selection="all"))
    agent, _, _ = make_marl(env.spec, MARLConfig(hidden=8, mixing_embed=4, hypernet_hidden=8), loop.gamma,
                            loop.period, plasticity=plasticity)  # fmt: skip
    train = make_train(loop, env, agent)
    carry = train.init(jax.random.split(jax.random.key(0), 1))
    carry, first, _ = train.run_chunk(carry)  # 120 env steps: up to the switch (logged in this chunk)
    gate = get_path(carry.agent.online.params, (SLOTS, "agent", "fc1", "gate"))
    assert bool(first["task_switched"][0, -1]) and float(gate.min()) == 1.0
    np.testing.assert_array_equal(get_path(carry.agent.target, (SLOTS, "agent", "fc1", "gate")) <= 1, True)
    carry, second, _ = train.run_chunk(carry)
    assert bool(np.isfinite(second["loss"]).all())
    assert not bool(second["task_switched"].any())


def test_a_task_switch_trigger_without_tasks_is_refused():
    from plastix.experiments.rl import RLConfig

    with pytest.raises(ValueError, match=r"PlasticityConfig.trigger: knife would run only at task switches"):
        RLConfig(agent="dqn", env="CartPole-v1", plasticity=PlasticityConfig("knife"))
    RLConfig(agent="dqn", env="CartPole-v1", plasticity=PlasticityConfig("knife", trigger="period"))


def test_diagnostics_score_an_injected_neuron_by_its_whole_output_and_its_learning_part():
    """After a KNIFE injection, a neuron's dormant score reads ``h = k + a − c`` (here ``c`` is left
    out by the no-compensation ablation, so ``h`` really changes) and its stagnation ratio and
    GraMa score read the active unit only (the knowledge neuron is frozen); hand-computed."""
    from plastix.agents.off_policy import diagnose_state
    from plastix.metrics import DiagnosticsConfig
    from plastix.nn import MLP

    net = MLP((4, 3), out=2)
    topology = net.topology()
    x = jax.random.normal(jax.random.key(1), (16, 5))
    y = jax.random.normal(jax.random.key(2), (16, 2))
    init_params = lambda key: net.init(key, x)["params"]  # noqa: E731
    intervention = knife(KnifeConfig(compensation=False), topology, init_params)
    state = create_train_state(intervention, init_params(jax.random.key(0)), optax.adam(1e-3))
    units = {"hidden_0": jnp.array([True, False, True, False]), "hidden_1": jnp.array([False, True, False])}
    scores = SimpleNamespace(
        layers={n: SimpleNamespace(stagnant=m, dormant=~m, grama_dormant=~m) for n, m in units.items()}
    )
    state = intervention.apply(jax.random.key(3), state, scores, CONTEXT)
    apply = intervention.forward(net.apply)
    loss_fn = lambda out: jnp.mean((out - y) ** 2)  # noqa: E731
    diag = jax.jit(lambda s: diagnose_state(intervention, topology, apply, s, x, loss_fn, DiagnosticsConfig()))(state)

    p = state.params
    grads = jax.jit(jax.grad(lambda q: loss_fn(apply({"params": q}, x))))(p)
    h0 = jax.nn.relu(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])
    slot = p[SLOTS]["hidden_0"]
    active = jax.nn.relu(x @ slot["kernel"][0] + slot["bias"][0])
    h0 = h0 + slot["gate"][0] * active  # no compensation: the active unit adds to the output
    dormant = jnp.mean(jnp.abs(h0), 0) / (jnp.mean(jnp.abs(h0)) + 1e-9)
    np.testing.assert_allclose(diag.layers["hidden_0"].dormant_score, dormant, rtol=1e-5)

    g, g_slot = grads["hidden_0"], grads[SLOTS]["hidden_0"]
    weight_grads = []
    for i, injected in enumerate(np.asarray(units["hidden_0"])):
        if injected:  # the active unit: slot 0's column and bias
            w = jnp.concatenate([slot["kernel"][0][:, i], slot["bias"][0][i : i + 1]])
            d = jnp.concatenate([g_slot["kernel"][0][:, i], g_slot["bias"][0][i : i + 1]])
            weight_grads.append(jnp.mean(jnp.abs(g_slot["kernel"][0][:, i])))
        else:  # the neuron's own weights
            w = jnp.concatenate([p["hidden_0"]["kernel"][:, i], p["hidden_0"]["bias"][i : i + 1]])
            d = jnp.concatenate([g["kernel"][:, i], g["bias"][i : i + 1]])
            weight_grads.append(jnp.mean(jnp.abs(g["kernel"][:, i])))
        np.testing.assert_allclose(
            diag.layers["hidden_0"].stagnation_ratio[i], jnp.linalg.norm(d) / (jnp.linalg.norm(w) + 1e-9), rtol=1e-5
        )
    weight_grads = jnp.stack(weight_grads)
    np.testing.assert_allclose(
        diag.layers["hidden_0"].grama_score, weight_grads / (jnp.mean(weight_grads) + 1e-9), rtol=1e-5
    )


# --------------------------------------------------------------------------------------- ReBorn


def reborn_scores(key, topology, params):
    """Random dormant scores: about 30 % dormant (0.05), 30 % over-active (4.0), the rest 1.0."""
    layers = {}
    for layer, k in zip(topology.layers, jax.random.split(key, len(topology.layers))):
        u = jax.random.uniform(k, (layer.size(params),))
        score = jnp.where(u < 0.3, 0.05, jnp.where(u > 0.7, 4.0, 1.0))
        layers[layer.name] = SimpleNamespace(dormant_score=score, dormant=score <= 0.1)
    return SimpleNamespace(layers=layers)


def test_reborn_computes_what_the_network_with_its_dormant_neurons_pruned_computes(learner):
    """Right after ReBorn every output (agent Qs and Q_tot) equals the output of the network whose
    dormant neurons had their outgoing weights zeroed (the same when they are dead)."""
    from plastix.interventions import zero_outgoing

    net, topology, init_params, inputs = learner
    method = reborn(ReBornConfig(max_receivers=2), topology, init_params)
    state = create_train_state(method, init_params(jax.random.key(1)), optax.adam(1e-2))
    state = train_steps(state, net.apply, inputs, steps=3)
    for seed in range(3):
        scores = reborn_scores(jax.random.key(seed), topology, state.params)
        layers = [layer.name for layer in topology.layers if layer.group == "mixer" and layer.kind == "dense"]
        assert any(bool(scores.layers[n].dormant.any()) for n in layers)
        pruned = zero_outgoing(state.params, topology, {n: scores.layers[n].dormant for n in layers})
        after = method.apply(jax.random.key(10 + seed), state, scores, CONTEXT)
        kernel = topology[layers[0]].kernel
        assert not np.array_equal(get_path(after.params, kernel), get_path(state.params, kernel))
        for a, b in zip(outputs(net.apply, after.params, inputs), outputs(net.apply, pruned, inputs)):
            np.testing.assert_allclose(a, b, atol=1e-6)
        np.testing.assert_array_equal(after.params["agent"]["fc1"]["kernel"], state.params["agent"]["fc1"]["kernel"])


def test_reborn_plan_and_surgery_match_a_hand_computed_layer():
    """One donor (neuron 0), six dormant neurons, max 5 receivers: five get α·w_0 and f/α of its
    outgoing row, the donor keeps f_0 of it (fractions sum to 1), the sixth is recycled."""
    from plastix.interventions.reborn import reborn_plan
    from plastix.nn import MLP

    config = ReBornConfig(groups=())
    dormant = jnp.array([False, False, True, True, True, True, True, True])
    over = jnp.array([True] + [False] * 7)
    plan = reborn_plan(jax.random.key(0), dormant, over, config)
    assert int(plan.receives.sum()) == 5 and int(plan.recycle.sum()) == 1
    np.testing.assert_array_equal(np.asarray(plan.source)[np.asarray(plan.receives)], 0)
    fractions = plan.out_scale * plan.in_scale
    np.testing.assert_allclose(fractions[0] + fractions[plan.receives].sum(), 1.0, rtol=1e-6)
    assert bool(((plan.in_scale[plan.receives] >= 0.3) & (plan.in_scale[plan.receives] <= 0.8)).all())

    net = MLP((8,), out=3)
    x = jax.random.normal(jax.random.key(1), (4, 5))
    init_params = lambda key: net.init(key, x)["params"]  # noqa: E731
    method = reborn(config, net.topology(), init_params)
    params = init_params(jax.random.key(2))
    state = create_train_state(method, params, optax.sgd(0.1))
    score = jnp.where(over, 4.0, jnp.where(dormant, 0.0, 1.0))
    scores = SimpleNamespace(layers={"hidden_0": SimpleNamespace(dormant_score=score, dormant=score <= 0.1)})
    new = method.apply(jax.random.key(0), state, scores, CONTEXT).params
    w, b, out = params["hidden_0"]["kernel"], params["hidden_0"]["bias"], params["output"]["kernel"]
    w1, b1, out1 = new["hidden_0"]["kernel"], new["hidden_0"]["bias"], new["output"]["kernel"]
    receivers = np.flatnonzero(np.asarray(dormant))
    got = [d for d in receivers if np.allclose(w1[:, d] / w[:, 0], (w1[:, d] / w[:, 0])[0], rtol=1e-5)]
    assert len(got) == 5, "five receivers carry a scaled copy of the donor's incoming weights"
    assert all(0.3 <= w1[0, d] / w[0, 0] <= 0.8 for d in got)
    total = out1[0] + sum(out1[d] * (w1[0, d] / w[0, 0]) for d in got)  # Σ f_d · w_out(0)
    np.testing.assert_allclose(total, out[0], rtol=1e-5)
    for d in got:
        np.testing.assert_allclose(b1[d], b[0] * w1[0, d] / w[0, 0], atol=1e-7)
    recycled = [d for d in receivers if d not in got]
    np.testing.assert_array_equal(out1[recycled[0]], 0.0)
    np.testing.assert_array_equal(w1[:, 1], w[:, 1])  # a normal neuron: untouched
    np.testing.assert_array_equal(out1[1], out[1])


def test_reborn_with_nothing_dormant_is_bit_identical_and_jit_vmap_match(learner):

    net, topology, init_params, inputs = learner
    method = reborn(ReBornConfig(), topology, init_params)
    state = create_train_state(method, init_params(jax.random.key(1)), optax.adam(1e-2))
    state = train_steps(state, net.apply, inputs, steps=2)
    calm = SimpleNamespace(
        layers={
            n: SimpleNamespace(dormant_score=jnp.ones(s.dormant.shape), dormant=jnp.zeros(s.dormant.shape, bool))
            for n, s in reborn_scores(jax.random.key(0), topology, state.params).layers.items()
        }
    )
    jax.tree.map(np.testing.assert_array_equal, method.apply(jax.random.key(4), state, calm, CONTEXT), state)

    def reborn_at(seed):
        scores = reborn_scores(jax.random.fold_in(jax.random.key(2), seed), topology, state.params)
        return method.apply(jax.random.fold_in(jax.random.key(3), seed), state, scores, CONTEXT)

    plain = [reborn_at(jnp.int32(s)) for s in range(2)]
    vmapped = jax.vmap(jax.jit(reborn_at))(jnp.arange(2, dtype=jnp.int32))
    for s in range(2):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[s], b, atol=1e-6), vmapped.params, plain[s].params)
    mu = plain[0].opt_state[0].mu  # moments of touched elements are zero, the others are not
    changed = jax.tree.map(lambda a, b: a != b, plain[0].params, state.params)
    for m, c in zip(jax.tree.leaves(mu), jax.tree.leaves(changed)):
        assert float(jnp.abs(jnp.where(c, m, 0)).max()) == 0


# ------------------------------------------------------------------------------------------ CBP


def cbp_setup(**flags):
    from plastix.nn import MLP

    net = MLP((6, 4), out=2)
    x = jax.random.normal(jax.random.key(1), (8, 3))
    init_params = lambda key: net.init(key, x)["params"]  # noqa: E731
    topology = net.topology()
    method = cbp(CBPConfig(**flags), topology, init_params)
    state = create_train_state(method, init_params(jax.random.key(2)), optax.adam(1e-2))
    grads = jax.grad(lambda p: jnp.mean(net.apply({"params": p}, x) ** 2))(state.params)
    return net, topology, init_params, method, state, grads, x


def test_cbp_utility_is_the_running_contribution_utility():
    """u ← η u + (1 − η) E|h| mean|w_out|, with w_out after the update; hand-computed over two updates."""
    net, topology, init_params, method, state, grads, x = cbp_setup(decay=0.9, maturity=100)
    activity = {"hidden_0": jnp.arange(1.0, 7.0), "hidden_1": jnp.arange(1.0, 5.0)}
    s1 = method.on_update(jax.random.key(0), state.apply_gradients(grads), lambda: activity)
    s2 = method.on_update(jax.random.key(1), s1.apply_gradients(grads), lambda: activity)
    out0 = jnp.mean(jnp.abs(s1.params["hidden_1"]["kernel"]), axis=1)
    out1 = jnp.mean(jnp.abs(s2.params["hidden_1"]["kernel"]), axis=1)
    expected = 0.9 * (0.1 * activity["hidden_0"] * out0) + 0.1 * activity["hidden_0"] * out1
    np.testing.assert_allclose(s2.intervention_state["hidden_0"].utility, expected, rtol=1e-6)
    np.testing.assert_array_equal(s2.intervention_state["hidden_0"].age, 2)
    plain = state.apply_gradients(grads).apply_gradients(grads)  # no neuron mature: only the optimizer acted
    jax.tree.map(np.testing.assert_array_equal, s2.params, plain.params)


def test_cbp_replaces_the_lowest_utility_mature_neurons_and_preserves_the_pruned_function():
    from plastix.interventions import zero_outgoing

    net, topology, init_params, method, state, grads, x = cbp_setup(replacement_rate=0.5, maturity=0)
    activity = {"hidden_0": jnp.array([5.0, 0.1, 4.0, 0.2, 3.0, 6.0]), "hidden_1": jnp.ones(4)}
    stepped = state.apply_gradients(grads)
    after = method.on_update(jax.random.key(7), stepped, lambda: activity)
    utility = 0.01 * activity["hidden_0"] * jnp.mean(jnp.abs(stepped.params["hidden_1"]["kernel"]), axis=1)
    lowest = np.argsort(np.asarray(utility))[:3]  # 0.5 × 6 eligible neurons = 3 replaced
    replaced = np.zeros(6, bool)
    replaced[lowest] = True
    fresh = init_params(jax.random.key(7))
    w, w1 = stepped.params["hidden_0"]["kernel"], after.params["hidden_0"]["kernel"]
    assert_same_values(w1[:, replaced], fresh["hidden_0"]["kernel"][:, replaced])
    np.testing.assert_array_equal(w1[:, ~replaced], w[:, ~replaced])
    np.testing.assert_array_equal(after.params["hidden_1"]["kernel"][replaced], 0.0)
    st = after.intervention_state["hidden_0"]
    np.testing.assert_array_equal(np.asarray(st.age) == 0, replaced)
    np.testing.assert_array_equal(np.asarray(st.utility) == 0, replaced)
    np.testing.assert_allclose(st.pending, 0.0, atol=1e-6)
    mu = after.opt_state[0].mu
    np.testing.assert_array_equal(mu["hidden_0"]["kernel"][:, replaced], 0.0)
    assert float(jnp.abs(mu["hidden_0"]["kernel"][:, ~replaced]).min()) > 0
    h1 = after.intervention_state["hidden_1"]  # 0.5 × 4 = 2 of the second layer's too
    assert int((np.asarray(h1.age) == 0).sum()) == 2
    pruned = zero_outgoing(stepped.params, topology, {"hidden_0": jnp.asarray(replaced), "hidden_1": h1.age == 0})
    np.testing.assert_allclose(net.apply({"params": after.params}, x), net.apply({"params": pruned}, x), atol=1e-6)


def test_cbp_runs_inside_the_jitted_dqn_update_through_the_registry():
    """``PlasticityConfig("cbp")`` in DQN's jitted update: utilities grow, ages count updates."""
    from plastix.agents.dqn import DQNConfig, make_dqn
    from plastix.agents.off_policy import Transition

    spec = EnvSpec("toy", (3,), jnp.float32, num_actions=2)
    plasticity = PlasticityConfig("cbp", cbp=CBPConfig(maturity=2, replacement_rate=0.3))
    assert plasticity.period is None
    agent, _, _ = make_dqn(spec, DQNConfig(mlp_hidden=(8,)), 10, plasticity=plasticity)
    state = agent.init(jax.random.key(0), jnp.zeros((1, 3)))
    k = jax.random.split(jax.random.key(1), 3)
    batch = Transition(
        jax.random.normal(k[0], (16, 3)),
        jax.random.randint(k[1], (16,), 0, 2),
        jnp.ones(16),
        jnp.full(16, 0.99),
        jax.random.normal(k[2], (16, 3)),
    )
    update = jax.jit(agent.update)
    for i in range(4):
        state, _ = update(jax.random.key(10 + i), state, batch)
    cbp_state = state.online.intervention_state["hidden_0"]
    assert float(cbp_state.utility.max()) > 0
    assert int(cbp_state.age.max()) <= 4 and int((cbp_state.age < 4).sum()) >= 2  # some were replaced


def test_cbp_vmapped_runs_where_only_one_replaces_equal_each_run_alone():
    """Under ``vmap`` the replacement's conditional runs for every run as soon as one run replaces
    (``any_run``); a run that replaces nothing must come out bit-identical to its update alone."""
    net, topology, init_params, method, state, grads, x = cbp_setup(replacement_rate=0.5, maturity=0)
    stepped = state.apply_gradients(grads)
    quiet = stepped.replace(  # nothing pending and the rate's share of 6 neurons < 1: no replacement
        intervention_state={k: v._replace(pending=jnp.asarray(-10.0)) for k, v in stepped.intervention_state.items()}
    )
    activity = {"hidden_0": jnp.arange(1.0, 7.0), "hidden_1": jnp.ones(4)}
    on_update = jax.jit(lambda key, s: method.on_update(key, s, lambda: activity))
    keys = jax.random.split(jax.random.key(3), 2)
    runs = jax.tree.map(lambda a, b: jnp.stack([a, b]), stepped, quiet)
    together = jax.jit(jax.vmap(lambda key, s: method.on_update(key, s, lambda: activity)))(keys, runs)
    for i, alone in enumerate((on_update(keys[0], stepped), on_update(keys[1], quiet))):
        jax.tree.map(lambda a, b, i=i: np.testing.assert_array_equal(a[i], b), together, alone)
    assert int(together.intervention_state["hidden_0"].replaced.count[0]) == 3  # run 0 replaced ...
    assert int(together.intervention_state["hidden_0"].replaced.count[1]) == 0  # ... run 1 did not
    jax.tree.map(np.testing.assert_array_equal, on_update(keys[1], quiet).params, quiet.params)


def test_a_vmapped_bundle_of_triggered_methods_acts_per_run_as_each_method_alone():
    """KNIFE, an ablation and plasticity injection at task switches, bundled and vmapped over runs:
    each run's state after the period end is its method's alone when the switch fires (up to the
    last bit of a fresh draw, which the vmapped initializer can round differently), and unchanged
    when it does not (the bundle gates members in the select that picks each run's member)."""
    from plastix.interventions import PlasticityBundle, PlasticityConfig, make_intervention
    from plastix.interventions.bundle import assign_members

    net, topology, init_params, inputs = build("qmix")
    params = init_params(jax.random.key(1))
    scores = random_scores(jax.random.key(3), topology, params)
    configs = [
        PlasticityConfig("knife", "task_switch", knife=KnifeConfig(slots=2)),
        PlasticityConfig("knife", "task_switch", knife=KnifeConfig(slots=2, selection="random", compensation=False)),
        PlasticityConfig("injection", "task_switch", injection=InjectionConfig(slots=2)),
    ]
    together = make_intervention(PlasticityBundle(tuple(configs)), topology, init_params)
    start = create_train_state(together, params, optax.adam(1e-2))
    runs = jax.tree.map(lambda x: jnp.stack([x] * 3), assign_members(start, jnp.arange(3, dtype=jnp.int32)))
    runs = runs.replace(intervention_state=runs.intervention_state.replace(member=jnp.arange(3, dtype=jnp.int32)))
    bundled = jax.jit(jax.vmap(lambda s, c: together.apply(jax.random.key(4), s, scores, c), in_axes=(0, None)))
    methods = [make_intervention(config, topology, init_params) for config in configs]
    alone_fns = [jax.jit(lambda s, c, m=m: m.apply(jax.random.key(4), s, scores, c)) for m in methods]
    for switched in (True, False):
        context = Context.at(10, 1, switched)
        got = bundled(runs, context)
        for i, (config, alone) in enumerate(zip(configs, methods)):
            state = create_train_state(alone, params, optax.adam(1e-2))
            expected = alone_fns[i](state, context)
            if not switched:
                jax.tree.map(np.testing.assert_array_equal, expected.params, state.params)
            mine = jax.tree.map(lambda x, i=i: x[i], got)
            for tree in ("params", "trainable", "opt_state"):  # every array the method has alone
                got_flat = dict(jax.tree_util.tree_flatten_with_path(getattr(mine, tree))[0])
                for path, value in jax.tree_util.tree_flatten_with_path(getattr(expected, tree))[0]:
                    message = f"{config.method} {tree} {path}"
                    np.testing.assert_allclose(got_flat[path], value, rtol=1e-6, atol=1e-7, err_msg=message)
                    np.testing.assert_array_equal(got_flat[path] == 0, value == 0, err_msg=message)  # same slots
