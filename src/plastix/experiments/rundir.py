"""Run directories: ``config.json``, checkpoints that survive a kill, metrics, a finished marker.

A run directory holds::

    config.json          the full config (a re-run with a different config is refused)
    checkpoint/          the latest chunk's state (orbax; written aside, then renamed), with the
                         SHA-256 of its arrays and the name and SHA-256 of its rows file
    rows-<step>.parquet  the metric rows up to that checkpoint
    metrics.parquet      one row per epoch / seed / setting, written when the run finishes
    DONE                 present once everything is written; holds the SHA-256 of metrics.parquet

Re-running a finished run is a no-op; re-running a killed run resumes from its last checkpoint.
Every file is verified against its checksum when read: a corrupt or truncated file is refused
with :class:`CorruptRunError` naming it, never used. A chunk whose loss or parameters are not
finite stops the run with :class:`NonFiniteError` (:func:`check_finite`) before it is saved, so
the last checkpoint is always a good one. A save that fails (a full disk: ``OSError`` ENOSPC,
saying how to resume) removes what it wrote, so the last complete checkpoint is what remains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd


class CorruptRunError(RuntimeError):
    """A run file is truncated, corrupt or does not match its checksum."""


class NonFiniteError(RuntimeError):
    """Training produced a NaN / inf loss or parameter."""


class RunInUseError(RuntimeError):
    """Another process is running in this run directory."""


def _disk_full(error: BaseException) -> bool:
    """Whether ``error`` says a write failed for lack of space: ``OSError`` ENOSPC, or orbax's
    (tensorstore's) ``ValueError`` "RESOURCE_EXHAUSTED ... No space left on device"."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(error) or "os_error_code='28'" in str(error)


class _DiskFullNoise(logging.Filter):
    """Drops orbax's own log of a failed write for lack of space (a traceback per writer thread):
    :meth:`RunDir.save_checkpoint` raises that failure itself, in one line that says what to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (_disk_full(error) if error is not None else "No space left on device" in record.getMessage())


def _size(n: int) -> str:
    """``n`` bytes as ``"16.4 kB"``, ``"3.2 MB"``, ``"1.1 GB"``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _disk_full_advice(what: str) -> str:
    return (
        f"no space left on device for a checkpoint ({what}); free some and run the same command again: "
        "the run resumes from its last complete checkpoint (or starts again if it has none)"
    )


def _quiet_disk_full_logs() -> None:
    absl = logging.getLogger("absl")  # orbax logs through absl
    if not any(isinstance(f, _DiskFullNoise) for f in absl.filters):
        absl.addFilter(_DiskFullNoise())


def _is_rows_file(name: str) -> bool:
    """Whether ``name`` is a checkpoint's rows file (``rows-<step>.parquet``, or its ``.tmp``)."""
    return name.startswith("rows") and ".parquet" in name


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file, then a rename): a reader or a kill
    never sees half a file."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_json(path: str, value: Any, sort_keys: bool = False) -> None:
    """:func:`write_text` of ``value`` as indented JSON (values JSON cannot hold written with ``str``)."""
    write_text(path, json.dumps(value, indent=2, sort_keys=sort_keys, default=str))


def structure_digest(tree: Any) -> str:
    """SHA-256 of a pytree's leaf paths (``['online'].params['fc1']['kernel']``, ...), in leaf order."""
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def array_digest(tree: Any) -> str:
    """SHA-256 over every array of a pytree (shapes, dtypes and bytes, in leaf order)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.reshape(-1).view(np.uint8))  # the bytes in place: no copy of a large replay (as tobytes made)
    return h.hexdigest()


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_parquet(path: str, digest: str | None) -> pd.DataFrame:
    if digest is not None and file_digest(path) != digest:
        raise CorruptRunError(
            f"{path}: checksum mismatch (the file was changed or truncated); delete the run to restart"
        )
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise CorruptRunError(f"{path}: unreadable parquet file ({type(e).__name__}: {e})") from None


@jax.jit
def _all_finite(leaves: list) -> jax.Array:
    """Whether every element of every array is finite: one compiled program per tree structure
    (not one small program per leaf shape, ~50 compilations per run on the MARL learners)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _on_host(x: Any) -> bool:
    return not isinstance(x, jax.Array) or all(d.platform == "cpu" for d in x.devices())


def _leaves_finite(leaves: list) -> bool:
    """Whether every element of ``leaves`` is finite: with NumPy where the arrays already live in host
    memory (no compilation: ~1 s of XLA time per training program on a 2-core CPU), else on the device
    (one compiled program, one scalar copied back)."""
    if all(_on_host(x) for x in leaves):
        return all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves)
    return bool(_all_finite(leaves))


def check_finite(state: Any, rows: pd.DataFrame, where: str, last_good: Any) -> None:
    """Raise :class:`NonFiniteError` when a loss in ``rows`` or an array of ``state`` is NaN / inf.

    Args:
      state: the training state after the chunk (parameters, optimizer state).
      rows: the chunk's metric rows (columns whose name contains ``loss`` are checked).
      where: the run and setting, for the message (e.g. the run directory and its config).
      last_good: ``() -> str``, what the last good checkpoint is (called only on failure).
    """
    losses = [c for c in rows.columns if "loss" in c and rows[c].dtype.kind == "f"]
    for column in losses:
        bad = ~np.isfinite(rows[column].to_numpy())
        if bad.any():
            first = rows[bad].iloc[0]
            counters = ("member", "seed", "epoch", "period", "env_steps", "updates")
            at = ", ".join(f"{k} {int(first[k])}" for k in counters if k in rows)
            raise NonFiniteError(
                f"training diverged: {column} is {first[column]} at {at} in {where}; the chunk was not saved; "
                f"last good checkpoint: {last_good()}. Lower the learning rate or check the inputs."
            )
    leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    if leaves and not _leaves_finite(leaves):
        raise NonFiniteError(
            f"training diverged: non-finite parameters or optimizer state in {where}; the chunk was not saved; "
            f"last good checkpoint: {last_good()}. Lower the learning rate or check the inputs."
        )


def check_run_name(name: str, field: str, allow_empty: bool = False) -> None:
    """A run name is one directory name inside the runs directory: no separators, no ``..``.

    Raises:
      ValueError: naming ``field`` and the rule.
    """
    if not name and allow_empty:
        return
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(
            f"{field}: got {name!r}; a run name is one directory name inside the runs directory "
            "(no '/', no '..', not starting with '.')"
        )


WHERE_FIELDS = ("runs_dir", "workers", "checkpoint_share", "xla_cpu_threads")
"""Config fields that say where or how a run executes, not what it computes (the runs directory,
programs run at once, the time share of checkpoints): left out, at any depth, of ``config.json``
and of the comparison with it, so a resumed run may change them."""


def _what_it_computes(config: dict) -> dict:
    """``config`` without :data:`WHERE_FIELDS`, in nested configs too (``plastix run rl``'s ``cell``)."""
    return {k: _what_it_computes(v) if isinstance(v, dict) else v for k, v in config.items() if k not in WHERE_FIELDS}


def config_dict(config: Any) -> dict:
    """A dataclass config as JSON-ready dict."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def config_from_dict(kind: type, fields: dict) -> Any:
    """Rebuild a (nested) dataclass config from :func:`config_dict`'s JSON form.

    Nested dataclass fields are rebuilt from their dicts and lists become tuples; fields left out
    take their defaults (a config written before a field existed). Unknown fields are an error.
    """
    import typing

    hints = typing.get_type_hints(kind)
    known = {f.name for f in dataclasses.fields(kind) if f.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{kind.__name__}: unknown fields {unknown} in the saved config")
    values = {}
    for name, value in fields.items():
        values[name] = _from_json(hints[name], value)
    return kind(**values)


def _from_json(hint: Any, value: Any) -> Any:
    import types
    import typing

    if value is None:
        return None
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return config_from_dict(option, value)
    if isinstance(value, list):
        return tuple(value)
    return value


class RunDir:
    """One run's directory on disk (see the module docstring)."""

    def __init__(self, path: str):
        self.path = path

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def finished(self) -> bool:
        return os.path.exists(self.file("DONE"))

    def prepare(self, config: Any, experiment: str | None = None) -> None:
        """Create the directory and write ``config.json``, or check it matches the existing one.

        Call it only after every check of the config passed: a rejected config must not leave a
        ``config.json`` that blocks the corrected command. The runs directory's spelling
        (``runs``, ``runs/``, ``./runs``, an absolute path, a moved directory) does not matter.

        Args:
          config: the run's config (a dataclass).
          experiment: the experiment's name, recorded so that another experiment is refused here.

        A directory that holds no results yet (no checkpoint, rows, metrics or ``DONE`` in it or
        below it: e.g. a run stopped by an error while its first chunk compiled) is taken over by
        the new config: there is nothing of the old one to protect, and a corrected command must
        not be refused because the rejected one got that far.

        Raises:
          ValueError: when the directory holds results of another experiment or another config.
        """
        wanted = _what_it_computes(config_dict(config))
        if experiment is not None:
            wanted["experiment"] = experiment
        path = self.file("config.json")
        if os.path.exists(path) and self._holds_results():
            try:
                with open(path) as f:
                    existing = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CorruptRunError(f"{path}: not valid JSON ({e}); delete the run directory to restart") from None
            existing = _what_it_computes(existing)
            if existing.get("experiment") != wanted.get("experiment"):
                raise ValueError(
                    f"{self.path} holds a run of experiment {existing.get('experiment')!r}, not {experiment!r}; "
                    "choose another --name"
                )
            if existing != wanted:
                diff = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
                raise ValueError(
                    f"{self.path} holds a run with a different config (fields {diff}); "
                    "choose another --name or delete the directory"
                )
            return
        os.makedirs(self.path, exist_ok=True)
        write_json(path, wanted, sort_keys=True)

    def _holds_results(self) -> bool:
        """Whether this directory or one below it holds a checkpoint, rows, metrics or ``DONE``."""
        for _, dirs, files in os.walk(self.path):
            if "checkpoint" in dirs or any(f in ("DONE", "metrics.parquet") or _is_rows_file(f) for f in files):
                return True
        return False

    @contextlib.contextmanager
    def claim(self):
        """Hold this run directory for this process while the block runs: a second ``plastix run``
        of the same run (another terminal, a job submitted twice) would train the same cells
        and overwrite each other's checkpoints, so it is refused. An exclusive ``flock`` on
        ``.lock``, which the kernel releases when the process ends however it ends (no stale lock
        after a kill); the file keeps the holder's pid for the message. Platforms without
        ``fcntl`` run unguarded. Call it before :meth:`prepare`, which may take over a directory.

        Raises:
          RunInUseError: another process holds the directory, naming its pid.
        """
        try:
            import fcntl
        except ImportError:  # not POSIX
            yield
            return
        os.makedirs(self.path, exist_ok=True)
        fd = os.open(self.file(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise RunInUseError(
                    f"{self.path} is in use by another plastix process (pid {holder}); wait for it to end, "
                    "or choose another --name"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _checkpoints(self):
        import orbax.checkpoint as ocp

        options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
        return ocp.CheckpointManager(os.path.abspath(self.file("checkpoint")), options=options)

    def save_checkpoint(self, state: Any, rows: list[dict] | pd.DataFrame, meta: dict) -> None:
        """Save a pytree of arrays, the metric rows so far and a small ``meta`` dict (orbax).

        Orbax writes each checkpoint aside and renames it when complete, so a kill mid-save
        leaves the previous checkpoint intact; only the newest is kept. The rows go to
        ``rows-<step>.parquet``, named (with their SHA-256) in the checkpoint itself; the previous
        step's rows are removed only once the new checkpoint is complete, so whenever a kill comes
        the last complete checkpoint finds exactly its own rows.
        """
        import orbax.checkpoint as ocp

        os.makedirs(self.path, exist_ok=True)
        _quiet_disk_full_logs()
        table = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
        state = jax.tree.map(np.asarray, state)
        needed = sum(x.nbytes for x in jax.tree.leaves(state)) + int(table.memory_usage(deep=True).sum())
        free = shutil.disk_usage(self.path).free
        if needed > free:  # refused before anything is written: orbax's own failure is noisier
            raise OSError(
                errno.ENOSPC,
                _disk_full_advice(f"needs about {_size(needed)}, {_size(free)} free"),
                self.path,
            )
        manager = self._checkpoints()
        step = (manager.latest_step() or 0) + 1
        rows_name = f"rows-{step}.parquet"
        tmp = self.file(rows_name + ".tmp")
        try:
            table.to_parquet(tmp)
            rows_digest = file_digest(tmp)
            os.replace(tmp, self.file(rows_name))
            extra = {
                "rows": len(table),
                "rows_file": rows_name,
                "meta": meta,
                "state_sha256": array_digest(state),
                "state_structure": structure_digest(state),
                "state_leaves": len(jax.tree.leaves(state)),
                "rows_sha256": rows_digest,
            }
            composite = ocp.args.Composite(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra))
            manager.save(step, args=composite)
            manager.wait_until_finished()
        except Exception as e:
            self._discard_partial_save(rows_name)
            if _disk_full(e):
                raise OSError(errno.ENOSPC, _disk_full_advice("the disk filled up"), self.file("checkpoint")) from None
            raise
        finally:
            manager.close()
        for name in self._rows_files():
            if name != rows_name:
                os.remove(self.file(name))

    def _discard_partial_save(self, rows_name: str) -> None:
        """Remove what a failed save wrote (its rows file, orbax's unfinished checkpoint), so the
        last complete checkpoint is what remains and a full disk gets its space back."""
        for name in (rows_name, rows_name + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.file(name))
        checkpoints = self.file("checkpoint")
        for name in os.listdir(checkpoints) if os.path.isdir(checkpoints) else ():
            if "orbax-checkpoint-tmp" in name:
                shutil.rmtree(os.path.join(checkpoints, name), ignore_errors=True)

    def _rows_files(self) -> list[str]:
        return [n for n in os.listdir(self.path) if _is_rows_file(n)]

    def _restore(self, template: Any | None):
        import orbax.checkpoint as ocp

        if not os.path.isdir(self.file("checkpoint")):
            return None
        manager = self._checkpoints()
        step = manager.latest_step()
        if step is None:
            return None
        items = {"extra": ocp.args.JsonRestore()}
        if template is not None:
            items["state"] = ocp.args.StandardRestore(jax.tree.map(np.asarray, template))
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError):
            raise
        except Exception as e:  # truncated / damaged files surface as many error types from orbax / tensorstore
            raise CorruptRunError(
                f"{self.file('checkpoint')}: unreadable checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                "delete the run directory to restart"
            ) from None
        finally:
            manager.close()
        return restored

    def checkpoint_meta(self) -> dict | None:
        """The ``meta`` dict of the last checkpoint, or ``None`` when there is none."""
        restored = self._restore(None)
        return None if restored is None else restored["extra"]["meta"]

    def load_checkpoint(self, template: Any) -> tuple[Any, pd.DataFrame, dict] | None:
        """The last checkpoint as ``(state, rows, meta)`` shaped like ``template``, or ``None``.

        ``rows`` is the metric table saved with it, dtypes as saved.

        Raises:
          ValueError: when the checkpoint does not match ``template`` (another config's state).
        """
        try:
            restored = self._restore(template)
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"{self.file('checkpoint')}: checkpoint does not match this config's state ({e}); delete it to restart"
            ) from e
        if restored is None:
            return None
        extra = restored["extra"]
        if "state_structure" in extra and structure_digest(template) != extra["state_structure"]:
            # orbax restores the template's leaves from a larger saved state without a word
            raise ValueError(
                f"{self.file('checkpoint')}: checkpoint does not match this config's state (it holds "
                f"{extra['state_leaves']} arrays laid out otherwise; this code's state has "
                f"{len(jax.tree.leaves(template))}: another config or another plastix version); delete it to restart"
            )
        if "state_sha256" in extra and array_digest(restored["state"]) != extra["state_sha256"]:
            raise CorruptRunError(
                f"{self.file('checkpoint')}: checksum mismatch (corrupt, or written by another plastix version "
                "whose state was laid out otherwise); delete the run to restart"
            )
        state = jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(restored["state"]))
        n_rows = extra["rows"]
        rows = pd.DataFrame()
        if n_rows:
            rows_path = self.file(extra.get("rows_file", "rows.parquet"))
            if not os.path.exists(rows_path):
                raise CorruptRunError(f"{rows_path} (the checkpoint's rows) is missing; delete the run to restart")
            rows = _read_parquet(rows_path, extra.get("rows_sha256"))
            if len(rows) != n_rows:
                raise CorruptRunError(f"{rows_path}: {len(rows)} rows, the checkpoint expects {n_rows}")
        return state, rows, extra["meta"]

    def finish(self, metrics: pd.DataFrame) -> None:
        """Write ``metrics.parquet``, drop the checkpoint and mark the run done."""
        tmp = self.file("metrics.parquet.tmp")
        metrics.to_parquet(tmp)
        digest = file_digest(tmp)
        os.replace(tmp, self.file("metrics.parquet"))
        shutil.rmtree(self.file("checkpoint"), ignore_errors=True)
        for name in self._rows_files():
            os.remove(self.file(name))
        with open(self.file("DONE.tmp"), "w") as f:
            f.write(f"sha256 {digest}\n")
        os.replace(self.file("DONE.tmp"), self.file("DONE"))

    def metrics(self) -> pd.DataFrame:
        """The finished run's ``metrics.parquet``, verified against the checksum in ``DONE``.

        Raises:
          CorruptRunError: the file is missing, truncated or changed.
        """
        path = self.file("metrics.parquet")
        if not os.path.exists(path):
            raise CorruptRunError(f"{path} is missing: the run has not finished (run it again to resume)")
        digest = None
        if os.path.exists(self.file("DONE")):
            with open(self.file("DONE")) as f:
                words = f.read().split()
            digest = words[1] if len(words) == 2 and words[0] == "sha256" else None
        return _read_parquet(path, digest)

    def last_good(self) -> str:
        """Where the last good state is, for error messages."""
        meta = self.checkpoint_meta() if os.path.isdir(self.file("checkpoint")) else None
        if meta is None:
            return "none (no chunk finished before this one); the run will restart from scratch"
        return f"{self.file('checkpoint')} ({meta})"
