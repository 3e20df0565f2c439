"""plastix's off-policy loop vs PureJaxRL's DQN at PureJaxRL's DQN settings, side by side.

Settings (PureJaxRL's ``purejaxrl/dqn.py`` defaults): CartPole-v1 (gymnax), 10 parallel envs,
500k env steps, 10k of them before learning starts, one update every 10 env steps (0.1 updates
per env step), batch 128, buffer 10k, MLP 120-84, Adam 2.5e-4, γ 0.99, target copy every 500 env
steps (= every 50 updates; τ = 1), ε 1 → 0.05 over 250k env steps. Both make 49,000 updates.

Variants, each a whole training run from a fresh key (compiled once beforehand, then timed):

- ``purejaxrl``: PureJaxRL's DQN computation re-written here (PureJaxRL is not a dependency and
  none of its code is copied): one ``lax.scan`` over vector steps; gymnax's ``LogWrapper`` tracks
  episode returns; each step acts ε-greedily, steps the 10 envs, adds them to a flashbax flat
  buffer, makes one update when the buffer can sample and learning has started (``lax.cond``),
  updates the target when the env-step count is a multiple of 500 (``lax.cond``, ``optax.incremental_update``
  with τ = 1), and returns PureJaxRL's per-step metrics (timesteps, updates, loss, mean returned
  episode return). Under ``vmap`` its ``lax.cond`` s become selects, so it computes an update on
  every vector step (1,000 more than plastix).
- ``minimal``: the same without what PureJaxRL adds for logging (``LogWrapper``, per-step metrics,
  ``can_sample``): a stricter reference, the least a DQN loop at these settings must compute.
- ``plastix``: the same settings expressed as plastix's ``LoopConfig`` + ``DQNConfig``
  (10k warm-up + 490k learning env steps, RR 0.1, F = 1,000 updates, seven chunks of seven
  periods with one 10-step evaluation each), diagnostics off, no intervention. plastix also
  stores truncations and final observations (PureJaxRL treats a time limit as a termination),
  tracks episode returns and logs per-period metrics.
- ``plastix+diag+redo``: the same with diagnostics every period and ReDo (τ 0.1) every 1,000 updates.

XLA:CPU's thread pool has one thread by default here (``--xla-cpu-threads``; 0: XLA's own default,
one per core), for every variant alike: what ``plastix run rl`` chooses for DQN with an MLP
(:meth:`plastix.experiments.rl.RLConfig.cpu_threads`). PureJaxRL's loop is as fast or faster
with one thread than with two (1 seed: 8.7–9.1 s vs 11.3 s; 8 seeds: the same), so this is the
stricter comparison for plastix.

Repeats are interleaved (the order rotates each round) so that drifting machine load hits every
variant alike; ratios are taken within a round, and their median (with a 95%
bootstrap CI: is a 3% difference resolved?) and range are printed.

Usage: python benchmarks/dqn_purejaxrl_settings.py [--seeds 1] [--repeats 5] [--env-steps 500000] [--xla-cpu-threads 1]
Record what you measured in benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import flashbax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from plastix.agents import DQNConfig, LoopConfig, make_dqn, make_train
from plastix.envs import make_env
from plastix.interventions import OptimizerConfig, PlasticityConfig, ReDoConfig
from plastix.jit import xla_cpu_threads

NUM_ENVS, BUFFER, BATCH, LEARNING_STARTS, TRAIN_EVERY, TARGET_EVERY_ENV_STEPS = 10, 10_000, 128, 10_000, 10, 500
LR, GAMMA, EPS_END, EPS_STEPS, HIDDEN = 2.5e-4, 0.99, 0.05, 250_000, (120, 84)


class QNet(nn.Module):
    actions: int

    @nn.compact
    def __call__(self, x):
        for width in HIDDEN:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.actions)(x)


def reference_train(total_steps: int, faithful: bool):
    """``train(key) -> (updates, outputs)``: PureJaxRL's DQN (``faithful``) or the minimal loop (module docstring)."""
    import gymnax  # imported here: importing gymnax starts JAX's backends (see --xla-cpu-threads)
    from gymnax.wrappers.purerl import LogWrapper

    env, env_params = gymnax.make("CartPole-v1")
    actions = env.action_space(env_params).n
    if faithful:
        env = LogWrapper(env)  # CartPole's observations are flat already: no FlattenObservationWrapper needed
    net = QNet(actions)
    tx = optax.adam(LR)
    buffer = flashbax.make_flat_buffer(
        max_length=BUFFER, min_length=BATCH, sample_batch_size=BATCH, add_sequences=False, add_batch_size=NUM_ENVS
    )
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    vreset = jax.vmap(env.reset, in_axes=(0, None))

    def train(key):
        k_init, k_reset, key = jax.random.split(key, 3)
        obs, env_state = vreset(jax.random.split(k_reset, NUM_ENVS), env_params)
        params = net.init(k_init, obs[:1])
        opt_state = tx.init(params)
        example = {"obs": obs[0], "action": jnp.int32(0), "reward": jnp.float32(0), "done": jnp.bool_(False)}
        buffer_state = buffer.init(example)

        def step(carry, _):
            params, target, opt_state, buffer_state, env_state, obs, t, updates, key = carry
            key, k_eps, k_rand, k_env, k_sample = jax.random.split(key, 5)
            eps = jnp.maximum(EPS_END, 1.0 - (1.0 - EPS_END) * t / EPS_STEPS)
            greedy = jnp.argmax(net.apply(params, obs), -1)
            random = jax.random.randint(k_rand, (NUM_ENVS,), 0, actions)
            action = jnp.where(jax.random.uniform(k_eps, (NUM_ENVS,)) < eps, random, greedy)
            next_obs, env_state, reward, terminated, truncated, info = vstep(
                jax.random.split(k_env, NUM_ENVS), env_state, action, env_params
            )
            done = terminated | truncated  # PureJaxRL's DQN treats every episode end as terminal
            item = {"obs": obs, "action": action, "reward": reward, "done": done}
            buffer_state = buffer.add(buffer_state, item)
            t = t + NUM_ENVS

            def learn(args):
                params, opt_state, updates = args
                batch = buffer.sample(buffer_state, k_sample).experience
                q_next = jnp.max(net.apply(target, batch.second["obs"]), -1)
                y = batch.first["reward"] + GAMMA * (1.0 - batch.first["done"]) * q_next

                def loss(p):
                    q = jnp.take_along_axis(net.apply(p, batch.first["obs"]), batch.first["action"][:, None], -1)
                    return jnp.mean((q[:, 0] - y) ** 2)

                value, grads = jax.value_and_grad(loss)(params)
                change, opt_state = tx.update(grads, opt_state, params)
                return (optax.apply_updates(params, change), opt_state, updates + 1), value

            ready = (t > LEARNING_STARTS) & (t % TRAIN_EVERY == 0)
            if faithful:
                ready = ready & buffer.can_sample(buffer_state)
            (params, opt_state, updates), loss = jax.lax.cond(
                ready, learn, lambda a: (a, jnp.float32(0)), (params, opt_state, updates)
            )
            sync = t % TARGET_EVERY_ENV_STEPS == 0
            if faithful:
                target = jax.lax.cond(sync, lambda: optax.incremental_update(params, target, 1.0), lambda: target)
            else:
                target = jax.lax.cond(sync, lambda: params, lambda: target)
            carry = (params, target, opt_state, buffer_state, env_state, next_obs, t, updates, key)
            if not faithful:
                return carry, None
            return carry, {
                "timesteps": t,
                "updates": updates,
                "loss": loss,
                "returns": jnp.mean(info["returned_episode_returns"]),
            }

        carry = (params, params, opt_state, buffer_state, env_state, obs, jnp.int32(0), jnp.int32(0), key)
        carry, outputs = jax.lax.scan(step, carry, None, length=total_steps // NUM_ENVS)
        return carry[7], (carry[0], outputs)

    return train


def plastix_train(total_steps: int, diagnostics: bool, redo: bool):
    """``(train, periods)``: plastix's loop at the same settings (see the module docstring)."""
    env = make_env("CartPole-v1")
    learning = total_steps - LEARNING_STARTS
    periods = learning // (1_000 * TRAIN_EVERY)
    chunk = max(d for d in range(1, 8) if periods % d == 0)
    loop = LoopConfig(
        env_steps=learning,
        num_envs=NUM_ENVS,
        replay_ratio=1 / TRAIN_EVERY,
        warmup_steps=LEARNING_STARTS,
        buffer_size=BUFFER,
        batch_size=BATCH,
        period=1_000,
        eval_every=chunk,
        eval_envs=1,
        eval_steps=10,
        diagnostics=diagnostics,
    )
    dqn = DQNConfig(
        network="mlp",
        mlp_hidden=HIDDEN,
        optimizer=OptimizerConfig("adam", LR),
        target_update_period=TARGET_EVERY_ENV_STEPS // TRAIN_EVERY,
        epsilon_end=EPS_END,
        epsilon_decay_steps=EPS_STEPS,
        huber_delta=1e6,  # squared error, as the reference
    )
    plasticity = PlasticityConfig("redo", redo=ReDoConfig(tau=0.1, period=1_000)) if redo else PlasticityConfig()
    agent, _, _ = make_dqn(env.spec, dqn, loop.period, plasticity=plasticity)
    return make_train(loop, env, agent)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--env-steps", type=int, default=500_000)
    parser.add_argument("--xla-cpu-threads", type=int, default=1, help="XLA:CPU's pool (0: XLA's default)")
    args = parser.parse_args()
    pool = xla_cpu_threads(args.xla_cpu_threads)  # before anything starts JAX
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()})")
    print(f"XLA:CPU pool threads: {pool if pool is not None else 'XLA default (could not choose)'}")
    print(f"{args.seeds} seed(s), {args.env_steps} env steps per seed, {args.repeats} interleaved repeats")

    def reference_runner(faithful):
        train = jax.jit(jax.vmap(reference_train(args.env_steps, faithful)))

        def run(keys):
            updates, outputs = train(keys)
            jax.block_until_ready(outputs)
            return updates

        return run

    def plastix_runner(diagnostics, redo):
        train = plastix_train(args.env_steps, diagnostics, redo)

        def run(keys):
            carry = train.init(keys)
            for _ in range(train.layout.chunks):
                carry, metrics, _ = train.run_chunk(carry)
            return jax.block_until_ready(carry.updates)

        return run

    variants = {
        "purejaxrl": reference_runner(True),
        "minimal": reference_runner(False),
        "plastix": plastix_runner(False, False),
        "plastix+diag+redo": plastix_runner(True, True),
    }
    keys = lambda r: jax.random.split(jax.random.PRNGKey(r), args.seeds)  # noqa: E731
    for name, run in variants.items():  # compile (and check the update counts agree)
        t0 = time.perf_counter()
        updates = np.asarray(run(keys(1000)))
        print(f"  {name:18s} first run (compile + run) {time.perf_counter() - t0:6.1f} s, updates {updates.tolist()}")
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            variants[name](keys(r))
            times[name].append(time.perf_counter() - t0)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names), flush=True)
    total = args.env_steps * args.seeds
    print(f"\n{'variant':18s} {'median s':>9s} {'env-steps/s':>12s}")
    for name in names:
        t = float(np.median(times[name]))
        print(f"{name:18s} {t:9.2f} {total / t:12.0f}")

    def show(label, ratio):
        # 95% bootstrap CI of the median per-round ratio: says whether a 3% difference is resolved
        resampled = np.random.default_rng(0).choice(ratio, size=(10_000, ratio.size), replace=True)
        low, high = np.percentile(np.median(resampled, axis=1), [2.5, 97.5])
        print(
            f"{label:44s} median {np.median(ratio):.3f}  95% CI [{low:.3f}, {high:.3f}]"
            f"  range [{ratio.min():.3f}, {ratio.max():.3f}]"
        )

    plain = np.asarray(times["plastix"])
    diag = np.asarray(times["plastix+diag+redo"])
    for reference in ("purejaxrl", "minimal"):
        ref = np.asarray(times[reference])
        show(f"plastix speed / {reference} speed", ref / plain)
        show(f"plastix+diag+redo speed / {reference} speed", ref / diag)
    show("plastix+diag+redo time / plastix time", diag / plain)


if __name__ == "__main__":
    main()
