"""Worker processes pinned to shares of the cores (:mod:`plastix.experiments.workers`).

The jobs are this module's functions, so the worker processes (``spawn``) import this module.
"""

import gc
import os
import signal
import threading
import time

import pytest

from plastix.experiments import workers
from plastix.experiments.runner import Interrupted
from plastix.jit import TRACING_GC_THRESHOLDS


class _Unpicklable(Exception):
    def __init__(self, lock):
        super().__init__("holds a lock")
        self.lock = lock


def _job(job, stop, progress):
    """``(kind, value)``: what a worker does, per kind."""
    import jax

    kind, value = job
    progress(kind, value)
    if kind == "square":
        return value * value
    if kind == "where":
        return sorted(os.sched_getaffinity(0)), jax.config.jax_default_matmul_precision, os.getpid(), gc.get_threshold()
    if kind == "fail":
        raise ValueError(f"job {value} failed")
    if kind == "unpicklable":
        raise _Unpicklable(threading.Lock())
    if kind == "die":
        os._exit(value)
    if kind == "pid":  # says where it runs, then a chunk too long to wait for
        progress(kind, os.getpid())
        time.sleep(120)
        return value
    if kind == "chunks":  # a long job that ends at a chunk boundary once stopped
        for _ in range(1200):
            if stop.is_set():
                raise Interrupted(value)
            time.sleep(0.05)
        return value
    raise AssertionError(kind)


def test_core_shares_split_the_cores_contiguously(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 5}, raising=False)
    assert workers.core_shares(2) == [(0, 1, 2), (3, 5)]
    assert workers.core_shares(5) == [(0,), (1,), (2,), (3,), (5,)]
    assert workers.core_shares(6) == [()] * 6  # fewer cores than workers: no pinning
    with pytest.raises(ValueError, match="workers must be >= 1"):
        workers.core_shares(0)


def test_worker_processes_run_jobs_in_order_pinned_with_this_process_settings():
    """Results in job order, every ``progress`` call relayed here, each worker in its own process
    pinned to a share of the cores, with this process's JAX settings and the tracing GC thresholds."""
    import jax

    calls, lock = [], threading.Lock()

    def progress(*args):
        with lock:
            calls.append(args)

    saved = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", "highest")
    try:
        jobs = [("square", 3), ("where", 0), ("square", 2), ("where", 1)]
        results = workers.run_in_processes(_job, jobs, 2, progress=progress)
    finally:
        jax.config.update("jax_default_matmul_precision", saved)
    assert results[0] == 9 and results[2] == 4
    assert sorted(calls) == sorted(jobs)
    shares = [list(share) or sorted(os.sched_getaffinity(0)) for share in workers.core_shares(2)]
    for cores, precision, pid, thresholds in (results[1], results[3]):
        assert cores in shares and precision == "highest" and pid != os.getpid()
        assert thresholds == TRACING_GC_THRESHOLDS
    # one worker, or one job: in this process
    assert workers.run_in_processes(_job, [("where", 0)], 2)[0][2] == os.getpid()
    assert [r[2] for r in workers.run_in_processes(_job, [("where", 0), ("where", 1)], 1)] == [os.getpid()] * 2


@pytest.mark.parametrize(
    "failing, error, text",
    [
        (("fail", 7), ValueError, "job 7 failed"),  # raised here as it was there, with the worker's traceback
        (("unpicklable", 0), RuntimeError, "_Unpicklable: holds a lock"),
        (("die", 3), RuntimeError, r"ended \(exit code 3\)"),
    ],
)
def test_a_failing_job_raises_here(failing, error, text):
    with pytest.raises(error, match=text) as raised:
        workers.run_in_processes(_job, [("square", 1), failing], 2)
    told = "".join(getattr(raised.value, "__notes__", [])) + str(raised.value)
    assert ("in worker process" in told) == (failing[0] != "die")  # the worker's traceback, where it had one


def test_ctrl_c_stops_worker_processes_after_their_chunk_and_starts_no_new_job():
    started = []

    def progress(kind, value):
        started.append(value)
        if len(started) == 2:  # both workers are in a job: a terminal's Ctrl-C
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # see test_runner_cli
    try:
        begun = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            workers.run_in_processes(_job, [("chunks", "a"), ("chunks", "b"), ("chunks", "c")], 2, progress=progress)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sorted(started) == ["a", "b"] and time.monotonic() - begun < 30  # "c" never started


def test_every_experiment_job_can_go_to_a_worker_process():
    """A study's job (:func:`plastix.experiments.dormant._run_job` with the experiment's cells) is
    sent pickled to worker processes on a CPU: every experiment's cells survive the round trip."""
    import functools
    import pickle

    from plastix.experiments import dormant

    for experiment, (build, _) in dormant.EXPERIMENTS.items():
        if experiment == "rl":
            continue  # one cell: runs in this process
        config = dormant.DormantExperimentConfig(methods=("all",)) if experiment in dormant.MARL_DESCRIPTIONS else None
        cells = build(config or dormant.DormantExperimentConfig())
        work = functools.partial(dormant._run_job, experiment, "runs", cells)
        assert pickle.loads(pickle.dumps(work)).args[2] == cells, experiment
    assert workers.worker_processes(2, 3) and not workers.worker_processes(1, 3) and not workers.worker_processes(2, 1)


def test_a_script_without_a_main_guard_runs_its_study_once(tmp_path):
    """``spawn`` would run the calling script again in each worker; a script that starts worker
    processes at its top level (no ``if __name__ == "__main__":``) must still run once."""
    import subprocess
    import sys

    script = tmp_path / "study.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "import test_workers\n"
        "from plastix.experiments.workers import run_in_processes\n"
        "print('start', flush=True)\n"
        "print(run_in_processes(test_workers._job, [('square', 2), ('square', 3)], 2), flush=True)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["start", "[4, 9]"]
    with pytest.raises(ValueError, match="defined in __main__"):
        workers.run_in_processes(_main_job, [1, 2], 2)


def _main_job(job, stop, progress):
    return job


_main_job.__module__ = "__main__"  # as if defined in the calling script


def test_without_worker_processes_jobs_run_in_threads(monkeypatch):
    """Where processes cannot share a semaphore (some sandboxes), jobs run in threads, with a warning."""
    import multiprocessing

    class NoSemaphores:
        def Event(self):  # noqa: N802 - multiprocessing's name
            raise OSError("sem_open: function not implemented")

    monkeypatch.setattr(multiprocessing, "get_context", lambda method: NoSemaphores())
    with pytest.warns(UserWarning, match="worker processes unavailable"):
        results = workers.run_in_processes(_job, [("where", 0), ("square", 5)], 2)
    assert results[0][2] == os.getpid() and results[1] == 25


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux: PR_SET_PDEATHSIG and /proc")
def test_worker_processes_die_with_a_killed_parent(tmp_path):
    """``kill -9`` of the process that runs the jobs leaves no worker running on, not even to the
    end of its chunk (Linux)."""
    import subprocess
    import sys

    script = tmp_path / "killed.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "import test_workers\n"
        "from plastix.experiments.workers import run_in_processes\n"
        "def show(kind, value):\n"
        "    print(kind, value, flush=True)\n"
        "run_in_processes(test_workers._job, [('pid', 0), ('pid', 1)], 2, progress=show)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = []
    while len(pids) < 2:
        line = parent.stdout.readline()
        assert line, "the script ended before its workers started"
        if line.startswith("pid") and int(line.split()[1]) > 1:
            pids.append(int(line.split()[1]))
    parent.kill()
    parent.wait()

    def running(pid):
        try:
            return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"  # a zombie is gone
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(running(pid) for pid in pids)
