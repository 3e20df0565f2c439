"""``plastix sweep``: grid expansion, the local backend (resume, failures, status), the sweep report,
seeds sharded over local devices, live logging, and the Ray backend (slow: a local Ray cluster)."""

import dataclasses
import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from plastix import cli
from plastix.experiments import dormant, sweep
from plastix.experiments.rl import RLConfig, run_cell
from plastix.experiments.rundir import RunDir

TINY = (
    "env=CartPole-v1",
    "loop.env_steps=300",
    "loop.warmup_steps=100",
    "loop.buffer_size=1000",
    "loop.batch_size=16",
    "loop.period=50",
    "loop.eval_every=2",
    "loop.eval_envs=2",
    "loop.eval_steps=20",
    "loop.scoring_batch=32",
    "dqn.mlp_hidden=[16]",
    "dqn.target_update_period=20",
)
"""A DQN cell of 3 chunks on CartPole (the same learner as test_runner_cli's, so compiled once)."""


def tiny_sweep(runs_dir: str, *grid: str, name: str = "s", seeds: int = 2) -> sweep.SweepConfig:
    """The TINY cell with ``grid`` on top (an item of ``grid`` replaces TINY's item of that field)."""
    given = {item.split("=")[0] for item in grid}
    base = tuple(item for item in TINY if item.split("=")[0] not in given)
    return sweep.SweepConfig("rl", base + grid, seeds=seeds, name=name, runs_dir=runs_dir)


# ------------------------------------------------------------------------------------------ grid


def test_grid_items_parse_and_bad_items_are_refused():
    assert sweep.parse_grid(("plasticity.method=none,redo", "dqn.mlp_hidden=[16,16],[32]")) == {
        "plasticity.method": ["none", "redo"],
        "dqn.mlp_hidden": ["[16,16]", "[32]"],
    }
    for bad, words in [
        (("plasticity.method",), "field=value1"),
        (("a=1,",), "empty value"),
        (("a=1", "a=2"), "given twice"),
        (("a=1,1",), "repeated"),
    ]:
        with pytest.raises(ValueError, match=words):
            sweep.parse_grid(bad)


def test_grid_values_take_the_field_type_and_errors_name_field_and_choices():
    with pytest.raises(ValueError, match=r"has no field 'nope'.*fields are"):
        sweep.expand(sweep.SweepConfig("rl", ("loop.nope=1",)))
    with pytest.raises(ValueError, match=r"agent=ppo.*allowed values are \('dqn'"):
        sweep.expand(sweep.SweepConfig("rl", ("agent=ppo",)))
    with pytest.raises(ValueError, match="is a section"):
        sweep.expand(sweep.SweepConfig("rl", ("loop=1",)))
    with pytest.raises(ValueError, match="--seeds"):
        sweep.expand(sweep.SweepConfig("rl", ("seeds=1,2",)))
    with pytest.raises(ValueError, match="replay_ratio"):  # the learner's own check runs on every cell
        sweep.expand(sweep.SweepConfig("rl", ("loop.replay_ratio=-1",)))
    with pytest.raises(ValueError, match=r"^--grid loop.replay_ratio=abc: could not convert string to float: 'abc'$"):
        sweep.expand(sweep.SweepConfig("dqn-replay-ratio", ("loop.replay_ratio=abc",)))  # a tuple field, said once
    with pytest.raises(ValueError, match="allowed values are"):
        sweep.SweepConfig("ppo-sweep")
    with pytest.raises(ValueError, match="plastix run dormant-pruning"):
        sweep.SweepConfig("dormant-pruning")
    grid = ("dqn.optimizer.learning_rate=1e-4,3e-4", "dqn.double_q=false", "seed=7")
    cells = sweep.expand(sweep.SweepConfig("rl", grid))
    assert [c.config.dqn.optimizer.learning_rate for c in cells] == [1e-4, 3e-4]
    assert all(c.config.dqn.double_q is False and c.config.seed == 7 for c in cells)
    assert [c.labels for c in cells] == [
        {"agent": "dqn", "method": "none", "dqn.optimizer.learning_rate": 1e-4},
        {"agent": "dqn", "method": "none", "dqn.optimizer.learning_rate": 3e-4},
    ]  # one-value fields are settings, not labels


def test_the_issue_grid_gives_the_experiments_own_cells_at_its_scale():
    config = sweep.SweepConfig(
        "dqn-replay-ratio", ("plasticity.method=none,redo,reset", "loop.replay_ratio=0.25,1,2"), seeds=5
    )
    cells = sweep.expand(config)
    reference = dormant.replay_ratio_cells(
        dormant.DormantExperimentConfig(seeds=5, methods=("none", "redo", "reset"), replay_ratios=(0.25, 1.0, 2.0))
    )
    assert len(cells) == 9
    by_labels = {json.dumps(c.labels, sort_keys=True): c.config for c in cells}
    for labels, config in reference:
        assert by_labels[json.dumps(labels, sort_keys=True)] == config  # ReDo period / Reset at the small scale
    assert {c.config.seeds for c in cells} == {5}
    by_field = sweep.expand(sweep.SweepConfig("dqn-replay-ratio", ("methods=none,redo", "replay_ratios=1")))
    assert [c.id for c in by_field] == ["rr-1.0_method-none", "rr-1.0_method-redo"]  # no second label
    marl = sweep.expand(sweep.SweepConfig("matrix-sequential", ("agent=qmix,vdn", "plasticity.method=none")))
    assert sorted(c.labels["mixer"] for c in marl) == ["qmix", "vdn"]
    assert {c.config.plasticity.method for c in marl} == {"none"}


def test_cell_ids_are_one_safe_directory_name():
    assert sweep.sweep_cell_id({"env": "atari/pong", "lr": 0.001}) == "env-atari-pong_lr-0.001"
    assert "/" not in sweep.sweep_cell_id({"x": "../../etc"})


# ------------------------------------------------------------------------------------------ local backend


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """A 2-cell sweep run in two calls: the first stops after one chunk of the first cell."""
    runs = str(tmp_path_factory.mktemp("sweeps"))
    config = tiny_sweep(runs, "plasticity.method=none,redo", "plasticity.redo.period=100")
    cells = sweep.prepare(config)
    assert sweep.run_one_cell(config.root, cells[0], sweep.SweepOptions(), stop_after_chunks=1) == "interrupted"
    before = sweep.write_status(config.root, cells)
    partial_report = open(sweep_report(config.root)).read()
    table = sweep.run_sweep(config, sweep.SweepOptions(workers=2))  # both cells at once
    return config, cells, before, partial_report, table


def sweep_report(root):
    from plastix.report.sweep import write_sweep_report

    return [f for f in write_sweep_report(root) if f.endswith("report.md")][0]


def test_sweep_status_resume_and_report(local_sweep):
    config, cells, before, partial_report, table = local_sweep
    assert list(before.status) == ["interrupted", "pending"]
    assert "0 of 2 cells done" in partial_report and "method-redo: pending" in partial_report
    assert list(table.status) == ["done", "done"]
    attempts = [json.loads(x) for x in open(os.path.join(config.root, "cells", cells[0].id, "ATTEMPTS"))]
    assert [a["resumed_from_chunk"] for a in attempts] == [None, 1]  # resumed, not restarted
    for cell in cells:  # each cell equals the same learner run on its own, uninterrupted
        alone = run_cell(cell.config, os.path.join(config.runs_dir, "alone-" + cell.id))
        pd.testing.assert_frame_equal(RunDir(sweep.cell_path(config.root, cell)).metrics(), alone)
    report = open(os.path.join(config.root, "report.md")).read()
    assert "2 of 2 cells done" in report and "agent=dqn method=redo |" in report and "rank" in report
    for figure in ("performance_profile.png", "eval_return.png", "neuron_ratios.png"):
        assert os.path.getsize(os.path.join(config.root, figure)) > 0
    status_md = open(os.path.join(config.root, "status.md")).read()
    assert "2 done" in status_md


def test_rerunning_a_finished_sweep_runs_nothing_and_another_grid_is_refused(local_sweep, monkeypatch):
    config, *_ = local_sweep
    monkeypatch.setattr(sweep, "run_one_cell", lambda *a, **k: pytest.fail("a done cell ran again"))
    assert list(sweep.run_sweep(config).status) == ["done", "done"]
    other = dataclasses.replace(config, grid=config.grid + ("dqn.double_q=false",))
    with pytest.raises(ValueError, match="different config"):
        sweep.run_sweep(other)


def test_a_failing_cell_is_marked_failed_and_the_others_still_run(tmp_path):
    """A cell that really diverges (learning rate 1e30: NaN loss) fails alone, whether the cells
    run in worker processes (a CPU) or threads; the other cell finishes; a re-run retries it."""
    config = tiny_sweep(str(tmp_path), "dqn.optimizer.learning_rate=1e30,0.001", name="f")
    table = sweep.run_sweep(config, sweep.SweepOptions(workers=2))  # the failure does not stop the other
    assert list(table.status) == ["failed", "done"]
    assert "NonFiniteError: training diverged: loss is nan" in table.detail[0]
    assert not os.path.exists(os.path.join(config.root, "cells", table.cell[0], "RUNNING"))
    report = open(sweep_report(config.root)).read()
    assert "1 of 2 cells done" in report and "failed NonFiniteError" in report
    assert list(sweep.run_sweep(config).status) == ["failed", "done"]  # retried, and diverged again
    attempts = open(os.path.join(config.root, "cells", table.cell[0], "ATTEMPTS")).read().splitlines()
    assert len(attempts) == 2 and not os.path.exists(os.path.join(config.root, "cells", table.cell[1], "FAILED"))


def test_cli_sweep_and_report(tmp_path, capsys):
    runs = str(tmp_path)
    args = ["sweep", "rl", "--grid", *TINY, "plasticity.method=none", "--seeds", "2", "--runs-dir", runs]
    assert cli.main(args + ["--name", "c"]) == 0
    assert "every cell is done" in capsys.readouterr().out
    assert cli.main(["report", os.path.join(runs, "c")]) == 0
    assert "report.md" in capsys.readouterr().out
    assert cli.main(["sweep", "rl", "--grid", "loop.nope=1", "--runs-dir", runs]) == 2
    assert "has no field 'nope'" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(runs, "sweep-rl"))  # a refused sweep writes nothing


# ------------------------------------------------------------------------------------------ devices


def test_seeds_sharded_over_four_cpu_devices_give_the_unsharded_metrics(tmp_path):
    """One program over 4 forced host devices vs 1 device, same cell, in a fresh process."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import jax
        from test_sweep import TINY, tiny_sweep
        from plastix.experiments import sweep
        from plastix.experiments.rl import run_cell, seed_sharding
        assert len(jax.local_devices()) == 4
        assert seed_sharding(4, 0).mesh.size == 4 and seed_sharding(6, 0).mesh.size == 3
        assert seed_sharding(4, 1) is None and seed_sharding(5, 0) is None
        cell = sweep.expand(tiny_sweep({str(tmp_path)!r}, "plasticity.method=redo", seeds=4))[0].config
        run_cell(cell, {str(tmp_path / "sharded")!r}, devices=0).to_parquet({str(tmp_path / "a.parquet")!r})
        run_cell(cell, {str(tmp_path / "single")!r}, devices=1).to_parquet({str(tmp_path / "b.parquet")!r})
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    sharded, single = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    assert len(single) == 4 * 3 * 2 and {"loss", "eval_return", "q/dormant_fraction"} <= set(single.columns)
    # values that reduce over a batch (the losses, Q means, gradient norms) are reduced in another
    # order once partitioned (XLA:CPU at LLVM -O1 vectorizes a reduction over 1 seed per device
    # differently from one over 4): they agree to float32 rounding; returns and every neuron
    # fraction are bit-identical
    assert_same_metrics(sharded, single, rounding=("loss", "q/loss", "q_mean", "q/layer/hidden_0/grad_norm"))


def assert_same_metrics(a: pd.DataFrame, b: pd.DataFrame, rounding: tuple[str, ...] = ()) -> None:
    """Same rows, columns and values; the training's own columns (loss, returns, every neuron
    fraction) bit-identical. Effective rank comes from an SVD whose LAPACK result depends on the
    thread count (a Ray worker runs with one thread): it and the ``rounding`` columns agree to
    float32 rounding."""
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for column in a.columns:
        x, y = a[column].to_numpy(np.float64), b[column].to_numpy(np.float64)
        if column.endswith("effective_rank"):
            np.testing.assert_allclose(x, y, rtol=1e-3, err_msg=column)
        elif column in rounding:
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7, err_msg=column)
        else:
            np.testing.assert_array_equal(x, y, err_msg=column)


# ------------------------------------------------------------------------------------------ live logging


def _tensorboard_scalars(directory: str) -> dict[str, list[tuple[int, float]]]:
    """Read a tensorboardX event file (TFRecord of Event protos) without TensorFlow."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list] = {}
    for name in os.listdir(directory):
        data = open(os.path.join(directory, name), "rb").read()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_live_logging_writes_every_chunk_metric_per_cell_and_seed(tmp_path):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("wandb")
    os.environ.setdefault("WANDB_SILENT", "true")
    config = tiny_sweep(str(tmp_path), "plasticity.method=none", name="logged")
    options = sweep.SweepOptions(log=("tensorboard", "wandb"))
    assert list(sweep.run_sweep(config, options).status) == ["done"]
    cell = sweep.load_cells(config.root)[0]
    metrics = RunDir(sweep.cell_path(config.root, cell)).metrics()
    for seed in (0, 1):
        scalars = _tensorboard_scalars(os.path.join(config.root, "tensorboard", cell.id, f"seed-{seed}"))
        mine = metrics[metrics.seed == seed]
        np.testing.assert_allclose([v for _, v in scalars["loss"]], mine["loss"], rtol=1e-6)
        assert [s for s, _ in scalars["loss"]] == list(mine.env_steps)
        assert len(scalars["eval_return"]) == mine.eval_return.notna().sum()
    runs = [d for d in os.listdir(os.path.join(config.root, "wandb", "wandb")) if d.startswith("offline-run")]
    assert len(runs) == 2  # one offline W&B run per seed


def test_unknown_log_target_is_refused():
    with pytest.raises(ValueError, match=r"allowed values are \('tensorboard', 'wandb'\)"):
        sweep.SweepOptions(log=("mlflow",))
    with pytest.raises(ValueError, match="SweepOptions.workers"):
        sweep.SweepOptions(workers=0)


# ------------------------------------------------------------------------------------------ Ray


@pytest.mark.slow  # 40-100 s on a 2-core CPU (Ray start, worker processes, a kill): `make test-all`
def test_ray_sweep_survives_a_killed_worker_and_equals_the_local_sweep(tmp_path):
    """A local Ray cluster (2 CPUs); the worker of the sweep's one cell (ReDo: the other methods run
    the same way, and a sweep with several cells is the local backend's test) is SIGKILLed after
    its first checkpoint."""
    ray = pytest.importorskip("ray")
    import signal
    import threading
    import time

    longer = ("plasticity.method=redo", "loop.env_steps=800")  # 8 chunks: time to kill the cell mid-run
    local = tiny_sweep(str(tmp_path), *longer, name="local")
    sweep.run_sweep(local)
    distributed = tiny_sweep(str(tmp_path), *longer, name="ray")
    cells = sweep.prepare(distributed)
    victim = sweep.cell_path(distributed.root, cells[0])
    killed = {}

    def kill_after_first_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline and "pid" not in killed:
            running = os.path.join(victim, "RUNNING")
            if os.path.isdir(os.path.join(victim, "checkpoint", "1")) and os.path.exists(running):
                pid = json.load(open(running))["pid"]
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
            time.sleep(0.02)

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
        watcher.start()
        table = sweep.run_sweep(distributed, sweep.SweepOptions(backend="ray", retries=2))
        watcher.join(timeout=1)
    finally:
        ray.shutdown()
    assert "pid" in killed, "the cell finished before its worker could be killed"
    assert list(table.status) == ["done"]
    attempts = [json.loads(x) for x in open(os.path.join(victim, "ATTEMPTS"))]
    assert len(attempts) == 2 and attempts[0]["pid"] == killed["pid"]
    assert attempts[1]["devices"] == "1 cpu"  # what the cell ran on is recorded
    assert attempts[1]["resumed_from_chunk"] >= 1  # resumed from its checkpoint, not from scratch
    for cell in cells:
        assert_same_metrics(
            RunDir(sweep.cell_path(distributed.root, cell)).metrics(),
            RunDir(sweep.cell_path(local.root, cell)).metrics(),
        )


def test_ray_backend_without_ray_names_the_extra(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from plastix.experiments.sweep_ray import run_on_ray

    with pytest.raises(ValueError, match=r'pip install -e "\.\[ray\]"'):
        run_on_ray(str(tmp_path), [], sweep.SweepOptions(backend="ray"))


def test_rl_config_fields_reachable_from_the_grid_exist():
    for key in ("plasticity.method", "loop.replay_ratio", "agent"):
        sweep._field_hint(RLConfig, key.split("."), key)
