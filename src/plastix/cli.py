"""``plastix run | report | list``: the command-line front end (tyro subcommands).

``plastix run <experiment> --help`` documents every field of the experiment's config;
``plastix run rl`` reaches the whole learner config, e.g.::

    plastix run rl --agent dqn --env CartPole-v1 --plasticity.method redo --plasticity.redo.period 1000
    plastix run rl --agent sac --env Pendulum-v1 --diagnostics.stagnation-source update

A flag the chosen experiment, agent or method would not read (``--sac.hidden`` with
``--agent dqn``, ``--plasticity.reset.last-k`` with ``--plasticity.method redo``, ``--methods``
outside ``dqn-replay-ratio``) is an error, never silently ignored. The CLI only parses, shows
progress and prints the summary: a run started from Python (``supervised.run``,
``dormant.run``) writes the same files.
"""

import os
import sys
from typing import Annotated, Any, Literal, NamedTuple, Union

from plastix.experiments.marl import DESCRIPTIONS as MARL_DESCRIPTIONS

EXPERIMENTS = {
    "supervised": "Sokar et al. 2023 §3.1: dormant neurons under fixed vs shuffled labels, then fitting new targets",
    "dqn-dormant-growth": "dormant % over training for DQN and DrQ(ε) on MinAtar, per layer (Figs. 1/2)",
    "dqn-replay-ratio": "RR 0.25…2 × {none, ReDo, Reset, WD} on MinAtar: IQM return and dormant % (Fig. 10)",
    "redo-ablations": "ReDo selection (dormant/random/inverse/scheduled), τ and width ablations",
    "dormant-pruning": "prune the dormant neurons of a trained DQN: evaluation return unchanged",
    "sac-dormant": "SAC with and without ReDo (τ = 0): dormant % of actor vs critic",
    "rl": "one learner (DQN, DrQ(ε), SAC, VDN/QMIX/QPLEX) with every setting of its config: loop, plasticity, "
    "diagnostics",
    **MARL_DESCRIPTIONS,
}


class Command(NamedTuple):
    """What the command line asked for: ``run`` of an experiment with its config, ``report``, ``list``."""

    command: str
    experiment: str = ""
    config: Any = None


def _parser():
    """The tyro type of the whole command line (subcommands ``run <experiment>``, ``report``, ``list``)."""
    import tyro

    from plastix.experiments import dormant, supervised
    from plastix.experiments.rl import RLConfig

    def run_supervised(config: Annotated[supervised.SupervisedConfig, tyro.conf.arg(name="")]) -> Command:
        return Command("run", "supervised", config)

    def dormant_command(experiment: str):
        def run_dormant(config: Annotated[dormant.DormantExperimentConfig, tyro.conf.arg(name="")]) -> Command:
            return Command("run", experiment, config)

        return run_dormant

    def run_rl(
        cell: Annotated[RLConfig, tyro.conf.arg(name="")],
        name: str = "rl",
        runs_dir: str = "runs",
    ) -> Command:
        """Args:
        cell: the learner.
        name: run name; written to ``<runs_dir>/<name>``.
        runs_dir: parent directory of run directories.
        """
        return Command("run", "rl", dormant.SingleRunConfig(name, runs_dir, cell))

    def report(run_dir: tyro.conf.Positional[str]) -> Command:
        """Rewrite the figures and report.md of a finished run from its metrics.parquet, or
        aggregate a sweep directory (finished or not)."""
        return Command("report", config=run_dir)

    from plastix.experiments.sweep import NOT_SWEEPABLE, Backend, LogTarget, SweepConfig, SweepOptions

    sweepable = [n for n in dormant.EXPERIMENTS if n not in NOT_SWEEPABLE]

    def sweep(
        experiment: tyro.conf.Positional[Literal.__getitem__(tuple(n for n in EXPERIMENTS if n in sweepable))],
        grid: tuple[str, ...] = (),
        seeds: int = 0,
        name: str = "",
        runs_dir: str = "runs",
        backend: Backend = "local",
        address: str = "",
        cpus_per_cell: float = 1.0,
        gpus_per_cell: float = 0.0,
        retries: int = 3,
        devices: int = 0,
        log: tuple[LogTarget, ...] = (),
        wandb_mode: Literal["offline", "online"] = "offline",
        workers: int = 1,
    ) -> Command:
        """Run an experiment over a grid of settings × seeds, one resumable cell per setting.

        Args:
          experiment: the experiment whose cells the grid varies.
          grid: ``field=v1,v2`` items: an experiment field (``env``, ``scale``, ``methods``, ...),
            ``plasticity.method`` / ``loop.replay_ratio`` / ``agent`` (the experiment's own axes), or
            any dotted learner field (``dqn.optimizer.learning_rate``); the cells are the product.
          seeds: seeds per cell, vmapped (0 = the experiment's default).
          name: sweep name (default ``sweep-<experiment>``); written to ``<runs_dir>/<name>``.
          runs_dir: parent directory of run directories (a shared path for ``--backend ray``).
          backend: ``local`` (cells here, ``workers`` at a time) or ``ray`` (one task per cell; ``.[ray]`` extra).
          address: Ray cluster address (``auto`` = the ``ray start`` cluster of this node; empty = start one).
          cpus_per_cell: CPUs a cell's Ray task declares.
          gpus_per_cell: GPUs a cell's Ray task declares.
          retries: restarts of a cell whose Ray worker died (it resumes from its checkpoint).
          devices: local devices a cell's seeds are sharded over (0 = all).
          log: live logging of every chunk's metrics: ``tensorboard`` and/or ``wandb`` (``.[log]`` extra).
          wandb_mode: W&B mode (``offline``: sync later with ``wandb sync``).
          workers: ``local`` backend: cells run at once (on a CPU each in a worker process pinned to
            its share of the cores; results do not depend on it; 2 fills a 2-core CPU better than
            1, at twice the memory).
        """
        config = SweepConfig(experiment, grid, seeds, name, runs_dir)
        options = SweepOptions(
            backend, address, cpus_per_cell, gpus_per_cell, retries, devices, log, wandb_mode, workers
        )
        return Command("sweep", experiment, (config, options))

    def list_experiments() -> Command:
        """List the experiments."""
        return Command("list")

    constructors = {"supervised": run_supervised, "rl": run_rl}
    constructors.update({name: dormant_command(name) for name in dormant.EXPERIMENTS if name != "rl"})
    run_choices = [
        Annotated[
            Command,
            tyro.conf.subcommand(
                name,
                constructor=constructors[name],
                description=text,
            ),
        ]
        for name, text in EXPERIMENTS.items()
    ]
    one_of = Union.__getitem__  # a union of a computed number of subcommands
    runs = one_of(tuple(run_choices))
    return one_of(
        (
            Annotated[runs, tyro.conf.subcommand("run", description="run (or resume) an experiment")],
            Annotated[Command, tyro.conf.subcommand("sweep", constructor=sweep)],
            Annotated[Command, tyro.conf.subcommand("report", constructor=report)],
            Annotated[Command, tyro.conf.subcommand("list", constructor=list_experiments)],
        )
    )


def _given_flags(argv: list[str]) -> list[str]:
    """Dotted field names of the ``--flags`` in ``argv`` (``--plasticity.redo.period`` → ``plasticity.redo.period``)."""
    return [a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--") and len(a) > 2]


def check_unused_flags(experiment: str, config: Any, argv: list[str]) -> None:
    """Refuse flags the experiment would not read, even when given their default value.

    Raises:
      ValueError: naming the flag and why it is not read.
    """
    from plastix.experiments import dormant

    if experiment == "rl":
        why = f"agent={config.cell.agent!r} / method={config.cell.plasticity.method!r}"
        unused = {name: why for name in config.cell.unused_settings()}
    elif isinstance(config, dormant.DormantExperimentConfig):
        unused = {
            name: f"experiment {experiment}" for name, users in dormant.ONLY_FOR.items() if experiment not in users
        }
    else:
        unused = {}
    for flag in _given_flags(argv):
        for name, why in unused.items():
            if flag == name or flag.startswith(name + "."):
                raise ValueError(f"--{flag.replace('_', '-')} is not read by {why}: leave it out")


def _console():
    from rich.console import Console

    return Console()


def _progress_bar(console, unit: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        console=console,
    )


def _cell_progress(bar, width: int):
    """``progress(cell_id, index, n_cells, done, total)``: one bar per cell of an experiment or sweep."""
    tasks: dict[str, int] = {}

    def progress(cid, index, n_cells, done, total):
        if cid not in tasks:
            tasks[cid] = bar.add_task(f"cell {index + 1}/{n_cells} {cid[:width]:{width}s}", total=total)
        bar.update(tasks[cid], completed=done)

    return progress


def print_summary(title: str, columns: list[tuple[str, str, float]], rows: list[dict], console) -> None:
    """One table: ``columns`` are ``(header, key, scale)``; estimates print as value and CI, others as text."""
    from rich.table import Table

    from plastix.report import Estimate

    table = Table(title=title)
    for header, _, _ in columns:
        table.add_column(header, justify="left" if header in ("setting", "network") else "right")
    for r in rows:
        cells = []
        for _, key, k in columns:
            value = r.get(key)
            if isinstance(value, Estimate | tuple):  # NaN: a column this setting does not log
                nan = value[0] != value[0]
                cells.append("–" if nan else f"{value[0] * k:.1f}\n[dim]{value[1] * k:.1f}–{value[2] * k:.1f}[/dim]")
            else:
                cells.append("–" if value is None else str(value))
        table.add_row(*cells)
    console.print(table)


def _supervised_summary(df, console) -> None:
    from plastix.experiments import supervised

    rows = supervised.summary(df)
    names = {"train": "trained, {}", "fit": "new targets ← {}"}
    for r in rows:
        r["network"] = names[r["phase"]].format(r["setting"])
    columns = [
        ("network", "network", 1),
        ("dormant %", "dormant_fraction", 100),
        ("overlap", "overlap", 1),
        ("train acc. %", "train_accuracy", 100),
        ("test acc. %", "test_accuracy", 100),
    ]
    print_summary("final epoch: mean and 95% CI over seeds", columns, rows, console)


def _rl_summary(experiment: str, df, console) -> None:
    from plastix.experiments import dormant

    rows = dormant.summary(experiment, df)
    extra = [k for k in rows[0] if k.endswith("dormant") or k.startswith("return") or k.startswith("pruned")]
    columns = [("setting", "setting", 1), ("IQM return", "iqm_return", 1)]
    columns += [(k, k, 100 if "dormant" in k else 1) for k in extra]
    print_summary("final: IQM return and mean dormant %, 95% CIs over seeds", columns, rows, console)


def run(experiment: str, config: Any) -> int:
    """Run (or resume) ``experiment`` with a progress bar, then print its summary."""
    from plastix.experiments import dormant, supervised
    from plastix.experiments.rundir import RunDir

    console = _console()
    name = getattr(config, "name", "") or experiment
    path = os.path.join(config.runs_dir, name)
    was_finished = RunDir(path).finished
    scale = f" ({config.scale})" if hasattr(config, "scale") else ""
    console.print(f"[bold]plastix[/bold] {experiment}{scale} → {path}")
    if experiment == "supervised":
        with _progress_bar(console, "epochs") as bar:
            tasks = {
                "train": bar.add_task("phase 1: fixed vs shuffled labels", total=config.epochs),
                "fit": bar.add_task("phase 2: fit new random labels   ", total=config.fit_epochs),
            }
            df = supervised.run(config, lambda phase, done, total: bar.update(tasks[phase], completed=done))
    else:
        with _progress_bar(console, "chunks") as bar:
            df = dormant.run(experiment, config, _cell_progress(bar, 28))
    if was_finished:
        console.print(f"{path} is finished; showing its results (delete the directory to run again)")
    else:
        console.print(f"wrote {path}/metrics.parquet, report.md and figures")
    if experiment == "supervised":
        _supervised_summary(df, console)
    else:
        _rl_summary(experiment, df, console)
    return 0


def report(run_dir: str) -> int:
    """Rewrite the figures and ``report.md`` of the finished run in ``run_dir``."""
    import json

    from plastix.experiments import dormant, supervised
    from plastix.experiments.rundir import RunDir, config_from_dict

    rundir = RunDir(run_dir.rstrip("/"))
    if not os.path.isdir(rundir.path):
        print(f"plastix report: {run_dir} is not a directory", file=sys.stderr)
        return 2
    if os.path.exists(rundir.file("cells.json")) and _saved_experiment(rundir) == "sweep":
        return sweep_report(rundir.path)
    if not rundir.finished:
        print(
            f"plastix report: {run_dir} is not a finished run (no DONE marker); run the same `plastix run` "
            "command again to resume it, then report",
            file=sys.stderr,
        )
        return 2
    try:
        with open(rundir.file("config.json")) as f:
            fields = json.load(f)
    except FileNotFoundError as e:
        print(f"plastix report: {run_dir} is not a finished run ({e.filename} missing)", file=sys.stderr)
        return 2
    experiment = fields.pop("experiment", None) or _legacy_experiment(rundir)
    df = rundir.metrics()
    console = _console()
    if experiment == "supervised":
        config = config_from_dict(supervised.SupervisedConfig, fields)
        files = supervised.write_report(config, df, rundir.path)
        console.print("wrote " + ", ".join(files))
        _supervised_summary(df, console)
        return 0
    if experiment not in dormant.EXPERIMENTS:
        print(f"plastix report: {run_dir} holds a run of unknown experiment {experiment!r}", file=sys.stderr)
        return 2
    kind = dormant.SingleRunConfig if experiment == "rl" else dormant.DormantExperimentConfig
    config = config_from_dict(kind, fields)
    files = dormant.write_report(experiment, config, df, rundir.path)
    console.print("wrote " + ", ".join(files))
    _rl_summary(experiment, df, console)
    return 0


def _saved_experiment(rundir) -> str | None:
    import json

    try:
        with open(rundir.file("config.json")) as f:
            return json.load(f).get("experiment")
    except (OSError, ValueError):
        return None


def sweep_report(root: str) -> int:
    """``plastix report <sweep dir>``: aggregate the done cells, list the missing ones."""
    from plastix.report.sweep import write_sweep_report

    console = _console()
    files = write_sweep_report(root)
    console.print("wrote " + ", ".join(files))
    _print_status(root, console)
    return 0


def _print_status(root: str, console) -> None:
    from rich.table import Table

    from plastix.experiments.sweep import load_cells, status_table

    table = status_table(root, load_cells(root))
    out = Table(title=f"sweep {root}: " + ", ".join(f"{n} {s}" for s, n in table.status.value_counts().items()))
    for column in table.columns:
        out.add_column(column)
    colors = {"done": "green", "failed": "red", "running": "yellow", "interrupted": "yellow"}
    for row in table.itertuples(index=False):
        values = [str(v) for v in row]
        status = row.status
        values[list(table.columns).index("status")] = f"[{colors.get(status, 'white')}]{status}[/]"
        out.add_row(*values)
    console.print(out)


def run_sweep(config, options) -> int:
    """``plastix sweep``: run every cell not done yet, with a progress bar per cell; 1 if a cell failed."""
    from plastix.experiments.sweep import run_sweep as run_cells

    console = _console()
    console.print(f"[bold]plastix sweep[/bold] {config.experiment} → {config.root} (backend {options.backend})")
    with _progress_bar(console, "chunks") as bar:

        def on_status(table):  # the Ray backend's progress: one line per finished cell
            if options.backend == "ray":
                counts = table.status.value_counts()
                console.print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(table)} cells")

        table = run_cells(config, options, _cell_progress(bar, 40), on_status)
    _print_status(config.root, console)
    if (table.status == "done").all():
        console.print(f"every cell is done: {config.root}/report.md")
        return 0
    failed = table[table.status == "failed"]
    for row in failed.itertuples():
        console.print(f"[red]{row.cell}[/red]: {row.detail} (details: {config.root}/cells/{row.cell}/FAILED)")
    console.print("re-run the same command to retry failed cells and resume the others")
    return 1


def _legacy_experiment(rundir) -> str:
    """Runs written before config.json named their experiment: an ``EXPERIMENT`` file, or supervised."""
    if os.path.exists(rundir.file("EXPERIMENT")):
        with open(rundir.file("EXPERIMENT")) as f:
            return f.read().strip()
    return "supervised"


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache for runs (a study's cells and a resumed run then
    reuse compiled programs; on a 2-core CPU compilation is most of a small cell's time).

    Directory: ``path`` if given, else ``$PLASTIX_COMPILATION_CACHE``, default
    ``$XDG_CACHE_HOME/plastix/jax`` (``~/.cache``); an empty string turns the cache off. A cache
    directory already configured (e.g. by the test set-up) is left as it is. Returns the directory
    in use, or ``None``.
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    if path is None:
        default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "plastix", "jax")
        path = os.environ.get("PLASTIX_COMPILATION_CACHE", default)
    if not path:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path


def prepare_process() -> str | None:
    """Settings of a process that trains: :func:`enable_compilation_cache` (returned) and
    :func:`~plastix.jit.collect_garbage_less_often`."""
    from plastix.jit import collect_garbage_less_often

    collect_garbage_less_often()
    return enable_compilation_cache()


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit status (0 ok, 1 run failed, 2 bad input,
    130 interrupted by Ctrl-C)."""
    import tyro

    from plastix.experiments.rundir import CorruptRunError, NonFiniteError, RunInUseError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command = tyro.cli(_parser(), args=argv, prog="plastix", description=__doc__.split("\n\n")[0])
    except SystemExit as e:  # tyro printed the usage or the error
        return e.code if isinstance(e.code, int) else 2
    except ValueError as e:  # a config check tyro does not catch itself (the outermost config)
        print(f"plastix: error: {e}", file=sys.stderr)
        return 2
    try:
        if command.command == "list":
            for name, text in EXPERIMENTS.items():
                print(f"{name:20s} {text}")
            return 0
        if command.command == "report":
            try:
                return report(command.config)
            except CorruptRunError as e:
                print(f"plastix report: {e}", file=sys.stderr)
                return 2
        if command.command == "sweep":
            prepare_process()
            return run_sweep(*command.config)
        check_unused_flags(command.experiment, command.config, argv)
        prepare_process()
        if command.experiment == "rl":  # before anything starts JAX (warns only if asked for, too late)
            from plastix.jit import xla_cpu_pool_threads, xla_cpu_threads

            cell = command.config.cell
            if cell.xla_cpu_threads is not None or not xla_cpu_pool_threads():
                xla_cpu_threads(cell.cpu_threads())
        return run(command.experiment, command.config)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"plastix: error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteError, CorruptRunError, RunInUseError) as e:
        print(f"plastix: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # read-only directory, full disk, ...: one line naming the file
        print(f"plastix: error: {e.strerror or e} ({e.filename or 'runs directory'})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("plastix: interrupted; run the same command again to resume from the last checkpoints", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
