"""Programs at once on a CPU: one worker process per share of the cores.

XLA:CPU runs one program on every core it may use (its compiler splits code generation over
threads, its runtime runs independent operations on a thread pool), but a small RL program keeps
them only half busy: on a 2-core CPU the 10-seed KNIFE group of the stagnant-neuron study used
~1.5 cores, at ~20% more CPU time than the same program confined to one core. Two such programs
in threads of one process then share one thread pool and both oversubscribe the cores: the study
ran only ~10% faster with two programs at once than one after the other. Two *processes*, each
pinned to half of the cores (``os.sched_setaffinity``, before its JAX starts), share nothing and
waste nothing: on the same machine the study's programs ran ~20% faster that way
(``benchmarks/RESULTS.md``).

:func:`run_in_processes` keeps :func:`~plastix.experiments.runner.run_concurrently`'s contract
(jobs in order, the first error raised once the running jobs end, Ctrl-C stops every job after its
current chunk) with each worker thread handing its jobs to a worker process of its own:

- the processes are started with ``spawn`` (a fork of a process whose JAX runs threads is unsafe)
  and take this process's JAX settings (compilation cache, x64, platforms, ...) and environment
  (``XLA_FLAGS``);
- a job is ``work(job, stop, progress)``: ``work`` must be picklable (a module-level function or a
  ``functools.partial`` of one), ``stop.is_set()`` says that the job should end after its current
  chunk (Ctrl-C here, or this process is gone), and ``progress(*args)`` reaches the ``progress``
  given here, called in this process;
- results and exceptions come back pickled (an exception that cannot be pickled comes back as a
  ``RuntimeError`` with its text); each carries the worker's traceback as a note;
- a worker process that dies (killed, out of memory) fails its job with an error that says so;
  the runs it was writing resume from their last checkpoint;
- where processes cannot be started with a shared semaphore (some sandboxes), the jobs run in
  threads of this process instead, with a warning.

Accelerators are not split this way (each process would claim the device's memory): there the
callers run one program at a time, or threads.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import traceback
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from plastix.experiments.runner import run_concurrently

POLL_SECONDS = 0.2
"""How often a waiting worker thread checks for Ctrl-C and for a dead worker process."""


def core_shares(workers: int) -> list[tuple[int, ...]]:
    """The cores this process may use, as ``workers`` contiguous shares of near-equal size.

    A share is ``()`` (no pinning: the process may use every core) when there are fewer cores than
    workers or the platform cannot pin processes (``os.sched_setaffinity`` is Linux-only).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (programs run at once), got {workers}")
    if not hasattr(os, "sched_getaffinity"):
        return [()] * workers
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < workers:
        return [()] * workers
    size, extra = divmod(len(cores), workers)
    shares, start = [], 0
    for k in range(workers):
        end = start + size + (k < extra)
        shares.append(tuple(cores[start:end]))
        start = end
    return shares


def jax_settings() -> dict[str, Any]:
    """This process's JAX configuration (``jax.config.values``) that can be sent to a worker."""
    import jax

    settings = {}
    for name, value in jax.config.values.items():
        try:
            pickle.dumps(value)
        except Exception:  # noqa: BLE001 - a setting a worker cannot receive keeps its default there
            continue
        settings[name] = value
    return settings


class _WorkerStop:
    """``stop.is_set()`` in a worker: the parent asked (Ctrl-C) or the parent is gone (killed)."""

    def __init__(self, event, parent: int):
        self._event, self._parent = event, parent

    def is_set(self) -> bool:
        return self._event.is_set() or os.getppid() != self._parent


def _portable(error: BaseException) -> BaseException:
    """``error`` with the worker's traceback as a note, or a ``RuntimeError`` with its text when it
    does not survive pickling."""
    where = f"in worker process {os.getpid()}:\n{traceback.format_exc()}"
    try:
        error.add_note(where)
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any failure to pickle
        return RuntimeError(f"{type(error).__name__}: {error}\n{where}")


@contextlib.contextmanager
def _without_main():
    """Start a ``spawn`` process without this process's ``__main__``: ``spawn`` would run the
    calling script again in the worker (a script that starts a study at its top level, without an
    ``if __name__ == "__main__":`` guard, would start it again there). Jobs never live in
    ``__main__`` (:func:`run_in_processes` refuses them), so the worker has no use for it."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when the thread of the parent that started it ends
    (``PR_SET_PDEATHSIG``), so a killed ``plastix run`` leaves no worker writing its runs on; the
    parent's threads end only after their worker's last job. Elsewhere the worker stops at its
    next chunk boundary (``stop`` sees the parent gone)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


def _worker_main(conn, cores: tuple[int, ...], settings: dict[str, Any], stop_event, parent: int) -> None:
    """A worker process: pin to ``cores``, take the parent's JAX settings, then run jobs until told to end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into ``stop``
    _die_with_parent(parent)
    if cores:
        os.sched_setaffinity(0, cores)  # before JAX sizes its thread pools
    import jax

    from plastix.jit import collect_garbage_less_often

    for name, value in settings.items():
        if jax.config.values.get(name, value) != value:
            jax.config.update(name, value)
    collect_garbage_less_often()
    stop = _WorkerStop(stop_event, parent)

    def progress(*args):
        conn.send(("progress", args))

    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        work, job = message
        try:
            result = ("result", work(job, stop, progress))
        except BaseException as e:  # noqa: BLE001 - sent to the parent, which raises it
            result = ("error", _portable(e))
        try:
            conn.send(result)
        except Exception as e:  # noqa: BLE001 - a result that cannot be pickled
            conn.send(("error", RuntimeError(f"the job's result could not be sent back: {type(e).__name__}: {e}")))


def run_in_processes(
    work: Callable[[Any, Any, Callable[..., None]], Any],
    jobs: Sequence[Any],
    workers: int,
    stop: threading.Event | None = None,
    progress: Callable[..., None] | None = None,
    on_result: Callable[[Any, Any], None] | None = None,
) -> list[Any]:
    """``[work(job, stop, progress) for job in jobs]``, ``workers`` at a time, each worker in a
    process of its own pinned to its share of the cores (:func:`core_shares`; see the module
    docstring) where :func:`worker_processes` says so (a CPU backend); otherwise in threads of this
    process (with one worker or one job: here, in the calling thread).

    Args:
      work: picklable; ``work(job, stop, progress)`` (see the module docstring).
      jobs: picklable; put the longest first to balance the workers.
      workers: processes at once.
      stop: set by Ctrl-C here (or by the caller): every job ends after its current chunk.
      progress: called here with each ``progress(*args)`` a job makes.
      on_result: called here with ``(job, result)`` as each job ends (e.g. a status table).

    Raises:
      ValueError: ``workers < 1``.
      RuntimeError: a worker process died.
      KeyboardInterrupt: after Ctrl-C, once the running jobs stopped.
    """
    stop = stop if stop is not None else threading.Event()
    report = progress if progress is not None else (lambda *args: None)
    done = on_result if on_result is not None else (lambda job, result: None)

    def here(job):
        result = work(job, stop, report)
        done(job, result)
        return result

    if workers < 1:
        raise ValueError(f"workers must be >= 1 (programs run at once), got {workers}")
    if not worker_processes(workers, len(jobs)):
        return run_concurrently(here, jobs, workers, stop)
    target = getattr(work, "func", work)  # a functools.partial's function
    if getattr(target, "__module__", None) == "__main__":
        raise ValueError(
            f"run_in_processes: work {getattr(target, '__name__', target)!r} is defined in __main__; worker "
            "processes import it by module name, so define it in an importable module"
        )
    context = multiprocessing.get_context("spawn")
    try:
        stop_event = context.Event()
    except OSError as e:  # no POSIX semaphores here (some sandboxes): threads of this process
        warnings.warn(f"worker processes unavailable ({e}); running {workers} jobs at once in threads", stacklevel=2)
        return run_concurrently(here, jobs, workers, stop)
    shares = core_shares(min(workers, len(jobs)))
    settings = jax_settings()
    started: list[tuple[Any, Any]] = []
    lock = threading.Lock()
    own = threading.local()

    def process():
        if getattr(own, "worker", None) is None:
            with lock:
                cores = shares[len(started)]
                parent_end, child_end = context.Pipe()
                name = f"plastix-worker-{len(started)}"
                proc = context.Process(
                    target=_worker_main,
                    args=(child_end, cores, settings, stop_event, os.getpid()),
                    name=name,
                    daemon=True,
                )
                with _without_main():
                    proc.start()
                child_end.close()
                own.worker = (proc, parent_end)
                started.append(own.worker)
        return own.worker

    def delegate(job):
        proc, conn = process()
        conn.send((work, job))
        while True:
            if stop.is_set():
                stop_event.set()
            try:
                if not conn.poll(POLL_SECONDS):
                    if proc.is_alive():
                        continue
                    raise EOFError
                message = conn.recv()
            except (EOFError, ConnectionError):
                proc.join(timeout=5)
                code = proc.exitcode
                how = f", killed by signal {-code}" if code is not None and code < 0 else ""
                raise RuntimeError(
                    f"worker process {proc.name} ended (exit code {code}{how}) while running job {job!r} "
                    "(SIGKILL is often the out-of-memory killer; any output above says more). "
                    "Its runs resume from their last checkpoint."
                ) from None
            kind, value = message
            if kind == "progress":
                report(*value)
            elif kind == "result":
                done(job, value)
                return value
            else:
                raise value

    try:
        return run_concurrently(delegate, jobs, workers, stop)
    finally:
        for _proc, conn in started:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for proc, conn in started:
            proc.join(timeout=5)
            if proc.is_alive():  # still in a job (a second Ctrl-C): ends as if killed
                proc.terminate()
                proc.join(timeout=5)
            conn.close()


def worker_processes(workers: int, jobs: int) -> bool:
    """Whether ``jobs`` programs, ``workers`` at a time, should run in worker processes pinned to
    shares of the cores (:func:`run_in_processes`): on a CPU backend with several workers and jobs.
    Elsewhere they run in threads of this process (an accelerator's memory is not split)."""
    if workers < 2 or jobs < 2:
        return False
    import jax

    return jax.default_backend() == "cpu"
