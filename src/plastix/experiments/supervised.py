"""Target non-stationarity in supervised learning (Sokar et al. 2023, Section 3.1, Figure 3).

Phase 1 trains a small CNN classifier with (a) fixed labels and (b) labels re-shuffled every
``shuffle_every`` epochs, tracking per epoch the dormant fraction per layer, the overlap of the
dormant set with the previous epoch's, and accuracy. Phase 2 ("learning ability", Figure 8)
takes both trained networks and a freshly initialized one and fits new random labels, with a
fresh optimizer, reporting how well each fits.

Both phases run the same jitted epoch function (``lax.scan`` over minibatches), scanned over a
chunk of epochs and ``vmap``-ed over every (setting, seed) pair at once. The host loop only
shows progress and checkpoints after each chunk.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from jax import Array

from plastix.experiments.datasets import ImageData, load_dataset
from plastix.experiments.rundir import RunDir, check_run_name
from plastix.experiments.runner import Stage, complete, run_stages, stacked_rows
from plastix.interventions import OptimizerConfig, TrainState, make_optimizer
from plastix.jit import jit_program
from plastix.metrics import DiagnosticsConfig, diagnose, overlap_coefficient, summarize
from plastix.nn import ConvNet, small_cnn

SETTINGS = ("fixed", "shuffled")
FIT_SETTINGS = ("fixed", "shuffled", "fresh")


@dataclasses.dataclass(frozen=True)
class SupervisedConfig:
    """Supervised target non-stationarity experiment.

    Attributes:
      name: run name; the run is written to ``<runs_dir>/<name>``.
      runs_dir: parent directory of run directories.
      data: ``digits`` (ships with scikit-learn) or ``cifar10`` (binary version, needs ``data_dir``).
      data_dir: directory holding the CIFAR-10 binary files (``data_batch_*.bin``, ``test_batch.bin``).
      max_train: training samples kept from CIFAR-10 (paper: 10,000).
      epochs: training epochs of phase 1 (paper: 100).
      shuffle_every: epochs between label re-shuffles in the non-stationary setting (1: every
        epoch, the default; the paper re-shuffles CIFAR-10 labels every 20 of 100 epochs).
      fit_epochs: epochs of fitting new random labels in phase 2.
      seeds: independent seeds, run in parallel with ``vmap``.
      batch_size: minibatch size.
      learning_rate: SGD learning rate.
      momentum: SGD momentum.
      width_multiplier: scales every layer's width.
      tau: τ of the dormant-neuron threshold.
      scoring_batch: samples of the training set used to score neurons.
      chunk_epochs: epochs per jitted chunk (progress and checkpoint granularity).
      seed: base seed.
      diagnostics: score neurons every epoch (switch off only to time the training alone).
    """

    name: str = "supervised"
    runs_dir: str = "runs"
    data: Literal["digits", "cifar10"] = "digits"
    data_dir: str | None = None
    max_train: int = 10_000
    epochs: int = 100
    shuffle_every: int = 1
    fit_epochs: int = 50
    seeds: int = 3
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
    width_multiplier: float = 1.0
    tau: float = 0.1
    scoring_batch: int = 256
    chunk_epochs: int = 10
    seed: int = 0
    diagnostics: bool = True

    def __post_init__(self):
        positive = (
            "epochs",
            "shuffle_every",
            "fit_epochs",
            "seeds",
            "batch_size",
            "scoring_batch",
            "chunk_epochs",
            "max_train",
        )
        for field in positive:
            if getattr(self, field) < 1:
                raise ValueError(f"SupervisedConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.data not in ("digits", "cifar10"):
            raise ValueError(f"SupervisedConfig.data: got {self.data!r}, allowed values are ('digits', 'cifar10')")
        if self.data == "cifar10" and not self.data_dir:
            raise ValueError("SupervisedConfig.data_dir is required with data='cifar10' (no download)")
        if self.learning_rate <= 0 or not 0 <= self.momentum < 1:
            raise ValueError("SupervisedConfig.learning_rate must be > 0 and momentum in [0, 1)")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"SupervisedConfig.seed must be in [0, 2**32), the PRNG key range, got {self.seed}")
        if self.tau < 0:
            raise ValueError(f"SupervisedConfig.tau must be >= 0, got {self.tau}")


class Carry(NamedTuple):
    """Per-run state carried across epochs (one per setting × seed under ``vmap``)."""

    state: TrainState
    labels: Array  # (n_train,) current targets
    key: Array  # raw uint32 PRNG key
    dormant_mask: Array  # (total neurons,) previous epoch's dormant set
    shuffle: Array  # bool: re-shuffle labels in this run
    epoch: Array  # int32: epochs done


def _cross_entropy(logits: Array, labels: Array) -> Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _accuracy(logits: Array, labels: Array) -> Array:
    return jnp.mean(jnp.argmax(logits, -1) == labels)


class Experiment(NamedTuple):
    """Everything built from a config: the network, data and the jitted functions."""

    net: ConvNet
    data: ImageData
    tx: optax.GradientTransformation
    init_carry: Callable[..., Carry]
    run_epochs: Callable[[Carry], tuple[Carry, dict]]  # jitted, vmapped over runs
    chunk: int
    run_epochs_single: Callable[[Carry], tuple[Carry, dict]]  # the same scan for one run, not jitted


def _chunk_size(total: int, wanted: int) -> int:
    """Largest divisor of ``total`` not above ``wanted`` (one compiled chunk shape)."""
    return max(d for d in range(1, min(total, wanted) + 1) if total % d == 0)


def build(config: SupervisedConfig, data: ImageData | None = None) -> Experiment:
    """Build the network, optimizer and jitted epoch functions for ``config``."""
    data = data if data is not None else load_dataset(config.data, config.data_dir, config.max_train, config.seed)
    net = small_cnn(data.num_classes, config.width_multiplier)
    topology = net.topology()
    tx = make_optimizer(OptimizerConfig("sgd", config.learning_rate, momentum=config.momentum))
    diag_config = DiagnosticsConfig(tau=config.tau)
    x_train, x_test = jnp.asarray(data.train_x), jnp.asarray(data.test_x)
    y_test = jnp.asarray(data.test_y)
    n = x_train.shape[0]
    n_batches = n // config.batch_size
    if n_batches < 1:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {n} training samples")
    n_score = min(config.scoring_batch, n)
    score_x = x_train[:n_score]

    def apply(params, x):
        return net.apply({"params": params}, x)

    def dormant_mask(params, labels):
        diag = diagnose(
            topology, net.apply, params, score_x, lambda o: _cross_entropy(o, labels[:n_score]), diag_config
        )
        return diag, jnp.concatenate([diag.layers[name].dormant for name in topology.names])

    def init_carry(key: Array, params: dict, labels: Array, shuffle: Array) -> Carry:
        state = TrainState.create(params, tx)
        _, mask = dormant_mask(params, labels)
        return Carry(state, labels, key, mask, shuffle, jnp.zeros((), jnp.int32))

    def epoch(carry: Carry, _) -> tuple[Carry, dict]:
        key, k_labels, k_order = jax.random.split(carry.key, 3)
        reshuffle = carry.shuffle & (carry.epoch > 0) & (carry.epoch % config.shuffle_every == 0)
        labels = jnp.where(reshuffle, jax.random.permutation(k_labels, carry.labels), carry.labels)
        order = jax.random.permutation(k_order, n)[: n_batches * config.batch_size]

        def step(state, idx):
            loss, grads = jax.value_and_grad(lambda p: _cross_entropy(apply(p, x_train[idx]), labels[idx]))(
                state.params
            )
            return state.apply_gradients(grads), loss

        state, losses = jax.lax.scan(step, carry.state, order.reshape(n_batches, config.batch_size))
        if config.diagnostics:
            diag, mask = dormant_mask(state.params, labels)
            metrics = summarize(diag)
            metrics["overlap"] = overlap_coefficient(carry.dormant_mask, mask)
        else:
            mask, metrics = carry.dormant_mask, {}
        metrics.update(
            train_loss=jnp.mean(losses),
            train_accuracy=_accuracy(apply(state.params, x_train), labels),
            test_accuracy=_accuracy(apply(state.params, x_test), y_test),
            labels_reshuffled=reshuffle,
        )
        return Carry(state, labels, key, mask, carry.shuffle, carry.epoch + 1), metrics

    chunk = _chunk_size(math.gcd(config.epochs, config.fit_epochs), config.chunk_epochs)

    def run_epochs(carry: Carry) -> tuple[Carry, dict]:
        return jax.lax.scan(epoch, carry, None, length=chunk)

    return Experiment(
        net, data, tx, jit_program(jax.vmap(init_carry)), jit_program(jax.vmap(run_epochs)), chunk, run_epochs
    )


@functools.lru_cache(maxsize=4)
def _build_cached(compute_config: SupervisedConfig) -> Experiment:
    return build(compute_config)


def build_for(config: SupervisedConfig) -> Experiment:
    """:func:`build`, memoized on the fields that change computation (not ``name`` / ``runs_dir``)."""
    return _build_cached(dataclasses.replace(config, name="", runs_dir=""))


def initial_carries(exp: Experiment, config: SupervisedConfig) -> Carry:
    """Phase-1 carries for runs ``[fixed × seeds, shuffled × seeds]``; seed i shares its init across settings."""
    base = jax.random.PRNGKey(config.seed)
    seed_keys = jax.random.split(base, config.seeds)
    params = jax.vmap(lambda k: exp.net.init(k, exp.data.train_x[:1])["params"])(seed_keys)
    params = jax.tree.map(lambda t: jnp.concatenate([t, t]), params)  # same init for both settings
    run_keys = jnp.concatenate([jax.vmap(lambda k: jax.random.fold_in(k, setting))(seed_keys) for setting in (1, 2)])
    labels = jnp.tile(jnp.asarray(exp.data.train_y), (2 * config.seeds, 1))
    shuffle = jnp.repeat(jnp.array([False, True]), config.seeds)
    return exp.init_carry(run_keys, params, labels, shuffle)


def fit_carries(exp: Experiment, config: SupervisedConfig, trained: Carry) -> Carry:
    """Phase-2 carries: [fixed-trained, shuffled-trained, fresh] × seeds, new random labels, fresh optimizer."""
    seed_keys = jax.random.split(jax.random.PRNGKey(config.seed + 1), config.seeds)
    fresh = jax.vmap(lambda k: exp.net.init(jax.random.fold_in(k, 3), exp.data.train_x[:1])["params"])(seed_keys)
    params = jax.tree.map(lambda t, f: jnp.concatenate([t, f]), trained.state.params, fresh)
    n = exp.data.train_x.shape[0]
    targets = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 4), (n,), 0, exp.data.num_classes))(seed_keys)
    labels = jnp.tile(targets, (3, 1))  # the same new targets for the three networks of a seed
    keys = jax.vmap(lambda k: jax.random.fold_in(k, 5))(jnp.tile(seed_keys, (3, 1)))
    return exp.init_carry(keys, params, labels, jnp.zeros(3 * config.seeds, bool))


def run(config: SupervisedConfig, progress: Callable[[str, int, int], None] | None = None) -> pd.DataFrame:
    """Run (or resume, or read back if finished) the experiment, ending with its report.

    A run started here ends exactly like ``plastix run supervised``: ``metrics.parquet``,
    ``DONE``, the figures and ``report.md`` in ``<runs_dir>/<name>``.

    Args:
      config: the experiment.
      progress: ``progress(phase, epochs_done, epochs_total)`` called after every chunk.

    Returns:
      one row per (phase, setting, seed, epoch) with every metric (see ``metrics.parquet``).
    """
    check_run_name(config.name, "SupervisedConfig.name")
    rundir = RunDir(os.path.join(config.runs_dir, config.name))
    with rundir.claim():  # one process per run directory
        rundir.prepare(config, "supervised")
        if rundir.finished:
            return rundir.metrics()
        exp = build_for(config)
        result = run_stages(
            rundir,
            stages(exp, config),
            where=f"{rundir.path} (SGD learning_rate={config.learning_rate})",
            progress=(lambda phase, done, total: progress(phase, done * exp.chunk, total * exp.chunk))
            if progress
            else None,
        )
        complete(rundir, result.rows, lambda df, path: write_report(config, df, path))
        return result.rows


def stages(exp: Experiment, config: SupervisedConfig) -> list[Stage]:
    """Phase 1 ("train": fixed vs shuffled labels) and phase 2 ("fit": new random labels)."""

    def chunk_of(phase: str, settings: tuple[str, ...]):
        runs = len(settings) * config.seeds
        labels = {
            "phase": np.full(runs, phase),
            "setting": np.repeat(np.asarray(settings), config.seeds),
            "seed": np.tile(np.arange(config.seeds), len(settings)),
        }

        def run_chunk(carry: Carry, done: int):
            carry, metrics = exp.run_epochs(carry)
            return carry, stacked_rows(metrics, "epoch", done * exp.chunk, labels)

        return run_chunk

    return [
        Stage(
            "train",
            config.epochs // exp.chunk,
            lambda _: initial_carries(exp, config),
            chunk_of("train", SETTINGS),
            trained=lambda c: c.state,
        ),
        Stage(
            "fit",
            config.fit_epochs // exp.chunk,
            lambda trained: fit_carries(exp, config, trained),
            chunk_of("fit", FIT_SETTINGS),
            trained=lambda c: c.state,
        ),
    ]


def summary(df: pd.DataFrame) -> list[dict]:
    """Final-epoch results per phase and setting: mean and 95% bootstrap CI over seeds."""
    from plastix.report import mean_ci

    out = []
    for phase, metrics in (
        ("train", ("dormant_fraction", "overlap", "train_accuracy", "test_accuracy")),
        ("fit", ("train_accuracy", "dormant_fraction")),
    ):
        part = df[df.phase == phase]
        last = part[part.epoch == part.epoch.max()]
        for setting in last.setting.unique():
            row = {"phase": phase, "setting": setting}
            for m in metrics:
                row[m] = mean_ci(last[last.setting == setting][m].to_numpy())
            out.append(row)
    return out


def write_report(config: SupervisedConfig, df: pd.DataFrame, path: str) -> list[str]:
    """Figures (PNG) and ``report.md`` in run directory ``path``; returns the files written."""
    from plastix.report import curve_grid, few_seeds_note, format_estimate

    train, fit = df[df.phase == "train"], df[df.phase == "fit"]
    layers = [
        c[len("layer/") : -len("/dormant_fraction")]
        for c in df.columns
        if c.startswith("layer/") and c.endswith("/dormant_fraction")
    ]
    files = [
        curve_grid(
            train,
            [("dormant_fraction", "all layers")] + [(f"layer/{name}/dormant_fraction", name) for name in layers],
            f"{path}/dormant.png",
            scale=100,
            ylabel=f"τ={config.tau}-dormant neurons (%)",
            order=SETTINGS,
            suptitle="Dormant neurons with fixed vs shuffled labels",
        ),
        curve_grid(
            train,
            [
                ("overlap", "dormant set vs previous epoch"),
                ("train_accuracy", "train accuracy (current labels)"),
                ("test_accuracy", "test accuracy (true labels)"),
            ],
            f"{path}/overlap_accuracy.png",
            order=SETTINGS,
        ),
        curve_grid(
            fit,
            [("train_accuracy", "fit new random labels: train accuracy"), ("dormant_fraction", "dormant fraction")],
            f"{path}/fit_new_targets.png",
            order=FIT_SETTINGS,
            legend_title="network trained with",
            suptitle="Learning ability: trained networks vs a fresh one",
        ),
    ]
    rows = summary(df)
    lines = [
        f"# Supervised target non-stationarity ({config.data}, {config.seeds} seeds)",
        "",
        f"Phase 1: {config.epochs} epochs of SGD (lr {config.learning_rate}, momentum {config.momentum}, batch "
        f"{config.batch_size}) with fixed labels, or labels re-shuffled every {config.shuffle_every} epoch(s). "
        f"Phase 2: {config.fit_epochs} epochs fitting new random labels, starting from each trained network and "
        "from a fresh one, each with a fresh optimizer. Final epoch, mean [95% bootstrap CI] over seeds; "
        f"dormant = τ-dormant with τ = {config.tau}.",
        "",
        "| phase | network | dormant | overlap | train acc. | test acc. |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        overlap = format_estimate(r["overlap"], False) if "overlap" in r else "–"
        test = format_estimate(r["test_accuracy"], True) if "test_accuracy" in r else "–"
        lines.append(
            f"| {r['phase']} | {r['setting']} | {format_estimate(r['dormant_fraction'], True)} | {overlap} | "
            f"{format_estimate(r['train_accuracy'], True)} | {test} |"
        )
    n_min = min(v.n for r in rows for v in r.values() if hasattr(v, "n"))
    lines += ["", few_seeds_note(n_min), *[f"![{f.rsplit('/', 1)[-1]}]({f.rsplit('/', 1)[-1]})" for f in files], ""]
    report = f"{path}/report.md"
    with open(report, "w") as f:
        f.write("\n".join(lines))
    return files + [report]
