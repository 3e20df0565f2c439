"""The one resumable runner and ``plastix run rl``: the full learner config from the command line."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from plastix import cli
from plastix.experiments import dormant
from plastix.experiments.rundir import RunDir, config_dict, config_from_dict
from plastix.experiments.runner import Stage, run_stages, stacked_rows

TINY_RL = [
    "--env", "CartPole-v1",
    "--seeds", "2",
    "--loop.env-steps", "200",
    "--loop.warmup-steps", "100",
    "--loop.buffer-size", "1000",
    "--loop.batch-size", "16",
    "--loop.period", "50",
    "--loop.eval-every", "2",
    "--loop.eval-envs", "2",
    "--loop.eval-steps", "20",
    "--loop.scoring-batch", "32",
    "--dqn.mlp-hidden", "16",
    "--dqn.target-update-period", "20",
]  # fmt: skip


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory):
    runs = str(tmp_path_factory.mktemp("runs"))
    args = ["run", "rl", *TINY_RL, "--plasticity.method", "redo", "--plasticity.redo.period", "100"]
    args += ["--diagnostics.kappa", "0.2", "--diagnostics.stagnation-source", "update", "--runs-dir", runs]
    assert cli.main(args) == 0
    return runs, args


def test_cli_reaches_the_whole_learner_config(rl_run):
    runs, _ = rl_run
    with open(os.path.join(runs, "rl", "config.json")) as f:
        saved = json.load(f)
    cell = saved["cell"]
    assert saved["experiment"] == "rl"
    assert cell["plasticity"]["method"] == "redo" and cell["plasticity"]["redo"]["period"] == 100
    assert cell["diagnostics"]["kappa"] == 0.2 and cell["diagnostics"]["stagnation_source"] == "update"
    assert cell["dqn"]["mlp_hidden"] == [16]
    df = RunDir(os.path.join(runs, "rl")).metrics()
    assert len(df) == 2 * 4 and set(df.seed) == {0, 1}
    assert df["q/stagnant_fraction"].between(0, 1).all()
    assert (df["updates"] == df["env_steps"]).all()  # replay ratio 1


def test_rl_run_ends_with_report_and_report_command_redraws_it(rl_run, capsys):
    runs, args = rl_run
    path = os.path.join(runs, "rl")
    for name in ("DONE", "metrics.parquet", "report.md", "eval_return.png", "cells.json"):
        assert os.path.exists(os.path.join(path, name)), name
    os.remove(os.path.join(path, "report.md"))
    assert cli.main(["report", path]) == 0
    assert os.path.exists(os.path.join(path, "report.md"))
    assert cli.main(args) == 0  # finished: a no-op that shows the results
    assert "is finished" in capsys.readouterr().out


def test_python_run_ends_exactly_like_the_cli(rl_run, tmp_path):
    runs, _ = rl_run
    with open(os.path.join(runs, "rl", "config.json")) as f:
        fields = json.load(f)
    fields.pop("experiment")
    config = config_from_dict(dormant.SingleRunConfig, {**fields, "runs_dir": str(tmp_path)})
    df = dormant.run("rl", config)
    cli_files = sorted(
        f for f in os.listdir(os.path.join(runs, "rl")) if not os.path.isdir(os.path.join(runs, "rl", f))
    )
    py_files = sorted(f for f in os.listdir(tmp_path / "rl") if not os.path.isdir(tmp_path / "rl" / f))
    assert py_files == cli_files
    pd.testing.assert_frame_equal(df, RunDir(os.path.join(runs, "rl")).metrics())  # same seeds: same numbers


def test_summary_table_prints_a_dash_where_a_setting_has_no_value():
    """A column a setting does not log (VDN has no mixer neurons: NaN estimates) prints as "–",
    not "nan nan–nan"; logged estimates print as value and CI."""
    from rich.console import Console

    from plastix.report import Estimate

    console = Console(width=120, record=True)
    rows = [{"setting": "vdn none", "d": Estimate(float("nan"), float("nan"), float("nan"), 0)},
            {"setting": "qmix none", "d": Estimate(0.25, 0.2, 0.3, 10)}]  # fmt: skip
    cli.print_summary("t", [("setting", "setting", 1), ("mixer dormant", "d", 100)], rows, console)
    text = console.export_text()
    assert "nan" not in text and "–" in text.split("vdn none")[1].splitlines()[0]
    assert "25.0" in text and "20.0–30.0" in text


def test_config_round_trips_through_json():
    config = dormant.SingleRunConfig()
    assert config_from_dict(dormant.SingleRunConfig, config_dict(config)) == config
    with pytest.raises(ValueError, match="unknown fields"):
        config_from_dict(dormant.SingleRunConfig, {"bogus": 1})


def _counting_stages(chunks=(3, 2)):
    """Two stages of a toy run: the carry counts chunks; stage 2 starts from 10 × stage 1's count."""

    def chunk(stage):
        def run_chunk(carry, done):
            carry = carry + 1
            rows = stacked_rows({"value": np.array([[carry]], np.float32)}, "chunk", done, {"seed": np.arange(1)})
            return carry, rows.assign(stage=stage)

        return run_chunk

    return [
        Stage("a", chunks[0], lambda _: np.zeros((), np.float32), chunk("a")),
        Stage("b", chunks[1], lambda c: np.asarray(10 * c, np.float32), chunk("b")),
    ]


def test_runner_resumes_across_stages_to_the_same_rows(tmp_path):
    straight = run_stages(RunDir(str(tmp_path / "s")), _counting_stages(), "toy")
    assert straight.finished and list(straight.rows.value) == [1, 2, 3, 31, 32]
    for kill_after in (1, 3, 4):
        rundir = RunDir(str(tmp_path / f"k{kill_after}"))
        partial = run_stages(rundir, _counting_stages(), "toy", stop_after_chunks=kill_after)
        assert not partial.finished and len(partial.rows) == kill_after
        resumed = run_stages(rundir, _counting_stages(), "toy")
        pd.testing.assert_frame_equal(resumed.rows, straight.rows)


def test_runner_stops_on_non_finite_chunks_without_saving_them(tmp_path):
    from plastix.experiments.rundir import NonFiniteError

    stages = _counting_stages()

    def diverge(carry, done):
        rows = stacked_rows({"loss": np.array([[np.nan]])}, "chunk", done, {"seed": np.arange(1)})
        return carry, rows

    stages[1] = Stage("b", 2, stages[1].start, diverge)
    rundir = RunDir(str(tmp_path / "run"))
    with pytest.raises(NonFiniteError, match="stage b"):
        run_stages(rundir, stages, "toy")
    assert rundir.checkpoint_meta() == {"stage": 1, "chunks_done": 0}  # the good state before the bad chunk


def test_cli_turns_on_the_compilation_cache_unless_told_not_to(monkeypatch, tmp_path):
    import jax

    from plastix.cli import enable_compilation_cache

    saved = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    try:
        assert enable_compilation_cache() == saved[0]  # one already configured (the test set-up's) is kept
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv("PLASTIX_COMPILATION_CACHE", "")
        assert enable_compilation_cache() is None and not jax.config.jax_compilation_cache_dir
        monkeypatch.setenv("PLASTIX_COMPILATION_CACHE", str(tmp_path / "xla"))
        assert enable_compilation_cache() == str(tmp_path / "xla") == jax.config.jax_compilation_cache_dir
        jax.config.update("jax_compilation_cache_dir", None)
        assert enable_compilation_cache(str(tmp_path / "given")) == str(tmp_path / "given")  # a path given wins
    finally:
        jax.config.update("jax_compilation_cache_dir", saved[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])


def test_a_training_process_collects_garbage_less_often():
    import gc

    import jax

    from plastix.cli import prepare_process
    from plastix.jit import TRACING_GC_THRESHOLDS

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        assert prepare_process() == jax.config.jax_compilation_cache_dir  # the test set-up's, kept
        assert gc.get_threshold() == TRACING_GC_THRESHOLDS
    finally:
        gc.set_threshold(*saved)


def test_building_a_training_program_on_the_cpu_leaves_blas_one_thread_unless_the_user_chose(monkeypatch):
    import threadpoolctl

    from plastix.jit import BLAS_THREAD_VARIABLES, jit_program, one_blas_thread

    def blas_threads():
        return {
            info["filepath"]: info["num_threads"]
            for info in threadpoolctl.threadpool_info()
            if info["user_api"] == "blas"
        }

    try:
        for name in BLAS_THREAD_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        threadpoolctl.threadpool_limits(limits=2, user_api="blas")
        one_blas_thread.cache_clear()
        jit_program(lambda x: x + 1)  # the first program of a process sets it ...
        threads = blas_threads()
        assert any("scipy" in path for path in threads), threads  # jaxlib's LAPACK library is loaded and set
        assert set(threads.values()) == {1}, threads
        threadpoolctl.threadpool_limits(limits=2, user_api="blas")
        jit_program(lambda x: x + 2)  # ... once: a user's later setting stands
        assert set(blas_threads().values()) == {2}
        one_blas_thread.cache_clear()
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # the user chose: left alone
        assert one_blas_thread() is False and set(blas_threads().values()) == {2}
    finally:
        one_blas_thread.cache_clear()  # the next program of this test process sets it again


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_xla_cpu_pool_takes_the_threads_asked_for_and_leaves_every_thread_all_cores():
    import subprocess
    import sys
    import textwrap

    from plastix.jit import xla_cpu_threads

    script = textwrap.dedent(
        """
        import os
        from plastix.jit import XLA_POOL_THREAD_PREFIX, _thread_names, xla_cpu_threads
        cores = os.sched_getaffinity(0)
        size = xla_cpu_threads(1)
        import jax.numpy as jnp
        jnp.ones(3).block_until_ready()
        pool = sum(name.startswith(XLA_POOL_THREAD_PREFIX) for name in _thread_names())
        free = all(os.sched_getaffinity(int(t)) == cores for t in os.listdir("/proc/self/task"))
        print(size, pool, free)
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["1", "1", "True"], out.stderr
    with pytest.warns(UserWarning, match="already started"):  # this process's JAX runs: no change
        assert xla_cpu_threads(1) is None
    with pytest.raises(ValueError, match="threads must be >= 0"):
        xla_cpu_threads(-1)


def test_rl_runs_choose_one_xla_thread_for_dqn_with_an_mlp_before_jax_starts(monkeypatch):
    from plastix.agents import DQNConfig
    from plastix.experiments.rl import RLConfig

    assert RLConfig(env="CartPole-v1", agent="dqn").cpu_threads() == 1  # auto network: an MLP
    assert RLConfig(env="Breakout-MinAtar", agent="dqn").cpu_threads() == 0  # a conv net: XLA's default
    assert RLConfig(env="Breakout-MinAtar", agent="dqn", dqn=DQNConfig(network="mlp")).cpu_threads() == 1
    assert RLConfig(env="Pendulum-v1", agent="sac").cpu_threads() == 1
    assert RLConfig(env="matrix/qplex_matrix_game_3", agent="qplex").cpu_threads() == 0  # not measured
    assert RLConfig(env="CartPole-v1", agent="dqn", xla_cpu_threads=0).cpu_threads() == 0
    with pytest.raises(ValueError, match="RLConfig.xla_cpu_threads"):
        RLConfig(xla_cpu_threads=-2)
    calls, pool = [], [0]
    monkeypatch.setattr("plastix.jit.xla_cpu_pool_threads", lambda: pool[0])
    monkeypatch.setattr("plastix.jit.xla_cpu_threads", lambda n: calls.append(("threads", n)))
    monkeypatch.setattr(cli, "run", lambda experiment, config: calls.append(("run", experiment)) or 0)
    assert cli.main(["run", "rl", "--env", "CartPole-v1", "--agent", "dqn"]) == 0  # JAX not started yet
    assert calls == [("threads", 1), ("run", "rl")]
    calls.clear()
    pool[0] = 2  # JAX already runs (a CLI called from Python): the automatic choice stays silent ...
    assert cli.main(["run", "rl", "--env", "CartPole-v1", "--agent", "dqn"]) == 0
    assert calls == [("run", "rl")]
    calls.clear()  # ... a choice made on the command line is tried (and warns)
    assert cli.main(["run", "rl", "--env", "CartPole-v1", "--agent", "dqn", "--xla-cpu-threads", "1"]) == 0
    assert calls == [("threads", 1), ("run", "rl")]


def test_run_concurrently_keeps_order_and_raises_the_first_error_after_the_running_jobs_end():
    import threading
    import time

    from plastix.experiments.runner import run_concurrently

    assert run_concurrently(lambda x: x * x, [3, 1, 2], workers=2) == [9, 1, 4]
    assert run_concurrently(lambda x: x, [], workers=2) == []
    with pytest.raises(ValueError, match="workers must be >= 1"):
        run_concurrently(lambda x: x, [1], workers=0)

    started, finished = [], []
    lock = threading.Lock()

    def work(job):
        with lock:
            started.append(job)
        if job == "bad":
            raise RuntimeError("job bad failed")
        time.sleep(0.3)  # still running when "bad" fails
        with lock:
            finished.append(job)
        return job

    with pytest.raises(RuntimeError, match="job bad failed"):
        run_concurrently(work, ["slow", "bad", "never"], workers=2)
    assert started == ["slow", "bad"] and finished == ["slow"]  # no new job after the error; the running one ended


def test_ctrl_c_stops_concurrent_jobs_after_their_chunk_and_starts_no_new_one():
    """Ctrl-C in the calling thread sets ``stop``; each running job stops at its next chunk
    boundary (raising ``Interrupted``), no pending job starts, and ``KeyboardInterrupt`` follows."""
    import os
    import signal
    import threading
    import time

    from plastix.experiments.runner import Interrupted, run_concurrently

    stop, chunks, started = threading.Event(), [], []

    def work(job):
        started.append(job)
        for chunk in range(100):
            if stop.is_set():
                raise Interrupted(job)
            time.sleep(0.05)
            chunks.append((job, chunk))
        return job

    # A real SIGINT, as a terminal's Ctrl-C sends, handled as Python does by default: a test run
    # started in the background by a non-interactive shell (`make test &`) inherits SIGINT ignored,
    # and Python then never raises KeyboardInterrupt for it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            run_concurrently(work, ["a", "b", "c"], workers=2, stop=stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stop.is_set() and sorted(started) == ["a", "b"]  # "c" never started
    assert 2 <= len(chunks) < 60  # both ran a few chunks, then stopped


class _TimedRunDir(RunDir):
    """A run directory whose saves take ``save_seconds`` on a fake clock that chunks advance by 1 s."""

    def __init__(self, path, clock, save_seconds):
        super().__init__(path)
        self.clock, self.save_seconds, self.saved_at = clock, save_seconds, []

    def save_checkpoint(self, state, rows, meta):
        super().save_checkpoint(state, rows, meta)
        self.clock[0] += self.save_seconds
        self.saved_at.append((meta["stage"], meta["chunks_done"]))


def _one_second_chunks(clock, chunks=30):
    def run_chunk(carry, done):
        clock[0] += 1.0
        carry = carry + 1
        return carry, stacked_rows({"value": np.array([[carry]], np.float32)}, "chunk", done, {"seed": np.arange(1)})

    return [Stage("a", chunks, lambda _: np.zeros((), np.float32), run_chunk)]


@pytest.mark.parametrize(
    "save_seconds, share, expected",
    [
        (0.5, 0.1, list(range(1, 30))),
        (2.0, 0.1, [1, 19]),
        (2.0, 0.25, [1, 7, 13, 19, 25]),
        (2.0, 1.0, list(range(1, 30))),
    ],
)
def test_expensive_checkpoints_take_at_most_their_share_of_the_run(tmp_path, save_seconds, share, expected):
    """A save of s seconds (at least CHEAP_SAVE_SECONDS) delays the next by s·(1 − share)/share:
    with 1-s chunks and 2-s saves, a share of 0.1 saves after chunk 1 (done at 3 s), then once
    18 s have passed (chunk 19, done at 21 s); a share of 0.25 every 6 chunks (2 s of 8); cheap
    saves happen every chunk, as does every save at share 1. The last chunk is never saved (the
    run finishes)."""
    clock = [0.0]
    rundir = _TimedRunDir(str(tmp_path / "run"), clock, save_seconds)
    result = run_stages(rundir, _one_second_chunks(clock), "toy", checkpoint_share=share, clock=lambda: clock[0])
    assert result.finished and list(result.rows.value) == list(range(1, 31))
    assert [done for _, done in rundir.saved_at] == expected


def test_a_run_stopped_between_chunks_saves_its_last_chunk_even_when_a_save_was_due_later(tmp_path):
    """Stopping on request (Interrupted from the progress callback) keeps every chunk that ran:
    the deferred checkpoint is written before the stop, and the resumed run continues from there."""
    from plastix.experiments.runner import Interrupted

    clock = [0.0]
    rundir = _TimedRunDir(str(tmp_path / "run"), clock, 2.0)

    def progress(name, done, total):
        if done == 5:
            raise Interrupted("toy")

    with pytest.raises(Interrupted):
        run_stages(rundir, _one_second_chunks(clock), "toy", progress=progress, clock=lambda: clock[0])
    assert [done for _, done in rundir.saved_at] == [1, 5]  # chunk 1 (periodic), chunk 5 (on the stop)
    resumed = run_stages(rundir, _one_second_chunks(clock), "toy", clock=lambda: clock[0])
    assert list(resumed.rows.value) == list(range(1, 31))
    assert rundir.saved_at[2] == (0, 6)  # resumed from chunk 5, not from scratch


def test_checkpoint_share_is_checked_and_does_not_block_a_resume(tmp_path):
    """A resumed ``plastix run rl`` may change ``--checkpoint-share`` (nested in its ``cell``), not
    what the run computes."""
    import dataclasses

    from plastix.experiments.rl import RLConfig

    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="RLConfig.checkpoint_share must be in \\(0, 1\\]"):
            RLConfig(checkpoint_share=bad)
    config = dormant.SingleRunConfig(runs_dir=str(tmp_path))
    rundir = RunDir(str(tmp_path / "rl"))
    rundir.prepare(config, "rl")
    (tmp_path / "rl" / "DONE").write_text("")  # the directory now holds results
    rundir.prepare(dataclasses.replace(config, cell=dataclasses.replace(config.cell, checkpoint_share=1.0)), "rl")
    with pytest.raises(ValueError, match="different config \\(fields \\['cell'\\]\\)"):
        rundir.prepare(dataclasses.replace(config, cell=dataclasses.replace(config.cell, seed=7)), "rl")
