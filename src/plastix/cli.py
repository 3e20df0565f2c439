"""``plastix run | report | list``: the command-line front end.

``plastix run supervised --help`` documents every field of the experiment's config.
"""

from __future__ import annotations

import sys

EXPERIMENTS = {
    "supervised": "Sokar et al. 2023 §3.1: dormant neurons under fixed vs shuffled labels, then fitting new targets",
    "dqn-dormant-growth": "dormant % over training for DQN and DrQ(ε) on MinAtar, per layer (Figs. 1/2)",
    "dqn-replay-ratio": "RR 0.25…2 × {none, ReDo, Reset, WD} on MinAtar: IQM return and dormant % (Fig. 10)",
    "redo-ablations": "ReDo selection (dormant/random/inverse/scheduled), τ and width ablations",
    "dormant-pruning": "prune the dormant neurons of a trained DQN: evaluation return unchanged",
    "sac-dormant": "SAC with and without ReDo (τ = 0): dormant % of actor vs critic",
}

USAGE = """usage: plastix <command> [args]

commands:
  run <experiment> [flags]   run (or resume) an experiment; `plastix run <experiment> --help` lists flags
  report <run_dir>           rewrite figures and report.md of a finished run from its metrics.parquet
  list                       list the experiments
"""


def _console():
    from rich.console import Console

    return Console()


def _print_summary(rows: list[dict], console) -> None:
    from rich.table import Table

    table = Table(title="final epoch: mean and 95% CI over seeds")
    for col in ("network", "dormant %", "overlap", "train acc. %", "test acc. %"):
        table.add_column(col, no_wrap=True, justify="right" if "%" in col or col == "overlap" else "left")
    names = {"train": "trained, {}", "fit": "new targets\n← {}"}
    for r in rows:
        fmt = lambda s, k=100, d=1: f"{s[0] * k:.{d}f}\n[dim]{s[1] * k:.{d}f}–{s[2] * k:.{d}f}[/dim]"  # noqa: E731
        table.add_row(
            names[r["phase"]].format(r["setting"]),
            fmt(r["dormant_fraction"]),
            fmt(r["overlap"], 1, 2) if "overlap" in r else "–",
            fmt(r["train_accuracy"]),
            fmt(r["test_accuracy"]) if "test_accuracy" in r else "–",
        )
    console.print(table)


def run_supervised(args: list[str]) -> int:
    import tyro
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from plastix.experiments import supervised

    config = tyro.cli(
        supervised.SupervisedConfig,
        args=args,
        prog="plastix run supervised",
        description=supervised.__doc__.split("\n\n")[0],
    )
    console = _console()
    path = f"{config.runs_dir}/{config.name}"
    console.print(f"[bold]plastix[/bold] supervised → {path}")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        tasks = {
            "train": bar.add_task("phase 1: fixed vs shuffled labels", total=config.epochs),
            "fit": bar.add_task("phase 2: fit new random labels   ", total=config.fit_epochs),
        }

        def progress(phase, done, total):
            bar.update(tasks[phase], completed=done)

        df = supervised.run(config, progress)
        for task in tasks.values():
            bar.update(task, completed=bar.tasks[task].total)
    from plastix.experiments.rundir import RunDir

    rundir = RunDir(path)
    if not rundir.finished:
        files = supervised.write_report(config, df, path)
        rundir.finish(df)
        console.print("wrote " + ", ".join([f"{path}/metrics.parquet"] + files))
    else:
        console.print(f"{path} is finished; showing its results (delete the directory to run again)")
    _print_summary(supervised.summary(df), console)
    return 0


def _print_rl_summary(experiment: str, df, console) -> None:
    from rich.table import Table

    from plastix.experiments import dormant

    rows = dormant.summary(experiment, df)
    table = Table(title="final: IQM return and mean dormant %, 95% CIs over seeds")
    extra = [k for k in rows[0] if k.endswith("dormant") or k.startswith("return") or k.startswith("pruned")]
    for col in ["setting", "IQM return"] + extra:
        table.add_column(col, justify="left" if col == "setting" else "right")
    fmt = lambda s, k=1: f"{s[0] * k:.1f} [dim]{s[1] * k:.1f}–{s[2] * k:.1f}[/dim]"  # noqa: E731
    for r in rows:
        table.add_row(r["setting"], fmt(r["iqm_return"]), *[fmt(r[k], 100 if "dormant" in k else 1) for k in extra])
    console.print(table)


def run_rl(experiment: str, args: list[str]) -> int:
    import os

    import tyro
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from plastix.experiments import dormant
    from plastix.experiments.rundir import RunDir

    config = tyro.cli(
        dormant.DormantExperimentConfig,
        args=args,
        prog=f"plastix run {experiment}",
        description=f"{EXPERIMENTS[experiment]}. " + dormant.__doc__.split("\n\n")[2],
    )
    path = os.path.join(config.runs_dir, config.name or experiment)
    console = _console()
    console.print(f"[bold]plastix[/bold] {experiment} ({config.scale}) → {path}")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(cid, index, n_cells, done, total):
            if cid not in tasks:
                tasks[cid] = bar.add_task(f"cell {index + 1}/{n_cells} {cid:28s}", total=total)
            bar.update(tasks[cid], completed=done)

        df = dormant.run(experiment, config, progress)
    rundir = RunDir(path)
    if not rundir.finished:
        with open(rundir.file("EXPERIMENT"), "w") as f:
            f.write(experiment + "\n")
        files = dormant.write_report(experiment, config, df, path)
        rundir.finish(df)
        console.print("wrote " + ", ".join([f"{path}/metrics.parquet"] + files))
    else:
        console.print(f"{path} is finished; showing its results (delete the directory to run again)")
    _print_rl_summary(experiment, df, console)
    return 0


def report(args: list[str]) -> int:
    import json

    from plastix.experiments import supervised
    from plastix.experiments.rundir import RunDir

    if len(args) != 1:
        print("usage: plastix report <run_dir>", file=sys.stderr)
        return 2
    rundir = RunDir(args[0].rstrip("/"))
    import os

    if not os.path.isdir(rundir.path):
        print(f"plastix report: {args[0]} is not a directory", file=sys.stderr)
        return 2
    if not rundir.finished:
        print(
            f"plastix report: {args[0]} is not a finished run (no DONE marker); run the same `plastix run` "
            "command again to resume it, then report",
            file=sys.stderr,
        )
        return 2

    if os.path.exists(rundir.file("EXPERIMENT")):
        from plastix.experiments import dormant

        with open(rundir.file("EXPERIMENT")) as f:
            experiment = f.read().strip()
        with open(rundir.file("config.json")) as f:
            fields = json.load(f)
        fields.pop("experiment", None)
        config = dormant.DormantExperimentConfig(**fields)
        df = rundir.metrics()
        files = dormant.write_report(experiment, config, df, rundir.path)
        console = _console()
        console.print("wrote " + ", ".join(files))
        _print_rl_summary(experiment, df, console)
        return 0
    try:
        with open(rundir.file("config.json")) as f:
            config = supervised.SupervisedConfig(**json.load(f))
        df = rundir.metrics()
    except FileNotFoundError as e:
        print(f"plastix report: {args[0]} is not a finished run ({e.filename} missing)", file=sys.stderr)
        return 2
    files = supervised.write_report(config, df, rundir.path)
    console = _console()
    console.print("wrote " + ", ".join(files))
    _print_summary(supervised.summary(df), console)
    return 0


def main(argv: list[str] | None = None) -> int:
    from plastix.experiments.rundir import CorruptRunError, NonFiniteError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "list":
        for name, text in EXPERIMENTS.items():
            print(f"{name:20s} {text}")
        return 0
    if command == "report":
        try:
            return report(rest)
        except (CorruptRunError, ValueError, KeyError) as e:
            print(f"plastix report: {e}", file=sys.stderr)
            return 2
    if command == "run":
        if not rest or rest[0] not in EXPERIMENTS:
            got = rest[0] if rest else "nothing"
            print(f"plastix run: got {got!r}, allowed experiments are {tuple(EXPERIMENTS)}", file=sys.stderr)
            return 2
        try:
            if rest[0] == "supervised":
                return run_supervised(rest[1:])
            return run_rl(rest[0], rest[1:])
        except (ValueError, FileNotFoundError) as e:
            print(f"plastix: error: {e}", file=sys.stderr)
            return 2
        except (NonFiniteError, CorruptRunError) as e:
            print(f"plastix: {e}", file=sys.stderr)
            return 1
        except OSError as e:  # read-only directory, full disk, ...: one line naming the file
            print(f"plastix: error: {e.strerror or e} ({e.filename or 'runs directory'})", file=sys.stderr)
            return 1
    print(f"plastix: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
