"""The supervised experiment end to end on a tiny config (compiled once for the module)."""

import dataclasses
import json
import os

import jax
import numpy as np
import pandas as pd
import pytest

from plastix import cli
from plastix.experiments import supervised
from plastix.experiments.datasets import CIFAR_RECORD_BYTES, load_cifar10, load_dataset, read_cifar10_binary
from plastix.experiments.rundir import RunDir

TINY = dict(epochs=2, fit_epochs=2, seeds=2, batch_size=128, chunk_epochs=1, scoring_batch=64)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    runs = str(tmp_path_factory.mktemp("runs"))
    config = supervised.SupervisedConfig(name="a", runs_dir=runs, **TINY)
    df = supervised.run(config)
    return config, df


def test_rows_cover_every_phase_setting_seed_and_epoch(finished):
    config, df = finished
    train, fit = df[df.phase == "train"], df[df.phase == "fit"]
    assert len(train) == 2 * config.seeds * config.epochs
    assert len(fit) == 3 * config.seeds * config.fit_epochs
    assert set(fit.setting) == {"fixed", "shuffled", "fresh"}
    for column in ("dormant_fraction", "overlap", "train_accuracy", "test_accuracy", "layer/dense_0/dormant_fraction"):
        assert df[column].between(0, 1).all(), column
    # labels re-shuffle only in the shuffled setting, from the second epoch on
    assert not train[train.setting == "fixed"].labels_reshuffled.any()
    assert train[(train.setting == "shuffled") & (train.epoch == 2)].labels_reshuffled.all()
    with open(os.path.join(config.runs_dir, "a", "config.json")) as f:
        assert json.load(f)["epochs"] == 2


def test_killed_run_resumes_to_identical_metrics(finished):
    config, df = finished
    killed = dataclasses.replace(config, name="killed")

    class Kill(Exception):
        pass

    def kill_after_first_chunk(phase, done, total):
        if phase == "fit" and done == 1:
            raise Kill

    with pytest.raises(Kill):
        supervised.run(killed, kill_after_first_chunk)
    assert RunDir(os.path.join(config.runs_dir, "killed")).checkpoint_meta() == {"stage": 1, "chunks_done": 1}
    resumed = supervised.run(killed)
    pd.testing.assert_frame_equal(resumed.reset_index(drop=True), df.reset_index(drop=True))  # same seed: identical


def test_vmapped_runs_equal_single_runs(finished):
    config, _ = finished
    exp = supervised.build_for(config)
    carries = supervised.initial_carries(exp, config)
    _, batched = exp.run_epochs(carries)
    single = jax.jit(exp.run_epochs_single)
    for i in (0, 3):  # fixed seed 0 and shuffled seed 1
        _, metrics = single(jax.tree.map(lambda a: a[i], carries))
        for key in ("dormant_fraction", "train_loss", "overlap", "layer/conv_1/grama_fraction"):
            np.testing.assert_allclose(batched[key][i], metrics[key], rtol=2e-5, atol=1e-6, err_msg=key)


def test_config_mismatch_is_refused(finished):
    config, _ = finished
    with pytest.raises(ValueError, match="different config"):
        supervised.run(dataclasses.replace(config, epochs=4))


def test_cli_writes_run_and_rerun_is_a_noop(finished, capsys):
    config, _ = finished
    args = ["run", "supervised", "--name", "cli", "--runs-dir", config.runs_dir]
    for field, value in TINY.items():
        args += [f"--{field.replace('_', '-')}", str(value)]
    assert cli.main(args) == 0
    path = os.path.join(config.runs_dir, "cli")
    for name in (
        "config.json",
        "metrics.parquet",
        "report.md",
        "dormant.png",
        "overlap_accuracy.png",
        "fit_new_targets.png",
        "DONE",
    ):
        assert os.path.getsize(os.path.join(path, name)) > 0, name
    stamp = os.path.getmtime(os.path.join(path, "metrics.parquet"))
    assert cli.main(args) == 0
    assert "is finished" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(path, "metrics.parquet")) == stamp
    assert cli.main(["report", path]) == 0


def test_cli_errors_name_the_problem(capsys):
    assert cli.main(["run", "atari"]) == 2
    err = capsys.readouterr().err
    assert "atari" in err and "dqn-replay-ratio" in err  # the bad name and the allowed experiments
    assert cli.main(["run", "supervised", "--data", "cifar10"]) == 2  # tyro reports config errors
    assert "data_dir" in capsys.readouterr().err
    assert cli.main(["list"]) == 0
    assert "rl" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["rl", "--agent", "dqn", "--sac.hidden", "256", "256"], "--sac.hidden is not read by agent='dqn'"),
        (["rl", "--agent", "sac", "--dqn.huber-delta", "2"], "RLConfig.dqn is set but agent='sac'"),
        (["rl", "--plasticity.method", "redo", "--plasticity.reset.last-k", "2"], "PlasticityConfig.reset is set"),
        (["rl", "--plasticity.trigger", "task_switch"], "PlasticityConfig.trigger is set but method='none'"),
        (["sac-dormant", "--methods", "none"], "--methods is not read by experiment sac-dormant"),
        (["dqn-dormant-growth", "--replay-ratios", "1"], "not read by experiment dqn-dormant-growth"),
        (["rl", "--diagnostics.stagnation-source", "weights"], "stagnation_source"),
    ],
)
def test_cli_rejects_flags_the_run_would_ignore(args, message, tmp_path, capsys):
    assert cli.main(["run", *args, "--runs-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "a rejected command writes nothing"


@pytest.mark.parametrize(
    "kwargs,field", [({"epochs": 0}, "epochs"), ({"data": "mnist"}, "data"), ({"tau": -1.0}, "tau")]
)
def test_invalid_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        supervised.SupervisedConfig(**kwargs)


def _write_cifar(path, labels, rng):
    pixels = rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None], pixels], axis=1)
    records.tofile(path)
    return pixels


def test_cifar10_binary_reader(tmp_path):
    rng = np.random.default_rng(0)
    pixels = _write_cifar(tmp_path / "data_batch_1.bin", [3, 7, 0], rng)
    _write_cifar(tmp_path / "test_batch.bin", [1, 2], rng)
    images, labels = read_cifar10_binary(str(tmp_path / "data_batch_1.bin"))
    assert images.shape == (3, 32, 32, 3) and labels.tolist() == [3, 7, 0]
    # record layout: red plane, green plane, blue plane, each row-major 32×32
    assert images[1, 4, 5, 0] == pixels[1, 4 * 32 + 5]
    assert images[1, 4, 5, 2] == pixels[1, 2 * 1024 + 4 * 32 + 5]
    data = load_cifar10(str(tmp_path), max_train=2)
    assert data.train_x.shape == (2, 32, 32, 3) and data.test_x.shape == (2, 32, 32, 3)
    assert 0.0 <= data.train_x.min() and data.train_x.max() <= 1.0
    (tmp_path / "bad.bin").write_bytes(b"\x00" * (CIFAR_RECORD_BYTES + 1))
    with pytest.raises(ValueError, match="whole number"):
        read_cifar10_binary(str(tmp_path / "bad.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_cifar10(str(tmp_path / "empty"), 10)


def test_digits_ship_with_the_package():
    data = load_dataset("digits")
    assert data.train_x.shape[1:] == (8, 8, 1) and len(data.train_y) + len(data.test_y) == 1797
