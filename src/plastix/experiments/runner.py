"""The one resumable training-run skeleton every experiment runs on.

A *run* lives in one :class:`~plastix.experiments.rundir.RunDir` and is a list of
:class:`Stage` s (an RL cell: one stage; the supervised experiment: "train" then "fit", whose
carry has another shape). Each stage advances a carry (a pytree of arrays: networks, optimizer,
buffers, keys) chunk by chunk with one compiled function and returns the chunk's metric rows.
:func:`run_stages` owns the loop every experiment used to write for itself:

1. build the first carry, or restore the last checkpoint (stage, chunks done, rows so far);
2. run a chunk, check its losses and parameters are finite (:func:`check_finite`), append its
   rows, report progress, checkpoint every ``checkpoint_every`` chunks (but see below) and at each
   stage switch;
3. at the end of a stage build the next stage's carry from the last one;
4. return the final carry and every row.

A carry's arrays are given strong types (:func:`strong_types`) when a stage starts, so a restored
carry (read back from NumPy, never weakly typed) has exactly the types of a fresh one and the
chunk function is not compiled again on resume (flashbax's buffer index was ``~int32``: a resumed
MARL cell recompiled its chunk, 10 s on a 2-core CPU even at test sizes).

:func:`complete` ends a run the same way whether it was started from Python or from the CLI:
``metrics.parquet`` and ``DONE`` (with its checksum), then the report.

Checkpoints carry ``{"stage": i, "chunks_done": d}``; the rows saved with them are exactly the
rows of the chunks before, so a resumed run produces the same table as an uninterrupted one.

Saving costs what the carry weighs: a paper-scale SMAX cell's 8 seeds hold 12.5 GB of replay,
36 s to save on the H200 machine against 9 s per chunk (benchmarks/RESULTS.md). So saving may
take at most ``checkpoint_share`` of the run's time: after a save of ``s`` seconds the next
one waits until ``s · (1 − share) / share`` seconds have passed (a share of 0.1: 9 · s), and a
run stopped on request between chunks (:class:`Interrupted`) saves its last chunk first. Saves
under :data:`CHEAP_SAVE_SECONDS` never wait, so small runs checkpoint every ``checkpoint_every``
chunks as before; a killed process loses at most the chunks since its last save.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from plastix.experiments.rundir import RunDir, check_finite

CHEAP_SAVE_SECONDS = 1.0
"""A checkpoint saved faster than this never delays the next one (see the module docstring)."""


def _keep(carry: Any) -> Any:
    return carry


@dataclasses.dataclass(frozen=True)
class Stage:
    """One phase of a run: ``chunks`` calls of ``run_chunk`` on a carry of one shape.

    Attributes:
      name: shown in progress and error messages (``"train"``, ``"fit"``, ``"learn"``).
      chunks: number of chunks.
      start: ``start(previous) -> carry``: the stage's first carry from the previous stage's last
        carry (``None`` for the first stage). Also used on shapes only, to build restore templates.
      run_chunk: ``run_chunk(carry, chunks_done) -> (carry, rows)`` with ``rows`` a DataFrame.
      trained: ``trained(carry) -> pytree`` checked for non-finite values after every chunk
        (parameters and optimizer state; buffers and observations are not checked).
      resumed: ``resumed(fresh, restored) -> carry`` after a restore (e.g. fresh emulator states
        for host environments, which are not in the checkpoint).
    """

    name: str
    chunks: int
    start: Callable[[Any], Any]
    run_chunk: Callable[[Any, int], tuple[Any, pd.DataFrame]]
    trained: Callable[[Any], Any] = _keep
    resumed: Callable[[Any, Any], Any] = lambda fresh, restored: restored


@dataclasses.dataclass
class RunResult:
    """What :func:`run_stages` returns.

    Attributes:
      carry: the last carry (``None`` when the run had finished before and was only read back).
      rows: every metric row so far.
      finished: every chunk of every stage ran.
    """

    carry: Any
    rows: pd.DataFrame
    finished: bool


def stacked_rows(metrics: dict, step_column: str, first_step: int, labels: dict[str, np.ndarray]) -> pd.DataFrame:
    """Stacked metrics ``{name: (runs, steps)}`` as one row per run and step.

    Args:
      metrics: arrays with leading axes ``(runs, steps)`` (scalars per run and step).
      step_column: name of the step counter column (``"epoch"``, ``"period"``); it counts from
        ``first_step + 1``.
      first_step: steps before this chunk.
      labels: per-run columns, each ``(runs,)`` (``seed``, ``setting``, ...).

    Returns:
      ``runs · steps`` rows; float metrics as float64, others in their own dtype.
    """
    host = {k: np.asarray(v) for k, v in metrics.items()}
    runs, steps = next(iter(host.values())).shape[:2]
    table = {k: np.repeat(np.asarray(v), steps) for k, v in labels.items()}
    table[step_column] = np.tile(np.arange(first_step + 1, first_step + steps + 1), runs)
    for k, v in host.items():
        table[k] = v.reshape(runs * steps).astype(np.float64 if v.dtype.kind == "f" else v.dtype)
    return pd.DataFrame(table)


def strong_types(tree: Any) -> Any:
    """``tree`` with every weakly typed array (``jnp.array(0)``: ``~int32``) cast to its strong
    dtype; other leaves as they are. JAX compiles a function again for the same shapes when an
    argument's weak type differs, and arrays restored from a checkpoint are always strong."""
    import jax

    return jax.tree.map(lambda x: x.astype(x.dtype) if getattr(x, "weak_type", False) else x, tree)


def _template(stages: list[Stage], index: int) -> Any:
    carry = None
    for stage in stages[: index + 1]:
        carry = stage.start(carry)
    return carry


def run_stages(
    rundir: RunDir,
    stages: list[Stage],
    where: str,
    progress: Callable[[str, int, int], None] | None = None,
    checkpoint_every: int = 1,
    stop_after_chunks: int | None = None,
    on_rows: Callable[[pd.DataFrame], None] | None = None,
    checkpoint_share: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
) -> RunResult:
    """Run (or resume) ``stages`` in ``rundir``; see the module docstring.

    Args:
      rundir: the run directory, already :meth:`~RunDir.prepare` d.
      stages: the run's stages, in order.
      where: the run and its setting, for error messages.
      progress: ``progress(stage name, chunks done, chunks total)`` after every chunk and once on
        (re)start.
      checkpoint_every: chunks between checkpoints (0: only at stage switches).
      stop_after_chunks: return (as if killed) after this many chunks of this call (tests).
      on_rows: ``on_rows(rows)`` with each chunk's rows once they passed the finiteness check
        (live logging); not called for rows restored from a checkpoint.
      checkpoint_share: the most of the run's time saving may take, in (0, 1]; 1 saves every
        ``checkpoint_every`` chunks whatever it costs (see the module docstring).
      clock: seconds, for timing the saves (tests pass a fake one).

    Raises:
      NonFiniteError: a chunk produced a NaN / inf loss or parameter (nothing of it is saved).
      CorruptRunError: the checkpoint or its rows fail their checksums.
    """
    if not stages:
        raise ValueError("run_stages: a run needs at least one stage")
    if not 0 < checkpoint_share <= 1:
        raise ValueError(f"checkpoint_share must be in (0, 1], got {checkpoint_share}")
    index, done, frames, carry = 0, 0, [], None
    next_save = -float("inf")  # clock time from which a periodic save may happen
    unsaved = False  # chunks ran since the last save

    def save(stage_index: int, chunks_done: int) -> None:
        nonlocal next_save, unsaved
        started = clock()
        rundir.save_checkpoint(carry, _concat(frames), {"stage": stage_index, "chunks_done": chunks_done})
        ended = clock()
        took = ended - started
        next_save = ended + (took * (1 - checkpoint_share) / checkpoint_share if took >= CHEAP_SAVE_SECONDS else 0.0)
        unsaved = False

    meta = rundir.checkpoint_meta()
    if meta is not None:
        index, done = meta.get("stage", 0), meta["chunks_done"]
        fresh = _template(stages, index)
        carry, rows, _ = rundir.load_checkpoint(fresh)
        carry = strong_types(stages[index].resumed(fresh, _as_device(carry)))  # fresh parts (host envs' episodes) too
        frames = [rows] if len(rows) else []
    else:
        carry = strong_types(stages[0].start(None))
    ran = 0
    while True:
        stage = stages[index]
        if progress:
            progress(stage.name, done, stage.chunks)
        while done < stage.chunks:
            if stop_after_chunks is not None and ran >= stop_after_chunks:
                return RunResult(carry, _concat(frames), False)
            carry, rows = stage.run_chunk(carry, done)
            check_finite(stage.trained(carry), rows, f"{where}, stage {stage.name}", rundir.last_good)
            frames.append(rows)
            if on_rows:
                on_rows(rows)
            done, ran, unsaved = done + 1, ran + 1, True
            last = index == len(stages) - 1 and done == stage.chunks
            if checkpoint_every and done % checkpoint_every == 0 and not last and clock() >= next_save:
                save(index, done)
            if progress:
                try:
                    progress(stage.name, done, stage.chunks)
                except Interrupted:  # stopped on request: what ran is kept
                    if unsaved and checkpoint_every and not last:
                        save(index, done)
                    raise
        if index == len(stages) - 1:
            return RunResult(carry, _concat(frames), True)
        index, done = index + 1, 0
        carry = strong_types(stages[index].start(carry))
        save(index, 0)


def complete(rundir: RunDir, rows: pd.DataFrame, write_report: Callable[[pd.DataFrame, str], list[str]]) -> list[str]:
    """End a run: ``metrics.parquet`` + ``DONE`` (checksummed), then the report; returns the files written.

    The metrics are marked done before the report is drawn, so a failing figure never loses a
    finished run: ``plastix report <run_dir>`` draws it again.
    """
    rundir.finish(rows)
    return [rundir.file("metrics.parquet")] + write_report(rows, rundir.path)


class Interrupted(Exception):
    """A run stopped on request (Ctrl-C) after a chunk; its run directory resumes from there."""


def stopping_progress(
    stop: threading.Event, name: str, progress: Callable[[int, int], None] | None = None
) -> Callable[[int, int], None]:
    """A ``progress(chunks_done, chunks_total)`` for :func:`run_stages` (called after every chunk
    and its checkpoint) that raises :class:`Interrupted` naming ``name`` once ``stop`` is set, and
    otherwise calls ``progress``: how a job of :func:`run_concurrently` stops at a chunk boundary."""

    def callback(done: int, total: int) -> None:
        if stop.is_set():
            raise Interrupted(name)
        if progress:
            progress(done, total)

    return callback


def run_concurrently(
    work: Callable[[Any], Any], jobs: Sequence[Any], workers: int, stop: threading.Event | None = None
) -> list[Any]:
    """``[work(job) for job in jobs]`` with up to ``workers`` jobs running at once (threads).

    For independent runs (each its own compiled program and run directory): while one program
    compiles or runs its small serial ops, another fills the idle cores. Jobs start in list
    order (put the longest first to balance the workers). Results come back in ``jobs`` order.
    When a job raises, no further job starts, the running ones finish (their runs are saved and
    skipped on resume), and the first error raised is raised here.

    Ctrl-C (``KeyboardInterrupt`` in the calling thread) sets ``stop``: jobs are expected to check
    it between chunks (:func:`stopping_progress`) and raise :class:`Interrupted`; once they have,
    ``KeyboardInterrupt`` is raised here. A second Ctrl-C stops waiting at once (the threads are
    daemons: the process then ends as if killed, and every run resumes from its last checkpoint).

    Raises:
      ValueError: ``workers < 1``.
      KeyboardInterrupt: after Ctrl-C, once the running jobs stopped.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (programs run at once), got {workers}")
    if workers == 1 or len(jobs) <= 1:
        return [work(job) for job in jobs]
    stop = stop if stop is not None else threading.Event()
    results: dict[int, Any] = {}
    errors: list[tuple[int, BaseException]] = []  # in the order they were raised
    pending = list(enumerate(jobs))
    lock = threading.Lock()

    def worker(finished: threading.Event):
        try:
            while True:
                with lock:
                    if errors or stop.is_set() or not pending:
                        return
                    index, job = pending.pop(0)
                try:
                    results[index] = work(job)
                except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                    with lock:
                        errors.append((index, e))
        finally:
            finished.set()

    # Waiting on events, not Thread.join: a join interrupted by Ctrl-C makes CPython 3.11 mark a
    # running thread as stopped (is_alive() False), and the process would exit under it.
    finished = [threading.Event() for _ in range(min(workers, len(jobs)))]
    for event in finished:
        threading.Thread(target=worker, args=(event,), daemon=True).start()

    def wait_all():
        for event in finished:
            while not event.wait(0.2):  # short waits: the main thread stays responsive to Ctrl-C
                pass

    try:
        wait_all()
    except KeyboardInterrupt:
        stop.set()
        print(
            "\ninterrupted: the running programs stop after their current chunk (saved); run the same "
            "command again to resume. Ctrl-C again to quit at once.",
            file=sys.stderr,
            flush=True,
        )
        interrupted = time.monotonic()
        while True:
            try:
                wait_all()
                break
            except KeyboardInterrupt:  # a second Ctrl-C quits at once; an echo of the first does not
                if time.monotonic() - interrupted > 1.0:
                    raise
        raise
    failures = [e for _, e in errors if not isinstance(e, Interrupted)]
    if failures:
        raise failures[0]
    if errors:  # stopped on request from elsewhere (``stop`` set by the caller)
        raise KeyboardInterrupt
    return [results[i] for i in range(len(jobs))]


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _as_device(tree: Any) -> Any:
    import jax
    import jax.numpy as jnp

    return jax.tree.map(jnp.asarray, tree)
