"""``plastix sweep``: an experiment over a grid of settings × seeds, one *cell* per setting.

A sweep expands ``--grid field=v1,v2 other=a,b`` into the product of its values; every grid point
gives the experiment's cells with those settings, each with its seeds vmapped (and sharded over
the local devices). Each cell runs in its own run directory, so it checkpoints and resumes on its
own::

    <runs_dir>/<name>/
        config.json       the sweep (experiment, grid, seeds): re-running another sweep here is refused
        cells.json        every cell: its labels and its full RLConfig
        status.md         pending / running / interrupted / done / failed, per cell
        cells/<cell>/     a run directory (config.json, checkpoint/, metrics.parquet, DONE)
                          plus RUNNING (who runs it) or FAILED (why it stopped)
        report.md, *.png  ``plastix report <runs_dir>/<name>`` (also written when every cell is done)

Grid fields, in the order they are looked up:

1. a field of the experiment's config (``env``, ``scale``, ``env_steps``, ``tau``, ``methods``,
   ``replay_ratios``, ``mixers``; a tuple field takes one value per cell);
2. a cell field the experiment varies itself, named as in :class:`~plastix.experiments.rl.RLConfig`:
   ``plasticity.method`` (→ ``methods``), ``loop.replay_ratio`` (→ ``replay_ratios``), ``agent``
   (→ ``mixers`` in the MARL experiments), so the experiment's own settings of that method / ratio
   at its scale are used;
3. any field of :class:`~plastix.experiments.rl.RLConfig`, dotted (``dqn.optimizer.learning_rate``,
   ``plasticity.redo.period``, ``diagnostics.tau``), set on every cell of the experiment.

Values are parsed with the field's type (``true``/``false``, numbers, choices, ``[64,64]`` for
tuples). A field with one value is a fixed setting; fields with several values label the cells.

Backends: ``local`` runs the cells here, ``workers`` at a time (on a CPU each in a worker process pinned to
its share of the cores, :mod:`plastix.experiments.workers`; else in threads); ``ray`` submits one task per
cell to a Ray cluster (:mod:`plastix.experiments.sweep_ray`). Either way a cell's results exist once,
in its run directory (``metrics.parquet`` + ``DONE`` are written last and atomically), and the
status of every cell is read from the disk, so a sweep can be watched or reported while it runs.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import re
import socket
import threading
import time
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import pandas as pd

from plastix.experiments.rundir import RunDir, check_run_name, config_dict, write_json, write_text
from plastix.experiments.runner import Interrupted, stopping_progress
from plastix.experiments.workers import run_in_processes

Backend = Literal["local", "ray"]
LogTarget = Literal["tensorboard", "wandb"]

ALIASES = {
    "dqn-replay-ratio": {"plasticity.method": "methods", "loop.replay_ratio": "replay_ratios"},
    "marl": {"plasticity.method": "methods", "agent": "mixers"},
}
"""Cell fields that an experiment varies itself, and the experiment field that sets them."""

NOT_SWEEPABLE = {
    "dormant-pruning": "it evaluates pruned networks after training, which a sweep cell does not; "
    "run it with `plastix run dormant-pruning`",
}
"""Experiments whose cells need more than training (refused by ``plastix sweep``, with the reason)."""

EXPERIMENT_AXES = {"methods": "method", "replay_ratios": "rr", "mixers": "mixer"}
"""Experiment fields whose value an experiment's cells carry as a label already."""
RL_AXES = {"plasticity.method": "method", "agent": "agent"}
"""The same for ``rl``'s cells."""


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What a sweep computes (its directory refuses another one).

    Attributes:
      experiment: the experiment (``plastix list``).
      grid: ``field=v1,v2,...`` items (see the module docstring); the cells are their product.
      seeds: seeds per cell, vmapped (0 = the experiment's default).
      name: sweep name (default ``sweep-<experiment>``); written to ``<runs_dir>/<name>``.
      runs_dir: parent directory of run directories.
    """

    experiment: str
    grid: tuple[str, ...] = ()
    seeds: int = 0
    name: str = ""
    runs_dir: str = "runs"

    def __post_init__(self):
        from plastix.experiments.dormant import EXPERIMENTS

        allowed = tuple(name for name in EXPERIMENTS if name not in NOT_SWEEPABLE)
        if self.experiment in NOT_SWEEPABLE:
            raise ValueError(f"sweep experiment {self.experiment!r}: {NOT_SWEEPABLE[self.experiment]}")
        if self.experiment not in EXPERIMENTS:
            raise ValueError(f"sweep experiment: got {self.experiment!r}, allowed values are {allowed}")
        if self.seeds < 0:
            raise ValueError(f"SweepConfig.seeds must be >= 0 (0 = the experiment's default), got {self.seeds}")
        check_run_name(self.name, "SweepConfig.name", allow_empty=True)
        parse_grid(self.grid)  # raises on a malformed item

    @property
    def root(self) -> str:
        return os.path.join(self.runs_dir, self.name or f"sweep-{self.experiment}")


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (none of it changes a result).

    Attributes:
      backend: ``local`` (cells here, ``workers`` at a time) or ``ray`` (one task per cell).
      address: the Ray cluster (``auto``: the one started with ``ray start``; empty: a local one).
      cpus_per_cell / gpus_per_cell: resources a cell's Ray task declares.
      retries: times Ray restarts a cell whose worker died (the cell resumes from its checkpoint).
      devices: local devices a cell's seeds are sharded over (0: every local device).
      log: live logging of every chunk's metrics: ``tensorboard``, ``wandb`` (both may be given).
      wandb_mode: ``offline`` (default; ``wandb sync`` later) or ``online``.
      workers: ``local`` backend: cells run at once; on a CPU each in a worker process pinned to
        its share of the cores (:func:`~plastix.experiments.workers.run_in_processes`), else in
        threads of this process (:func:`~plastix.experiments.runner.run_concurrently`).
    """

    backend: Backend = "local"
    address: str = ""
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0
    retries: int = 3
    devices: int = 0
    log: tuple[LogTarget, ...] = ()
    wandb_mode: Literal["offline", "online"] = "offline"
    workers: int = 1

    def __post_init__(self):
        if self.backend not in ("local", "ray"):
            raise ValueError(f"SweepOptions.backend: got {self.backend!r}, allowed values are ('local', 'ray')")
        bad = [x for x in self.log if x not in ("tensorboard", "wandb")]
        if bad:
            raise ValueError(f"SweepOptions.log: got {bad}, allowed values are ('tensorboard', 'wandb')")
        if self.workers < 1:
            raise ValueError(f"SweepOptions.workers: got {self.workers}, must be >= 1 (cells run at once)")
        if self.cpus_per_cell <= 0 or self.gpus_per_cell < 0 or self.retries < 0 or self.devices < 0:
            raise ValueError("SweepOptions: cpus_per_cell must be > 0; gpus_per_cell, retries and devices >= 0")


@dataclasses.dataclass(frozen=True)
class SweepCell:
    """One cell: ``labels`` (what distinguishes it), its directory name and its learner config."""

    id: str
    labels: dict
    config: Any  # RLConfig


# ------------------------------------------------------------------------------------------ grid


def _split_values(text: str) -> list[str]:
    """``a,[1,2],b`` → ``['a', '[1,2]', 'b']`` (commas inside brackets belong to the value)."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    values.append(current)
    return [v.strip() for v in values]


def parse_grid(items: tuple[str, ...]) -> dict[str, list[str]]:
    """``("a.b=1,2", "c=x")`` → ``{"a.b": ["1", "2"], "c": ["x"]}``.

    Raises:
      ValueError: an item without ``=``, an empty value, a field given twice, a repeated value.
    """
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise ValueError(f"--grid {item!r}: expected field=value1,value2,... (e.g. plasticity.method=none,redo)")
        values = _split_values(text)
        if any(v == "" for v in values):
            raise ValueError(f"--grid {item!r}: empty value")
        if key in grid:
            raise ValueError(f"--grid: field {key!r} is given twice")
        if len(set(values)) != len(values):
            raise ValueError(f"--grid {item!r}: a value is repeated")
        grid[key] = values
    return grid


def _hint_options(hint: Any) -> tuple:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def parse_value(hint: Any, text: str, field: str) -> Any:
    """``text`` as a value of type ``hint`` (bool, int, float, str, Literal, tuple, Optional).

    Raises:
      ValueError: naming ``field``, the value and what it must be.
    """
    try:
        return _parse_value(hint, text)
    except ValueError as e:
        raise ValueError(f"--grid {field}={text}: {e}") from None


def _parse_value(hint: Any, text: str) -> Any:
    """:func:`parse_value` whose error says only what the value must be."""
    errors = []
    for option in _hint_options(hint):
        if option is type(None):
            if text.lower() in ("none", "null"):
                return None
            continue
        origin = typing.get_origin(option)
        try:
            if dataclasses.is_dataclass(option):
                names = [f.name for f in dataclasses.fields(option)]
                raise ValueError(f"is a section, not a value: set one of its fields ({', '.join(names)})")
            if origin is Literal:
                choices = typing.get_args(option)
                for choice in choices:
                    if str(choice) == text or (not isinstance(choice, str) and _number(text) == choice):
                        return choice
                raise ValueError(f"allowed values are {choices}")
            if origin is tuple:
                args = typing.get_args(option)
                inner = args[0] if args else str
                body = text[1:-1] if text.startswith("[") and text.endswith("]") else text
                parts = [] if not body.strip() else _split_values(body)
                return tuple(_parse_value(inner, p) for p in parts)
            if option is bool:
                if text.lower() in ("true", "1", "yes"):
                    return True
                if text.lower() in ("false", "0", "no"):
                    return False
                raise ValueError("expected true or false")
            if option is int:
                return int(text)
            if option is float:
                return float(text)
            if option is str:
                return text
            raise ValueError(f"values of type {option} cannot be given on the command line")
        except ValueError as e:
            errors.append(str(e))
    raise ValueError("; ".join(dict.fromkeys(errors)) or "not a valid value")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _field_hint(kind: type, path: list[str], full: str) -> Any:
    hints = typing.get_type_hints(kind)
    names = [f.name for f in dataclasses.fields(kind) if f.init]
    if path[0] not in names:
        raise ValueError(f"--grid {full}: {kind.__name__} has no field {path[0]!r}; its fields are {names}")
    hint = hints[path[0]]
    if len(path) == 1:
        return hint
    inner = [o for o in _hint_options(hint) if dataclasses.is_dataclass(o)]
    if not inner:
        raise ValueError(f"--grid {full}: {kind.__name__}.{path[0]} is a value, not a section")
    return _field_hint(inner[0], path[1:], full)


def replace_path(config: Any, path: str, value: Any) -> Any:
    """``config`` with the dotted field ``path`` set to ``value`` (each level rebuilt and checked)."""
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: replace_path(getattr(config, head), rest, value)})


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", text)


def sweep_cell_id(labels: dict) -> str:
    """A cell's directory name: ``key-value`` pairs joined by ``_``, safe (``atari/pong`` → ``atari-pong``)."""
    return "_".join(f"{_safe(str(k))}-{_safe(str(v))}" for k, v in labels.items()) or "cell"


def expand(config: SweepConfig) -> list[SweepCell]:
    """Every cell of the sweep, in grid order; all configs are built (and checked) before any runs.

    Raises:
      ValueError: an unknown field, a bad value (naming the field and what it allows), or a grid
        whose points give the same cell twice under different settings.
    """
    from plastix.experiments.dormant import EXPERIMENTS, DormantExperimentConfig, SingleRunConfig, check_flags_used
    from plastix.experiments.marl import MARL_EXPERIMENTS
    from plastix.experiments.rl import RLConfig

    grid = parse_grid(config.grid)
    experiment = config.experiment
    single = experiment == "rl"
    aliases = ALIASES.get("marl" if experiment in MARL_EXPERIMENTS else experiment, {})
    exp_fields = set() if single else {f.name for f in dataclasses.fields(DormantExperimentConfig)}
    exp_fields -= {"name", "runs_dir", "seeds"}
    parsed: dict[str, tuple[str, list]] = {}  # key -> (where, values)
    for key, texts in grid.items():
        target = aliases.get(key, key)
        if target in exp_fields:
            hint = _field_hint(DormantExperimentConfig, [target], key)
            # a tuple field takes one value per cell: methods=none,redo → ("none",), ("redo",)
            parsed[key] = ("experiment:" + target, [parse_value(hint, t, key) for t in texts])
        else:
            if key == "seeds":
                raise ValueError(f"--grid {key}: set the number of seeds with --seeds (seeds are vmapped in a cell)")
            hint = _field_hint(RLConfig, key.split("."), key)
            parsed[key] = ("cell", [parse_value(hint, t, key) for t in texts])
    varied = [k for k, (_, values) in parsed.items() if len(values) > 1]
    read_by: dict[str, int] = {}
    cells: dict[str, SweepCell] = {}
    for point in itertools.product(*[values for _, values in parsed.values()]):
        chosen = dict(zip(parsed, point))
        exp_changes = {parsed[k][0].split(":", 1)[1]: v for k, v in chosen.items() if parsed[k][0] != "cell"}
        cell_changes = {k: v for k, v in chosen.items() if parsed[k][0] == "cell"}
        if single:
            base = [({"agent": RLConfig().agent, "method": "none"}, SingleRunConfig().cell)]
        else:
            exp_config = DormantExperimentConfig(seeds=config.seeds, **exp_changes)
            check_flags_used(experiment, exp_config)
            base = EXPERIMENTS[experiment][0](exp_config)
        for labels, cell in base:
            cell, skipped = _apply(cell, cell_changes)
            for key in cell_changes:
                read_by.setdefault(key, 0)
                read_by[key] += key not in skipped
            if config.seeds:
                cell = dataclasses.replace(cell, seeds=config.seeds)
            if single:
                labels = {"agent": cell.agent, "method": cell.plasticity.method}
            shown = dict(labels)
            for key in varied:
                target = aliases.get(key, key)
                own = EXPERIMENT_AXES.get(target) if target in exp_fields else (RL_AXES.get(key) if single else None)
                if own in labels:
                    continue  # the experiment labels its cells with this setting already
                value = chosen[key]
                shown[key] = value[0] if isinstance(value, tuple) and len(value) == 1 else value
            cid = sweep_cell_id(shown)
            if cid in cells and cells[cid].config != cell:
                raise ValueError(f"sweep: two grid points give cell {cid!r} different configs; grid {config.grid}")
            cells.setdefault(cid, SweepCell(cid, shown, cell))
    unread = [k for k, n in read_by.items() if n == 0]
    if unread:
        raise ValueError(
            f"--grid {', '.join(unread)}: no cell of this sweep reads it (e.g. a method's setting without that "
            "method, another agent's section): leave it out"
        )
    return list(cells.values())


def _apply(cell: Any, changes: dict[str, Any]) -> tuple[Any, set[str]]:
    """Set the dotted ``changes`` on ``cell``, except those it does not read (another method's or
    agent's settings, e.g. ``plasticity.redo.period`` on a ``none`` cell of a method grid).

    Returns ``(cell, keys skipped)``. Settings that decide what is read (``plasticity.method``,
    ``agent``) are applied first, whatever their order in the grid.
    """
    pending = dict(changes)
    progress = True
    while pending and progress:
        progress = False
        unused = cell.unused_settings()
        for key in list(pending):
            if any(key == u or key.startswith(u + ".") for u in unused):
                continue
            cell = replace_path(cell, key, pending.pop(key))
            progress = True
    return cell, set(pending)


# ------------------------------------------------------------------------------------------ status

STATUSES = ("pending", "running", "interrupted", "done", "failed")


def cell_path(root: str, cell: SweepCell | str) -> str:
    return os.path.join(root, "cells", cell if isinstance(cell, str) else cell.id)


def cell_status(path: str) -> tuple[str, str]:
    """``(status, detail)`` of a cell directory, read from the disk.

    ``done``: ``DONE`` exists. ``failed``: ``FAILED`` exists (its first line is the detail).
    ``running``: ``RUNNING`` names a live process (on another host: trusted). ``interrupted``: a
    checkpoint exists but nobody runs it (a re-run resumes it). ``pending``: nothing yet.
    """
    rundir = RunDir(path)
    if rundir.finished:
        return "done", ""
    if os.path.exists(os.path.join(path, "FAILED")):
        with open(os.path.join(path, "FAILED")) as f:
            return "failed", f.readline().strip()
    running = os.path.join(path, "RUNNING")
    if os.path.exists(running):
        try:
            with open(running) as f:
                who = json.load(f)
            alive = who.get("host") != socket.gethostname() or _pid_alive(int(who.get("pid", -1)))
        except (OSError, ValueError):
            who, alive = {}, False
        if alive:
            return "running", f"{who.get('host')} pid {who.get('pid')}, attempt {who.get('attempt', 1)}"
    if os.path.isdir(os.path.join(path, "checkpoint")):
        return "interrupted", "resumes from its last checkpoint"
    return "pending", ""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_table(root: str, cells: list[SweepCell]) -> pd.DataFrame:
    """One row per cell: ``cell``, its labels, ``status``, ``detail``."""
    rows = []
    for cell in cells:
        status, detail = cell_status(cell_path(root, cell))
        rows.append(
            {"cell": cell.id, **{k: str(v) for k, v in cell.labels.items()}, "status": status, "detail": detail}
        )
    return pd.DataFrame(rows)


def write_status(root: str, cells: list[SweepCell]) -> pd.DataFrame:
    """Write ``status.md`` (atomically) and return the table."""
    table = status_table(root, cells)
    counts = table.status.value_counts()
    lines = [
        f"# Sweep status ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        "",
        ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES),
        "",
        "| " + " | ".join(table.columns) + " |",
        "|" + "---|" * len(table.columns),
    ]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    write_text(os.path.join(root, "status.md"), "\n".join(lines) + "\n")
    return table


def load_cells(root: str) -> list[SweepCell]:
    """The cells recorded in ``<root>/cells.json``."""
    from plastix.experiments.rl import RLConfig
    from plastix.experiments.rundir import config_from_dict

    with open(os.path.join(root, "cells.json")) as f:
        record = json.load(f)
    return [SweepCell(cid, v["labels"], config_from_dict(RLConfig, v["config"])) for cid, v in record.items()]


# ------------------------------------------------------------------------------------------ running


def run_one_cell(
    root: str,
    cell: SweepCell,
    options: SweepOptions,
    progress: Callable[[int, int], None] | None = None,
    stop_after_chunks: int | None = None,
) -> str:
    """Run (or resume) one cell in ``<root>/cells/<id>``; the function both backends call.

    Appends the attempt to ``ATTEMPTS`` (host, pid, the chunk it resumes from), marks the cell
    ``RUNNING`` while it runs; on an error writes ``FAILED`` with the message and re-raises.
    Returns ``"done"`` (or ``"interrupted"`` with
    ``stop_after_chunks``, for tests).
    """
    from plastix.experiments.rl import run_cell

    path = cell_path(root, cell)
    if RunDir(path).finished:
        return "done"
    os.makedirs(path, exist_ok=True)
    failed = os.path.join(path, "FAILED")
    if os.path.exists(failed):
        os.remove(failed)
    write_json(os.path.join(path, "RUNNING"), record_attempt(path))
    loggers = open_loggers(root, cell, options)
    try:
        run_cell(
            cell.config,
            path,
            progress,
            stop_after_chunks=stop_after_chunks,
            devices=options.devices,
            on_rows=(lambda rows: [log.write(rows) for log in loggers]) if loggers else None,
        )
    except BaseException as e:
        with open(failed, "w") as f:
            f.write(f"{type(e).__name__}: {e}\n")
        raise
    finally:
        for log in loggers:
            log.close()
        if os.path.exists(os.path.join(path, "RUNNING")):
            os.remove(os.path.join(path, "RUNNING"))
    return "done" if RunDir(path).finished else "interrupted"


def record_attempt(path: str) -> dict:
    """Append this attempt at the cell in ``path`` to its ``ATTEMPTS`` file (one JSON line) and return it."""
    log = os.path.join(path, "ATTEMPTS")
    previous = 0
    if os.path.exists(log):
        with open(log) as f:
            previous = sum(1 for line in f if line.strip())
    rundir = RunDir(path)
    meta = rundir.checkpoint_meta() if os.path.isdir(rundir.file("checkpoint")) else None
    import jax

    entry = {
        "attempt": previous + 1,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.time(),
        "resumed_from_chunk": None if meta is None else meta.get("chunks_done"),
        "devices": f"{len(jax.local_devices())} {jax.default_backend()}",  # what the cell really ran on
    }
    with open(log, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry


def checked_cells(config: SweepConfig) -> list[SweepCell]:
    """Expand the grid and check every cell (nothing is written)."""
    cells = expand(config)
    from plastix.experiments.rl import build_train

    for cell in cells:
        build_train(dataclasses.replace(cell.config, seeds=1, seed=0, checkpoint_every=0))  # checks, no compile
    return cells


def prepare(config: SweepConfig, cells: list[SweepCell] | None = None) -> list[SweepCell]:
    """Expand the grid, check every cell (unless given ``cells``, :func:`checked_cells`), and create
    (or check) the sweep directory."""
    cells = checked_cells(config) if cells is None else cells
    RunDir(config.root).prepare(config, "sweep")
    write_json(
        os.path.join(config.root, "cells.json"),
        {c.id: {"labels": c.labels, "config": config_dict(c.config)} for c in cells},
    )
    return cells


def run_sweep(
    config: SweepConfig,
    options: SweepOptions = SweepOptions(),
    progress: Callable[[str, int, int, int, int], None] | None = None,
    on_status: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """Run every cell that is not done (resuming interrupted ones); returns the final status table.

    When every cell is done the sweep's report is written (``report.md`` and figures). A failed
    cell does not stop the others: it is marked ``failed`` with its error and the sweep goes on.

    Args:
      progress: ``progress(cell_id, index, n_cells, chunks_done, chunks_total)`` (local backend).
      on_status: called with the status table after each cell (and once at the start).
    """
    cells = checked_cells(config)
    root = config.root
    with RunDir(root).claim():  # one process per sweep directory
        prepare(config, cells)
        table = write_status(root, cells)
        if on_status:
            on_status(table)
        todo = [c for c in cells if cell_status(cell_path(root, c))[0] != "done"]
        if options.backend == "ray":
            from plastix.experiments.sweep_ray import run_on_ray

            run_on_ray(root, todo, options, lambda: on_status(write_status(root, cells)) if on_status else None)
        else:
            status_lock, stop = threading.Lock(), threading.Event()
            shown = (
                (lambda cell_id, index, done, total: progress(cell_id, index, len(cells), done, total))
                if progress
                else None
            )

            def cell_ended(job, result) -> None:
                with status_lock:
                    table = write_status(root, cells)
                    if on_status:
                        on_status(table)

            jobs = [(cells.index(cell), cell) for cell in todo]
            work = functools.partial(_sweep_job, root, options)
            try:
                run_in_processes(work, jobs, options.workers, stop, shown, cell_ended)
            except (KeyboardInterrupt, SystemExit):
                write_status(root, cells)
                raise
        table = write_status(root, cells)
        if (table.status == "done").all():
            from plastix.report.sweep import write_sweep_report

            write_sweep_report(root)
        return table


def _sweep_job(root: str, options: SweepOptions, job: tuple[int, SweepCell], stop, progress) -> None:
    """Run one cell of a local sweep (module-level: a worker process runs it). A cell's failure is
    recorded in its ``FAILED`` and does not stop the sweep; Ctrl-C (``stop``) does.

    Args:
      job: ``(index of the cell in the sweep, cell)``.
      stop: ``stop.is_set()`` ends the cell after its current chunk.
      progress: ``progress(cell_id, index, chunks_done, chunks_total)``.
    """
    index, cell = job
    shown = (lambda done, total: progress(cell.id, index, done, total)) if progress else None
    try:
        run_one_cell(root, cell, options, stopping_progress(stop, cell.id, shown))
    except (KeyboardInterrupt, SystemExit, Interrupted):
        raise
    except Exception:  # noqa: BLE001 - recorded in FAILED; the other cells still run
        pass


# ------------------------------------------------------------------------------------------ logging


def open_loggers(root: str, cell: SweepCell, options: SweepOptions) -> list:
    """The live loggers of ``options.log`` for one cell (see :mod:`plastix.report.live`)."""
    if not options.log:
        return []
    from plastix.report.live import open_logger

    return [open_logger(kind, root, cell, options) for kind in options.log]
