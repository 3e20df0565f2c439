"""Runs never lie: corrupt or truncated files are refused, diverged training stops with a clear error."""

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from plastix import cli
from plastix.experiments import dormant, supervised
from plastix.experiments.rundir import CorruptRunError, NonFiniteError, RunDir, check_finite

STATE = {"w": jnp.arange(4096, dtype=jnp.float32).reshape(64, 64), "b": jnp.ones(64)}
ROWS = pd.DataFrame({"seed": [0, 0, 1], "period": [1, 2, 1], "loss": [0.5, 0.4, 0.6], "updates": [10, 20, 10]})


def _saved(tmp_path):
    rundir = RunDir(str(tmp_path / "run"))
    rundir.save_checkpoint(STATE, ROWS, {"chunks_done": 2})
    return rundir


def test_checkpoint_round_trip(tmp_path):
    state, rows, meta = _saved(tmp_path).load_checkpoint(STATE)
    np.testing.assert_array_equal(state["w"], STATE["w"])
    pd.testing.assert_frame_equal(rows, ROWS)
    assert meta == {"chunks_done": 2}


def test_a_kill_between_the_rows_and_the_checkpoint_resumes_the_last_complete_checkpoint(tmp_path):
    """The next save's rows are written before its checkpoint: a kill in between must leave the last
    complete checkpoint readable with its own rows (found by a Ray worker killed mid-save)."""
    rundir = _saved(tmp_path)
    more = pd.concat([ROWS, ROWS.assign(period=3)], ignore_index=True)
    more.to_parquet(rundir.file("rows-2.parquet"))  # what a kill after the rows, before orbax, leaves
    state, rows, meta = rundir.load_checkpoint(STATE)
    pd.testing.assert_frame_equal(rows, ROWS)
    assert meta == {"chunks_done": 2}
    rundir.save_checkpoint(STATE, more, {"chunks_done": 3})  # the next save replaces it and cleans up
    assert [n for n in os.listdir(rundir.path) if n.startswith("rows")] == ["rows-2.parquet"]
    pd.testing.assert_frame_equal(rundir.load_checkpoint(STATE)[1], more)


def test_a_disk_full_save_says_so_and_leaves_the_last_checkpoint_as_it_was(tmp_path, monkeypatch, caplog):
    """A save that runs out of space (orbax reports it as tensorstore's ``ValueError``
    RESOURCE_EXHAUSTED, found on a full tmpfs) is an ``OSError`` ENOSPC saying how to resume; what
    it wrote is removed, the last complete checkpoint loads with its rows, and orbax's own
    tracebacks of the failure are not logged."""
    import errno
    import logging

    import orbax.checkpoint as ocp

    rundir = _saved(tmp_path)

    def full(self, step, args=None):
        os.makedirs(os.path.join(rundir.file("checkpoint"), f"{step}.orbax-checkpoint-tmp-7"))
        logging.getLogger("absl").error("write failed", exc_info=OSError(errno.ENOSPC, "No space left on device"))
        raise ValueError(f"RESOURCE_EXHAUSTED: Error writing {step}: No space left on device [os_error_code='28']")

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    with caplog.at_level(logging.ERROR, logger="absl"), pytest.raises(OSError, match="run the same command again") as e:
        rundir.save_checkpoint(STATE, pd.concat([ROWS, ROWS]), {"chunks_done": 3})
    assert e.value.errno == errno.ENOSPC and e.value.filename == rundir.file("checkpoint")
    assert not caplog.records  # orbax's log of it is dropped
    assert sorted(os.listdir(rundir.path)) == ["checkpoint", "rows-1.parquet"]
    assert not [n for n in os.listdir(rundir.file("checkpoint")) if "tmp" in n]
    state, rows, meta = rundir.load_checkpoint(STATE)
    np.testing.assert_array_equal(state["w"], STATE["w"])
    pd.testing.assert_frame_equal(rows, ROWS)
    assert meta == {"chunks_done": 2}
    monkeypatch.setattr(ocp.CheckpointManager, "save", lambda *a, **k: (_ for _ in ()).throw(ValueError("other")))
    with pytest.raises(ValueError, match="other"):  # any other failure: raised as it is, cleaned up too
        rundir.save_checkpoint(STATE, ROWS, {"chunks_done": 3})
    assert sorted(os.listdir(rundir.path)) == ["checkpoint", "rows-1.parquet"]


def test_a_checkpoint_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import errno
    import shutil

    from plastix.experiments import rundir as rundir_module

    rundir = _saved(tmp_path)
    usage = shutil.disk_usage(rundir.path)
    monkeypatch.setattr(rundir_module.shutil, "disk_usage", lambda path: usage._replace(free=STATE["w"].nbytes))
    with pytest.raises(OSError, match=r"needs about 16\.\d kB, 16\.4 kB free.*run the same command again") as e:
        rundir.save_checkpoint(STATE, ROWS, {"chunks_done": 3})
    assert e.value.errno == errno.ENOSPC
    assert sorted(os.listdir(rundir.path)) == ["checkpoint", "rows-1.parquet"]
    assert rundir.checkpoint_meta() == {"chunks_done": 2}


def test_a_run_directory_is_held_by_one_process_at_a_time(tmp_path):
    """A second ``plastix run`` of the same run while the first trains is refused with the
    holder's pid (they would overwrite each other's checkpoints); the claim ends with its block
    (or with the process: an ``flock``, nothing stale after a kill)."""
    from plastix.experiments.rundir import RunInUseError

    rundir = _saved(tmp_path)
    in_use = rf"{rundir.path} is in use by another plastix process \(pid {os.getpid()}\)"
    with rundir.claim():
        with pytest.raises(RunInUseError, match=in_use):
            with rundir.claim():
                pass
    with rundir.claim():  # released
        pass
    config = dormant.SingleRunConfig(runs_dir=str(tmp_path), name="rl-run")
    held = RunDir(str(tmp_path / "rl-run"))
    held.prepare(config, "rl")
    with held.claim(), pytest.raises(RunInUseError):
        dormant.run("rl", config)  # an experiment claims its directory before it trains


def test_a_checkpoint_of_another_state_layout_is_refused_as_not_matching(tmp_path):
    """A template with ``None`` where the saved state has an array (orbax restores the rest without a
    word; e.g. a KNIFE run saved before its fixed parameters lost their optimizer moments) is refused
    as another config's state, not as corruption and never as a resumed run."""
    rundir = _saved(tmp_path)
    with pytest.raises(ValueError, match="does not match this config's state .*holds 2 arrays.* has 1"):
        rundir.load_checkpoint({"w": STATE["w"], "b": None})


def test_flipped_checkpoint_bytes_are_refused(tmp_path):
    rundir = _saved(tmp_path)
    files = [os.path.join(d, f) for d, _, fs in os.walk(rundir.file("checkpoint")) for f in fs]
    biggest = max(files, key=os.path.getsize)
    data = bytearray(open(biggest, "rb").read())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    open(biggest, "wb").write(bytes(data))
    with pytest.raises(CorruptRunError, match="checkpoint"):
        rundir.load_checkpoint(STATE)


def test_truncated_rows_are_refused_with_the_path(tmp_path):
    rundir = _saved(tmp_path)
    (name,) = [n for n in os.listdir(rundir.path) if n.startswith("rows")]
    path = rundir.file(name)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CorruptRunError, match=name):
        rundir.load_checkpoint(STATE)


def test_corrupt_metrics_are_refused_and_report_says_so(tmp_path, capsys):
    rundir = RunDir(str(tmp_path / "done"))
    rundir.prepare(supervised.SupervisedConfig(name="done", runs_dir=str(tmp_path)))
    rundir.finish(ROWS)
    pd.testing.assert_frame_equal(rundir.metrics(), ROWS)
    path = rundir.file("metrics.parquet")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-20])
    with pytest.raises(CorruptRunError, match="checksum"):
        rundir.metrics()
    assert cli.main(["report", rundir.path]) == 2
    assert "metrics.parquet" in capsys.readouterr().err


def test_report_on_an_unfinished_run_says_how_to_resume(tmp_path, capsys):
    rundir = _saved(tmp_path)
    assert cli.main(["report", rundir.path]) == 2
    assert "not a finished run" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2


def test_check_finite_names_step_and_last_good_checkpoint():
    bad = ROWS.assign(loss=[0.5, np.nan, 0.6])
    with pytest.raises(
        NonFiniteError, match=r"loss is nan at seed 0, period 2, updates 20 in run-x.*last good checkpoint: here"
    ):
        check_finite(STATE, bad, "run-x", lambda: "here")
    with pytest.raises(NonFiniteError, match="non-finite parameters"):
        check_finite({"w": jnp.array([1.0, jnp.inf])}, ROWS, "run-x", lambda: "here")
    check_finite(STATE, ROWS.assign(train_return=np.nan), "run-x", lambda: "here")  # NaN outside losses is allowed


def test_finite_check_on_host_and_on_device_agree():
    from plastix.experiments import rundir

    for leaves, finite in (([jnp.ones(3), jnp.zeros((2, 2))], True), ([jnp.ones(3), jnp.array([0.0, jnp.nan])], False)):
        assert rundir._leaves_finite(leaves) is finite  # NumPy: the arrays live in host memory here
        assert bool(rundir._all_finite(leaves)) is finite  # the compiled check used for accelerator arrays


def test_diverging_run_stops_with_the_step_and_setting(tmp_path, capsys):
    config = supervised.SupervisedConfig(
        name="nan",
        runs_dir=str(tmp_path),
        epochs=2,
        fit_epochs=1,
        seeds=1,
        batch_size=128,
        chunk_epochs=1,
        scoring_batch=64,
        learning_rate=1e9,
    )
    with pytest.raises(
        NonFiniteError, match=r"loss is (nan|inf) at seed 0, epoch 1 .*learning_rate=1000000000.0.*last good"
    ):
        supervised.run(config)
    assert not RunDir(os.path.join(str(tmp_path), "nan")).finished
    again = dataclasses.replace(config, name="nan-cli")
    args = ["run", "supervised", "--name", again.name, "--runs-dir", again.runs_dir, "--learning-rate", "1e9"]
    for field in ("epochs", "fit_epochs", "seeds", "batch_size", "chunk_epochs", "scoring_batch"):
        args += [f"--{field.replace('_', '-')}", str(getattr(again, field))]
    assert cli.main(args) == 1
    assert "training diverged" in capsys.readouterr().err


def test_run_directory_rules(tmp_path):
    from plastix.experiments import dormant

    config = supervised.SupervisedConfig(name="r", runs_dir=str(tmp_path))
    RunDir(str(tmp_path / "r")).prepare(config)
    RunDir(str(tmp_path / "r")).save_checkpoint(STATE, ROWS, {"chunks_done": 1})  # results to protect
    for spelling in (str(tmp_path) + "/", os.path.relpath(str(tmp_path)), str(tmp_path / "." / "")):
        RunDir(os.path.join(spelling, "r")).prepare(dataclasses.replace(config, runs_dir=spelling))  # same run
    with pytest.raises(ValueError, match="different config"):
        RunDir(str(tmp_path / "r")).prepare(dataclasses.replace(config, epochs=3))
    with pytest.raises(ValueError, match="experiment"):
        RunDir(str(tmp_path / "r")).prepare(config, "dqn-replay-ratio")  # another experiment under the same name
    for name in ("../escape", "a/b", ".hidden", ".."):
        with pytest.raises(ValueError, match="name"):
            dormant.DormantExperimentConfig(name=name)
    with pytest.raises(ValueError, match="SupervisedConfig.name"):
        supervised.run(dataclasses.replace(config, name="../up"))
    with pytest.raises(ValueError, match="duplicate"):
        dormant.DormantExperimentConfig(methods=("none", "none"))
    with pytest.raises(ValueError, match="duplicate"):
        dormant.DormantExperimentConfig(replay_ratios=(1.0, 1.0))
    study = dormant.DormantExperimentConfig(name="s", runs_dir=str(tmp_path), workers=1)
    RunDir(str(tmp_path / "s")).prepare(study, "matrix-sequential")
    os.makedirs(tmp_path / "s" / "cell")
    RunDir(str(tmp_path / "s" / "cell")).finish(ROWS)  # a finished cell below the study
    RunDir(str(tmp_path / "s")).prepare(dataclasses.replace(study, workers=2), "matrix-sequential")  # how, not what
    with pytest.raises(ValueError, match="different config"):
        RunDir(str(tmp_path / "s")).prepare(dataclasses.replace(study, seeds=3), "matrix-sequential")
    with pytest.raises(ValueError, match="DormantExperimentConfig.workers"):
        dormant.DormantExperimentConfig(workers=-1)


def test_a_run_without_results_is_taken_over_by_a_corrected_config(tmp_path):
    """A run stopped by an error before its first checkpoint (e.g. a width of 0, found when its
    network is first built) must not block the corrected command: nothing of it is lost."""
    first = supervised.SupervisedConfig(name="r", runs_dir=str(tmp_path), epochs=2)
    rundir = RunDir(str(tmp_path / "r"))
    rundir.prepare(first)
    os.makedirs(rundir.file("cell"))  # a cell directory that got as far as its config
    RunDir(rundir.file("cell")).prepare(first)
    corrected = dataclasses.replace(first, epochs=3)
    rundir.prepare(corrected, "supervised")  # another config and an experiment name: taken over
    rundir.prepare(corrected, "supervised")  # and now it is this run
    with open(rundir.file("config.json")) as f:
        assert json.load(f)["epochs"] == 3
    RunDir(rundir.file("cell")).save_checkpoint(STATE, ROWS, {"chunks_done": 1})
    with pytest.raises(ValueError, match="different config"):
        rundir.prepare(first, "supervised")


def test_rejected_config_writes_nothing(tmp_path):
    from plastix.experiments import dormant

    bad = dormant.DormantExperimentConfig(name="x", runs_dir=str(tmp_path), env="NoSuchEnv-v0")
    with pytest.raises(ValueError):
        dormant.run("dqn-replay-ratio", bad)
    assert not os.path.exists(tmp_path / "x" / "config.json")


def test_resumed_rows_keep_their_dtypes(tmp_path):
    rundir = RunDir(str(tmp_path / "d"))
    rows = ROWS.astype({"updates": np.int32, "period": np.int32})
    rundir.save_checkpoint(STATE, rows, {})
    _, back, _ = rundir.load_checkpoint(STATE)
    assert dict(back.dtypes) == dict(rows.dtypes)


def test_a_resumed_run_does_not_compile_its_chunk_again(tmp_path):
    """A weakly typed carry leaf (``jnp.array(0)``, as flashbax's buffer index) is made strong when
    the stage starts, so the carry restored from a checkpoint has the same types and the chunk
    function compiled for the first run serves the resumed one."""
    import jax

    from plastix.experiments.runner import Stage, run_stages

    traces = []

    @jax.jit
    def step(carry):
        traces.append(jax.typeof(carry["count"]))
        return {"count": carry["count"] + 1, "w": carry["w"] * 0.5}

    def run_chunk(carry, done):
        carry = step(carry)
        return carry, pd.DataFrame({"seed": [0], "period": [done + 1], "loss": [float(carry["w"].sum())]})

    stages = [Stage("train", 3, lambda _: {"count": jnp.array(0), "w": jnp.ones(3)}, run_chunk)]
    rundir = RunDir(str(tmp_path / "run"))
    rundir.prepare(supervised.SupervisedConfig(name="toy", runs_dir=str(tmp_path)))
    assert not run_stages(rundir, stages, "toy", stop_after_chunks=1).finished
    result = run_stages(rundir, stages, "toy")
    assert result.finished and int(result.carry["count"]) == 3
    assert len(traces) == 1 and not traces[0].weak_type, traces
