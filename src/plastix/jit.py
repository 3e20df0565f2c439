"""How plastix compiles its training programs: ``jax.jit`` plus one place for XLA compile options.

On a CPU, compiling dominates short runs (a small MARL study spends a third of its time in XLA).
XLA:CPU hands each fused loop to LLVM at ``-O2``; at ``-O1`` the same programs compile about a
quarter faster (plain QMIX group of the stagnant-neuron study: 10.1 s → 7.8 s) and ran as fast
(chunk 4.6–5.0 s at O2, 3.9–4.2 s at O1, 2-core AMD EPYC, jax 0.10.2), because the time goes to
matrix multiplications that XLA calls into libraries for, not to LLVM-generated code.
``-O0`` compiles faster still but runs 3× slower. Other backends keep XLA's defaults.

The option is XLA's (``xla_backend_optimization_level``); a jaxlib that no longer knows it gets
no options (with a warning) rather than an error.

On the CPU, building a program sets BLAS to one thread (:func:`one_blas_thread`): jaxlib's LAPACK
kernels (the eigen-solve behind effective rank and srank) call SciPy's OpenBLAS, whose idle
threads spin for a while after each call; with diagnostics every period they kept a second core
busy for two thirds of a DQN run (12.7 s of CPU in 7.6 s) and slowed XLA's own threads
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
import gc
import os
import warnings
from collections.abc import Callable
from typing import Any

import jax

CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}
"""Compile options of training programs on the CPU backend (LLVM ``-O1``; see the module docstring)."""


@functools.cache
def compiler_options() -> dict[str, Any]:
    """The compile options of training programs on the default backend (``{}``: XLA's defaults)."""
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(1.0).compile()
    except Exception as e:  # noqa: BLE001 - an XLA that renamed or dropped the option
        warnings.warn(f"plastix: XLA rejected {CPU_COMPILER_OPTIONS} ({e}); compiling with its defaults", stacklevel=2)
        return {}
    return dict(CPU_COMPILER_OPTIONS)


TRACING_GC_THRESHOLDS = (20_000, 50, 50)
"""Python's garbage-collector thresholds while programs are traced (its defaults: 700, 10, 10)."""


def collect_garbage_less_often() -> None:
    """Set :data:`TRACING_GC_THRESHOLDS`: fewer collections while JAX traces and lowers a program.

    Tracing a training program allocates millions of Python objects that live until it is lowered,
    and at Python's default thresholds the collector walks them again and again: tracing and
    lowering the KNIFE group's program of the stagnant-neuron study took 4.9 s, 4.3 s with these
    thresholds (one core of a 2-core Xeon, same peak memory). Reference cycles are still collected,
    later. For processes plastix owns (the CLI, its worker processes, the tests), not for a
    library import: a user's program keeps its own settings.
    """
    gc.set_threshold(*TRACING_GC_THRESHOLDS)


BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables that set a BLAS library's threads: where one is set, plastix leaves BLAS alone."""


@functools.cache
def one_blas_thread() -> bool:
    """On the CPU backend, set the BLAS libraries of this process (OpenBLAS, MKL, ...) to one thread
    each, once; returns whether it did. Not where the user chose (:data:`BLAS_THREAD_VARIABLES`).

    XLA:CPU runs a program on its own threads; a LAPACK call inside it (the eigen-solve of a
    features' Gram matrix for effective rank and srank) is far too small to gain from BLAS threads, and
    OpenBLAS's idle threads spin after each call: at PureJaxRL's DQN settings with diagnostics
    every 1,000 updates they burnt a second core for 5 s of a 7.6 s run and made it ~4% slower
    (2-core Xeon; benchmarks/RESULTS.md). jaxlib binds its LAPACK kernels to SciPy's OpenBLAS,
    loaded here first so the setting reaches it. The setting is for the whole process (a limit
    scoped to a call would end before the asynchronously dispatched program runs): called when a
    training program is built (:func:`jit_program`), not at import.
    """
    if jax.default_backend() != "cpu" or any(os.environ.get(name) for name in BLAS_THREAD_VARIABLES):
        return False
    import scipy.linalg.cython_lapack  # noqa: F401 - the library jaxlib's LAPACK kernels are bound to
    import threadpoolctl

    threadpoolctl.threadpool_limits(limits=1, user_api="blas")
    return True


XLA_POOL_THREAD_PREFIX = "tf_XLA"
"""Name prefix of XLA:CPU's pool threads (``tf_XLAEigen``): where one exists, JAX's backends have started."""


def _thread_names() -> list[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return names


def xla_cpu_pool_threads() -> int | None:
    """Threads in XLA:CPU's pool now (0 before JAX's backends start; ``None`` where this cannot be seen)."""
    if not os.path.isdir("/proc/self/task"):
        return None
    return sum(name.startswith(XLA_POOL_THREAD_PREFIX) for name in _thread_names())


def xla_cpu_threads(threads: int) -> int | None:
    """Start JAX's backends with ``threads`` threads in XLA:CPU's thread pool (0: XLA's default,
    one per core this process may use); returns the pool's size, or ``None`` where it cannot be
    chosen (not Linux, or JAX's backends already started: a warning says so).

    XLA:CPU runs a program's independent operations on a pool sized, when the backend starts, by
    the cores the process may use. A small program gains nothing from a second thread and can
    lose much: DQN at PureJaxRL's settings (MLP 120-84, 8 seeds) ran a chunk in 8.6–9.0 s with
    XLA's two threads on a 2-core Xeon and in 7.4 s with one, where PureJaxRL's own loop ran
    alike either way (``benchmarks/RESULTS.md``); convolutional nets gain from both (DQN on
    MinAtar, 8 seeds: 16.7 s per chunk on two cores, 24.0 s on one). The pool is made while
    this thread is confined to ``threads`` cores, then every thread of the process may use all
    of them again, so the pool's threads, Python and the data loaders move freely. For processes
    plastix owns (the CLI, benchmarks), before anything starts JAX (``jax.devices()``, the first
    computation, ``import gymnax``); never at import.
    """
    if threads < 0:
        raise ValueError(f"xla_cpu_threads: threads must be >= 0 (0: XLA's default), got {threads}")
    if not hasattr(os, "sched_setaffinity") or not os.path.isdir("/proc/self/task"):
        return None
    if xla_cpu_pool_threads():
        warnings.warn(
            f"plastix: JAX's backends already started; XLA:CPU keeps its thread pool (asked for {threads})",
            stacklevel=2,
        )
        return None
    cores = os.sched_getaffinity(0)
    if threads == 0 or threads >= len(cores):
        jax.devices()
        return len(cores)
    os.sched_setaffinity(0, sorted(cores)[:threads])
    try:
        jax.devices()
    finally:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), cores)
            except OSError:  # the thread ended meanwhile
                pass
    return threads


def jit_program(fn: Callable, **kwargs) -> Callable:
    """``jax.jit(fn, **kwargs)`` with :func:`compiler_options`, and :func:`one_blas_thread`: for whole
    training programs (a run's init and chunk), not for small helpers, whose compile time does not
    matter."""
    one_blas_thread()
    return jax.jit(fn, compiler_options=compiler_options() or None, **kwargs)


@jax.custom_batching.custom_vmap
def any_run(pred: Any) -> jax.Array:
    """Bool scalar ``pred`` of this run; under ``vmap`` over runs, whether it holds for *any* run (unbatched).

    ``vmap`` turns a ``lax.cond`` whose predicate is batched into both branches computed for every
    run and a select, so a costly branch that a run rarely needs (CBP's replacement after an
    update, an intervention that fires at a task switch) would run at every step. With the
    predicate reduced over the runs the conditional stays one: its branch runs, for every run, only
    when some run needs it. Use it only where the branch leaves a run that does not need it
    unchanged (e.g. a surgery with an all-false mask), so each run computes what it computes alone.
    Under nested ``vmap`` s the reduction covers every level.
    """
    return jax.numpy.asarray(pred, bool)


@any_run.def_vmap
def _any_run_batched(axis_size: int, in_batched: list[bool], pred: jax.Array):
    (batched,) = in_batched
    return any_run(jax.numpy.any(pred, axis=0) if batched else pred), False


def when_any(pred: Any, act: Callable[[Any], Any], state: Any) -> Any:
    """``pred ? act(state) : state`` element-wise, with ``act`` computed only when it is needed.

    ``pred`` is this run's bool scalar; under ``vmap`` each run still gets its own select, but the
    whole branch sits in a conditional on :func:`any_run` ``(pred)``, so it runs only when some run
    needs it. ``act`` must keep the tree structure of ``state``. Uses: a surgery at a task switch
    (:func:`~plastix.interventions.base.gated_apply`), and a target network's periodic sync, which
    a ``jnp.where`` over every parameter would compute at every update: on a 2-core CPU the MARL
    learner's was 3.6% of a KNIFE-group chunk's op time (80 runs, sync every 25 updates: 0.42 s of
    11.5 s on one core); in the conditional, 0.05 s.
    """
    pred = jax.numpy.asarray(pred, bool)

    def selected(state):
        return jax.tree.map(lambda a, b: jax.numpy.where(pred, a, b), act(state), state)

    return jax.lax.cond(any_run(pred), selected, lambda state: state, state)
