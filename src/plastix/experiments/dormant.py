"""The dormant-neuron RL experiments of Sokar et al. (2023), on MinAtar by default.

Each experiment is a list of *cells* (one :class:`~plastix.experiments.rl.RLConfig` each, all seeds
vmapped), run one after another in ``<runs_dir>/<name>/<cell>``, merged into ``metrics.parquet``,
and summarized in figures and a markdown report with IQM and 95% stratified bootstrap CIs
(rliable) of the final evaluation return across seeds.

The default game is SpaceInvaders-MinAtar. Breakout-MinAtar is a poor probe of dormancy: its
frames barely change under a random policy, so about 30% of the dense units are τ-dormant before
any update (input-determined, not learned); Asterix and SpaceInvaders start near 0–10%.

``--scale small`` (default) fits a 2-core CPU in about 15 minutes (dqn-replay-ratio); at 5k env steps it shows ReDo's
effect but not yet the growth of dormant neurons, which on SpaceInvaders appears from about 15k
env steps at RR ≥ 1 (``--env-steps 30000``; about 21 minutes per seed on 2 cores for RR {0.25, 1, 2}
× {none, ReDo}). ``--scale paper`` is the paper's protocol moved to MinAtar (5 seeds × 1M env steps per
cell): a GPU job. Any Atari game runs with ``--env atari/<rom>`` (ale-py; a GPU job beyond smoke
tests: Nature-CNN updates take tens of ms each on a CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import threading
from collections.abc import Callable
from typing import Literal

import pandas as pd

from plastix.agents import DQNConfig, LoopConfig, SACConfig, drq_epsilon_config
from plastix.experiments.marl import DESCRIPTIONS as MARL_DESCRIPTIONS
from plastix.experiments.marl import (
    MARL_EXPERIMENTS,
    MARL_METHOD_CHOICES,
    MIXER_CHOICES,
    inactive_methods,
    marl_cells,
    report_section,
)
from plastix.experiments.rl import (
    RLConfig,
    build_agent,
    build_train,
    device_memory,
    groups,
    run_bytes,
    run_cell,
    run_cell_group,
    split_to_fit,
)
from plastix.experiments.rundir import RunDir, check_run_name
from plastix.experiments.runner import complete, stopping_progress
from plastix.experiments.workers import run_in_processes
from plastix.interventions import OptimizerConfig, PlasticityConfig, ReDoConfig, ResetConfig
from plastix.interventions.base import check_choice
from plastix.metrics import DiagnosticsConfig

Scale = Literal["small", "paper"]
METHODS = ("none", "redo", "reset", "weight_decay")
DEFAULT_ENV = "SpaceInvaders-MinAtar"


@dataclasses.dataclass(frozen=True)
class DormantExperimentConfig:
    """Settings shared by the dormant-neuron RL experiments.

    Attributes:
      name: run name (default: the experiment's name); written to ``<runs_dir>/<name>``.
      runs_dir: parent directory of run directories.
      scale: ``small`` (CPU, minutes) or ``paper`` (GPU; the paper's protocol: on MinAtar for
        the dormant-neuron experiments; each MARL experiment's length is in ``plastix list``).
      env: environment (``Breakout-MinAtar``, ``Asterix-MinAtar``, ``Freeway-MinAtar``,
        ``SpaceInvaders-MinAtar``, an Atari game ``atari/<rom>`` such as ``atari/pong`` (needs
        ale-py), or a brax task for ``sac-dormant``); empty = the experiment's default.
      seeds: seeds per cell (0 = the scale's default: 2 small, 5 paper).
      env_steps: learning env steps per seed (0 = the scale's default). The MARL experiments
        need whole periods per task and say which lengths fit otherwise.
      vmap_seeds: run the seeds of a cell together with ``vmap``.
      vmap_methods: run cells that differ only in their plasticity method as one compiled program,
        methods and seeds vmapped together (:func:`plastix.experiments.rl.run_cell_group`; KNIFE and
        plasticity injection, which add parameters, form a group of their own; CBP, which acts
        after every update, too). Compiles once per group
        instead of once per method and steps small networks far faster; memory (replay buffers
        above all) grows with the number of methods. ``None`` (default): on, and at ``paper``
        scale in groups whose runs hold at most half of the device's memory (a paper-scale SMAX
        run holds 1.57 GB: 30–40 runs on an H200); ``True``: whole groups whatever their size.
      workers: programs (groups of cells or cells) run at once; results do not depend on it. On a
        CPU each runs in a worker process pinned to its share of the cores
        (:mod:`plastix.experiments.workers`), elsewhere in threads of this process. 0 (default): 2
        on a CPU at small scale, else 1 (:func:`program_workers`).
      tau: τ of the dormant threshold reported (and used by ReDo).
      replay_ratios: replay ratios of ``dqn-replay-ratio`` (a subset runs fewer cells).
      methods: interventions of ``dqn-replay-ratio`` (default all of ``none``, ``redo``, ``reset``,
        ``weight_decay``) and of the MARL experiments (default ``none``, ``redo``, ``reset``; also
        ``regrama``, ``reborn``, ``cbp``, ``injection``, ``knife`` and the KNIFE ablations ``knife-all``,
        ``knife-dormant``, ``knife-random``, ``knife-no-compensation``, ``knife-no-freeze``,
        ``knife-copy``; ``all`` = every one of them).
      mixers: value factorizations of the MARL experiments (``matrix-sequential``,
        ``predator-prey``), from ``vdn``, ``qmix``, ``qplex`` (default all three).
    """

    name: str = ""
    runs_dir: str = "runs"
    scale: Scale = "small"
    env: str = ""
    seeds: int = 0
    env_steps: int = 0
    vmap_seeds: bool = True
    vmap_methods: bool | None = None
    workers: int = 0
    tau: float = 0.1
    replay_ratios: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    methods: tuple[str, ...] = ()
    mixers: tuple[str, ...] = ()

    def __post_init__(self):
        check_choice("DormantExperimentConfig.scale", self.scale, ("small", "paper"))
        if self.workers < 0:
            raise ValueError(f"DormantExperimentConfig.workers: got {self.workers}, must be >= 0 (0 = automatic)")
        for field in ("seeds", "env_steps"):
            if getattr(self, field) < 0:
                got = getattr(self, field)
                raise ValueError(f"DormantExperimentConfig.{field}: got {got}, must be >= 0 (0 = the scale's default)")
        if not self.replay_ratios or any(r <= 0 for r in self.replay_ratios):
            raise ValueError(
                f"DormantExperimentConfig.replay_ratios: got {self.replay_ratios}, must be positive numbers"
            )
        allowed = tuple(dict.fromkeys(METHODS + MARL_METHOD_CHOICES))
        bad = [m for m in self.methods if m not in allowed]
        if bad:
            raise ValueError(f"DormantExperimentConfig.methods: got {self.methods}, allowed values are {allowed}")
        bad = [m for m in self.mixers if m not in MIXER_CHOICES]
        if bad:
            raise ValueError(f"DormantExperimentConfig.mixers: got {self.mixers}, allowed values are {MIXER_CHOICES}")
        for field in ("methods", "replay_ratios", "mixers"):
            values = getattr(self, field)
            if len(set(values)) != len(values):
                raise ValueError(f"DormantExperimentConfig.{field}: duplicate entries in {values}")
        if not 0 <= self.tau < 1:
            raise ValueError(f"DormantExperimentConfig.tau must be in [0, 1), got {self.tau}")
        check_run_name(self.name, "DormantExperimentConfig.name", allow_empty=True)


@dataclasses.dataclass(frozen=True)
class SingleRunConfig:
    """``plastix run rl``: one learner on one environment with every setting of its config.

    Attributes:
      name: run name; written to ``<runs_dir>/<name>`` (one cell, ``<name>/agent-…_method-…``).
      runs_dir: parent directory of run directories.
      cell: the learner, loop, plasticity method and diagnostics (:class:`RLConfig`).
    """

    name: str = "rl"
    runs_dir: str = "runs"
    cell: RLConfig = RLConfig()

    def __post_init__(self):
        check_run_name(self.name, "SingleRunConfig.name")

    @property
    def tau(self) -> float:
        return self.cell.diagnostics.tau

    @property
    def scale(self) -> str:
        return "custom"


def single_cells(config: SingleRunConfig) -> list[tuple[dict, RLConfig]]:
    """``rl``: the one cell of a :class:`SingleRunConfig`."""
    return [({"agent": config.cell.agent, "method": config.cell.plasticity.method}, config.cell)]


ONLY_FOR = {
    "replay_ratios": ("dqn-replay-ratio",),
    "methods": ("dqn-replay-ratio", *MARL_EXPERIMENTS),
    "mixers": MARL_EXPERIMENTS,
}
"""Fields read by some experiments only: setting them for another experiment is an error."""


def check_flags_used(experiment: str, config: DormantExperimentConfig) -> None:
    """Refuse settings ``experiment`` would ignore (e.g. ``methods`` for ``sac-dormant``).

    Raises:
      ValueError: naming the field and the experiments that read it.
    """
    if experiment not in EXPERIMENTS or experiment == "rl":
        raise ValueError(f"experiment: got {experiment!r}, allowed values are {tuple(EXPERIMENTS)}")
    default = DormantExperimentConfig()
    for field, users in ONLY_FOR.items():
        if experiment not in users and getattr(config, field) != getattr(default, field):
            raise ValueError(
                f"DormantExperimentConfig.{field} is read only by {', '.join(users)}; {experiment} would ignore "
                f"it (got {getattr(config, field)}): leave it out"
            )


def _paper(config: DormantExperimentConfig) -> bool:
    return config.scale == "paper"


def _atari(config: DormantExperimentConfig) -> bool:
    return config.env.startswith("atari/")


def dqn_loop(config: DormantExperimentConfig, replay_ratio: float = 0.25, n_step: int = 1) -> LoopConfig:
    """The loop of a DQN cell at this scale.

    paper: 1M env steps (the paper's 10M frames are 2.5M agent steps), 20k warm-up, 1M buffer,
    batch 32, F = 1,000 updates, 10 evaluations of 8 episodes per 100k env steps. On Atari
    (``--env atari/<game>``) the replay stores single 84×84 frames (7 kB per transition; the stacks
    are rebuilt when sampling), so Dopamine's 1M-transition buffer is 7 GB per seed.
    small: 5k env steps, 1k warm-up, batch 32, F = 250 updates.
    """
    if _paper(config):
        steps = config.env_steps or 1_000_000
        return LoopConfig(
            env_steps=steps,
            replay_ratio=replay_ratio,
            warmup_steps=20_000,
            buffer_size=1_000_000,
            batch_size=32,
            n_step=n_step,
            period=1_000,
            eval_every=max(1, int(100 * replay_ratio)),
            eval_envs=8,
            eval_steps=5_000 if _atari(config) else 1_000,
        )
    steps = config.env_steps or 5_000
    return LoopConfig(
        env_steps=steps,
        replay_ratio=replay_ratio,
        warmup_steps=1_000,
        buffer_size=10_000,
        batch_size=32,
        n_step=n_step,
        period=250,
        eval_every=max(1, int(8 * replay_ratio)),
        eval_envs=4,
        eval_steps=500,
    )


def dqn_agent(config: DormantExperimentConfig, **changes) -> DQNConfig:
    """DQN at this scale (paper: Dopamine's Adam 6.25e-5, target every 2,000 updates, ε over 250k steps)."""
    if _paper(config):
        base = DQNConfig()
    else:
        base = DQNConfig(
            optimizer=OptimizerConfig("adam", 1e-4, eps=1.5e-4), target_update_period=500, epsilon_decay_steps=2_500
        )
    return dataclasses.replace(base, **changes)


def plasticity(config: DormantExperimentConfig, method: str, **redo) -> PlasticityConfig:
    """The paper's baselines at this scale: ReDo (at the diagnostics' τ unless ``tau`` is given;
    every F: paper 1,000 updates), Reset of the last layer (paper: every 100k updates), weight
    decay 1e-5."""
    period = 1_000 if _paper(config) else 250
    settings = {
        "none": {},
        "redo": {"redo": ReDoConfig(**{"period": period, **redo})},
        "reset": {"reset": ResetConfig(1, 100_000 if _paper(config) else 2_500)},
        "weight_decay": {"weight_decay": 1e-5},
    }
    if method not in settings:
        raise ValueError(f"DormantExperimentConfig.methods: got {method!r}, allowed values are {METHODS}")
    return PlasticityConfig(method, **settings[method])


def _cell(config: DormantExperimentConfig, **kw) -> RLConfig:
    seeds = config.seeds or (5 if _paper(config) else 2)
    kw.setdefault("env", config.env or DEFAULT_ENV)
    return RLConfig(seeds=seeds, vmap_seeds=config.vmap_seeds, diagnostics=DiagnosticsConfig(tau=config.tau), **kw)


# ------------------------------------------------------------------------------------------ cells


def replay_ratio_cells(config: DormantExperimentConfig) -> list[tuple[dict, RLConfig]]:
    """``dqn-replay-ratio``: RR ∈ {0.25, 0.5, 1, 2} × {none, ReDo, Reset, weight decay} (Figure 10)."""
    cells = []
    for rr in config.replay_ratios:
        for method in config.methods or METHODS:
            cells.append(
                (
                    {"rr": rr, "method": method},
                    _cell(
                        config, loop=dqn_loop(config, rr), dqn=dqn_agent(config), plasticity=plasticity(config, method)
                    ),
                )
            )
    return cells


def growth_cells(config: DormantExperimentConfig) -> list[tuple[dict, RLConfig]]:
    """``dqn-dormant-growth``: DQN (RR 0.25) and DrQ(ε) (RR 1, n = 10, random shifts) without intervention."""
    drq = drq_epsilon_config(augment_shift=4 if _atari(config) else 1)  # 4 px of 84; 1 of 10
    drq_loop = dataclasses.replace(dqn_loop(config, 1.0, n_step=10), warmup_steps=1_600 if _paper(config) else 1_000)
    return [
        ({"agent": "dqn"}, _cell(config, loop=dqn_loop(config, 0.25), dqn=dqn_agent(config))),
        ({"agent": "drq"}, _cell(config, agent="drq", loop=drq_loop, dqn=drq)),
    ]


def ablation_cells(config: DormantExperimentConfig) -> list[tuple[dict, RLConfig]]:
    """``redo-ablations`` at RR 1: selection (dormant / random / inverse / scheduled), τ ∈ {0, 0.025, 0.1},
    and width ×1 / ×2 / ×4 with and without ReDo."""
    loop = dqn_loop(config, 1.0)
    total_updates = loop.env_steps
    cells = []
    for selection in ("dormant", "random", "inverse", "scheduled"):
        p = plasticity(config, "redo", selection=selection, schedule_steps=total_updates)
        cells.append(
            (
                {"group": "selection", "variant": selection},
                _cell(config, loop=loop, dqn=dqn_agent(config), plasticity=p),
            )
        )
    for tau in (0.0, 0.025):
        p = plasticity(config, "redo", tau=tau)
        cells.append(
            ({"group": "tau", "variant": f"tau={tau}"}, _cell(config, loop=loop, dqn=dqn_agent(config), plasticity=p))
        )
    for width in (1, 2, 4):
        for method in ("none", "redo"):
            if width == 1 and method == "redo":
                continue  # the same cell as selection=dormant
            cells.append(
                (
                    {"group": "width", "variant": f"x{width} {method}"},
                    _cell(
                        config,
                        loop=loop,
                        dqn=dqn_agent(config, width_multiplier=float(width)),
                        plasticity=plasticity(config, method),
                    ),
                )
            )
    return cells


def pruning_cells(config: DormantExperimentConfig) -> list[tuple[dict, RLConfig]]:
    """``dormant-pruning``: one DQN cell at RR 1 (many dormant neurons), pruned after training."""
    return [({"agent": "dqn"}, _cell(config, loop=dqn_loop(config, 1.0), dqn=dqn_agent(config)))]


def sac_cells(config: DormantExperimentConfig) -> list[tuple[dict, RLConfig]]:
    """``sac-dormant``: SAC with and without ReDo (τ = 0; paper: every 200k updates), actor vs critic.

    Dormant fractions are reported at ``config.tau`` (0.1); ReDo recycles only τ = 0 neurons.

    paper: brax/hopper (pass ``--env brax/halfcheetah`` etc.), 1M env steps, RR 1, 10k warm-up,
    batch 256, F = 10,000 updates. small: Pendulum-v1 (gymnax), 10k env steps, hidden 2×64,
    F = 500, ReDo every 2,500 updates.
    """
    paper = _paper(config)
    env = config.env or ("brax/hopper" if paper else "Pendulum-v1")
    if paper:
        loop = LoopConfig(
            env_steps=config.env_steps or 1_000_000,
            replay_ratio=1,
            warmup_steps=10_000,
            buffer_size=1_000_000,
            batch_size=256,
            period=10_000,
            eval_every=10,
            eval_envs=8,
        )
        sac, redo_period = SACConfig(), 200_000
    else:
        loop = LoopConfig(
            env_steps=config.env_steps or 10_000,
            replay_ratio=1,
            warmup_steps=1_000,
            buffer_size=20_000,
            batch_size=128,
            period=500,
            eval_every=4,
            eval_envs=4,
        )
        sac, redo_period = SACConfig(hidden=(64, 64), optimizer=OptimizerConfig("adam", 1e-3)), 2_500
    cells = []
    for method in ("none", "redo"):
        p = PlasticityConfig(method, **({"redo": ReDoConfig(tau=0.0, period=redo_period)} if method == "redo" else {}))
        cells.append(({"method": method}, _cell(config, env=env, agent="sac", loop=loop, sac=sac, plasticity=p)))
    return cells


EXPERIMENTS: dict[str, tuple[Callable, str]] = {
    "dqn-dormant-growth": (growth_cells, "dormant % over training for DQN and DrQ(ε), per layer (Figs. 1/2)"),
    "dqn-replay-ratio": (replay_ratio_cells, "RR 0.25…2 × {none, ReDo, Reset, WD}: return and dormant % (Fig. 10)"),
    "redo-ablations": (ablation_cells, "ReDo selection, τ and width ablations"),
    "dormant-pruning": (pruning_cells, "prune the dormant neurons of a trained DQN: return unchanged"),
    "sac-dormant": (sac_cells, "SAC with and without ReDo: dormant % of actor vs critic"),
    "rl": (single_cells, "one learner, every setting of its config from the command line"),
    **{name: (functools.partial(marl_cells, name), text) for name, text in MARL_DESCRIPTIONS.items()},
}


def cell_id(labels: dict) -> str:
    return "_".join(f"{k}-{v}" for k, v in labels.items()).replace(" ", "").replace("=", "")


def run(
    experiment: str,
    config: DormantExperimentConfig | SingleRunConfig,
    progress: Callable[[str, int, int, int, int], None] | None = None,
) -> pd.DataFrame:
    """Run every cell of ``experiment`` (resuming killed cells); returns the merged metrics.

    A run started here ends exactly like ``plastix run <experiment>``: the merged
    ``metrics.parquet``, ``DONE``, the figures and ``report.md`` in ``<runs_dir>/<name>``.

    Args:
      progress: ``progress(cell_id, cell_index, n_cells, chunks_done, chunks_total)``.
    """
    build, _ = EXPERIMENTS[experiment]
    root = os.path.join(config.runs_dir, config.name or experiment)
    if isinstance(config, DormantExperimentConfig):
        check_flags_used(experiment, config)
    elif experiment != "rl":
        raise ValueError(f"experiment {experiment!r} takes a DormantExperimentConfig, got {type(config).__name__}")
    cells = build(config)  # every check of every cell passes before anything is written
    for _, cell in cells:
        build_train(cell)
    rundir = RunDir(root)
    with rundir.claim():  # one process per run directory
        rundir.prepare(config, experiment)
        if rundir.finished:
            df = rundir.metrics()
            if not os.path.exists(os.path.join(root, "report.md")):  # e.g. the report failed after DONE
                write_report(experiment, config, df, root)
            return df
        _record_cells(root, cells)

        jobs = largest_first(run_order(experiment, config, cells), cells)
        workers = program_workers(config)
        shown = (lambda label, i, done, total: progress(label, i, len(cells), done, total)) if progress else None
        work = functools.partial(_run_job, experiment, root, cells)
        frames: dict[int, pd.DataFrame] = {}
        stop = threading.Event()  # Ctrl-C: every running program stops after its current chunk
        for done in run_in_processes(work, jobs, workers, stop, shown):
            frames.update(done)
        frames = [frames[m] for m in range(len(cells))]
        df = pd.concat(frames, ignore_index=True)
        complete(rundir, df, lambda df, path: write_report(experiment, config, df, path))
        return df


def _run_settings(df: pd.DataFrame) -> str:
    """The settings a run's table holds, e.g. ``14 settings: qmix none, qmix redo, …``."""
    settings = list(dict.fromkeys(df["setting"].astype(str)))
    return f"{len(settings)} setting{'s' * (len(settings) != 1)}: " + ", ".join(settings)


def _run_job(
    experiment: str,
    root: str,
    cells: list[tuple[dict, RLConfig]],
    job: tuple[int, list[int], str],
    stop,
    progress: Callable[[str, int, int, int], None] | None,
) -> dict[int, pd.DataFrame]:
    """Run one job of :func:`run_order` (a cell, or a group of cells as one program) under ``root``;
    returns each cell's rows with its labels. Module-level, so a worker process can run it
    (:func:`~plastix.experiments.workers.run_in_processes`).

    Args:
      stop: ``stop.is_set()`` ends the job after its current chunk (:class:`Interrupted`).
      progress: ``progress(label, first cell index, chunks_done, chunks_total)``.
    """
    i, members, label = job
    paths = [os.path.join(root, cell_id(cells[m][0])) for m in members]
    shown = (lambda done, total: progress(label, i, done, total)) if progress else None
    cb = stopping_progress(stop, label, shown)
    if len(members) > 1:
        group_dir = os.path.join(root, "groups", _group_id([cell_id(cells[m][0]) for m in members]))
        results = run_cell_group([cells[m][1] for m in members], paths, group_dir, cb)
    else:
        results = [run_cell(cells[i][1], paths[0], cb, keep_final=experiment == "dormant-pruning")]
    frames = {}
    for m, df in zip(members, results):
        labels, cell = cells[m]
        if experiment == "dormant-pruning":
            df = _with_pruning(cell, paths[0], df)
        for k, v in labels.items():
            df[k] = v
        df["env"] = cell.env
        frames[m] = df
    return frames


def program_workers(config: DormantExperimentConfig | SingleRunConfig) -> int:
    """Programs (groups or cells) run at once: ``config.workers``, or when 0 two on a CPU backend
    with two or more cores at small scale (one XLA:CPU program keeps two cores only half busy; in
    two processes pinned to one core each, the 10-seed stagnant-neuron study ran 12–15% faster than
    in two threads and ~25% faster than one program at a time) and one elsewhere (accelerators
    not measured)."""
    workers = getattr(config, "workers", 1)
    if workers:
        return workers
    import jax

    small = getattr(config, "scale", "small") == "small"
    return 2 if small and jax.default_backend() == "cpu" and (os.cpu_count() or 1) >= 2 else 1


GROUP_MEMORY_SHARE = 0.5
"""At paper scale a group of methods run as one program may hold at most this share of the device's
memory in its runs' carries (replays above all); the rest is for XLA's temporaries and a
checkpoint's host copy. Larger groups are split (:func:`~plastix.experiments.rl.split_to_fit`)."""


def run_order(
    experiment: str, config: DormantExperimentConfig | SingleRunConfig, cells: list[tuple[dict, RLConfig]]
) -> list[tuple[int, list[int], str]]:
    """How the cells run: ``(first cell index, cell indices run together, progress label)`` in order.

    With ``vmap_methods`` (see :class:`DormantExperimentConfig`) cells that differ only in their
    plasticity method form one group (:func:`plastix.experiments.rl.groups`); by default at paper
    scale a group whose runs' carries would take more than :data:`GROUP_MEMORY_SHARE` of the
    device's memory is split into parts that fit. Otherwise, and for ``dormant-pruning`` (its cells
    keep their final networks) or cells that run their seeds one by one, every cell runs alone.
    """
    wanted = getattr(config, "vmap_methods", False)
    fit = wanted is None and getattr(config, "scale", "small") == "paper"  # small runs always fit
    if wanted is False or experiment == "dormant-pruning":
        return [(i, [i], cell_id(labels)) for i, (labels, _) in enumerate(cells)]
    memory = device_memory() if fit else None
    order = []
    for members in groups([cell for _, cell in cells]):
        if len(members) > 1 and not cells[members[0]][1].vmap_seeds:
            order += [(m, [m], cell_id(cells[m][0])) for m in members]
            continue
        parts = [members]
        if memory and len(members) > 1:  # a group's runs together in half the device's memory
            first = cells[members[0]][1]
            parts = split_to_fit(members, run_bytes(first) * first.seeds, GROUP_MEMORY_SHARE * memory)
        for part in parts:
            names = [cell_id(cells[m][0]) for m in part]
            label = names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}"
            order.append((part[0], part, label))
    return order


def largest_first(
    jobs: list[tuple[int, list[int], str]], cells: list[tuple[dict, RLConfig]]
) -> list[tuple[int, list[int], str]]:
    """``jobs`` (:func:`run_order`) in the order the workers take them: the most cells first, and
    among jobs with as many cells the one whose network has the most neuron layers (all its
    topologies together), so the longest programs start first and none starts alone at the end.

    A job's cost is not known before it compiles; cells and network size are a proxy. Measured on
    the three-mixer ``matrix-sequential --methods all --seeds 10`` study (2-core CPU, costs of the
    nine programs on one core in ``benchmarks/RESULTS.md``): QPLEX's programs (16 neuron layers)
    cost 1.8–3.1× VDN's (2 layers) with as many runs, and ordering by cells alone started QPLEX's
    KNIFE program (the longest) third, after VDN's.
    """

    def neuron_layers(job) -> int:
        _, _, topologies = build_agent(cells[job[0]][1])
        return sum(len(topology.layers) for topology in topologies.values())

    return sorted(jobs, key=lambda job: (-len(job[1]), -neuron_layers(job)))


def _group_id(names: list[str]) -> str:
    """Directory name of a group of cells: the first cell's id, their count and a digest of all ids."""
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:10]
    return f"{names[0]}+{len(names) - 1}-{digest}"


def _record_cells(root: str, cells: list[tuple[dict, RLConfig]]) -> None:
    """Write ``cells.json``: what each cell really runs (e.g. ``vmap_seeds`` after the XLA:CPU
    workaround of ``sac-dormant``), next to the experiment's own ``config.json``."""
    from plastix.experiments.rundir import config_dict, write_json

    record = {cell_id(labels): {"labels": labels, "config": config_dict(cell)} for labels, cell in cells}
    write_json(os.path.join(root, "cells.json"), record, sort_keys=True)


def _with_pruning(cell: RLConfig, path: str, df: pd.DataFrame) -> pd.DataFrame:
    from plastix.experiments.pruning import pruning_evaluation

    target = os.path.join(path, "pruning.parquet")
    if not os.path.exists(target):
        pruning_evaluation(cell, path).to_parquet(target)
    table = pd.read_parquet(target)
    return df.merge(table, on="seed", how="left")


# ------------------------------------------------------------------------------------------ report


def _labels(experiment: str) -> list[str]:
    return {
        "dqn-replay-ratio": ["rr", "method"],
        "dqn-dormant-growth": ["agent"],
        "redo-ablations": ["group", "variant"],
        "dormant-pruning": ["agent"],
        "sac-dormant": ["method"],
        "rl": ["agent", "method"],
        **{name: ["mixer", "method"] for name in MARL_EXPERIMENTS},
    }[experiment]


def _networks(df: pd.DataFrame) -> list[str]:
    return [
        c[: -len("/dormant_fraction")] for c in df.columns if c.endswith("/dormant_fraction") and "/layer/" not in c
    ]


def with_settings(experiment: str, df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with a ``setting`` column: the experiment's label values joined by spaces."""
    return df.assign(setting=df[_labels(experiment)].astype(str).agg(" ".join, axis=1))


def summary(experiment: str, df: pd.DataFrame) -> list[dict]:
    """Per setting: IQM final evaluation return [95% CI] and mean final dormant fraction per network [CI]."""
    from plastix.report import final_values, iqm_ci, mean_ci

    by = _labels(experiment)
    df = with_settings(experiment, df)
    finals = final_values(df, "eval_return", ["setting"])
    iqm = iqm_ci({s: g["eval_return"].to_numpy()[:, None] for s, g in finals.groupby("setting", sort=False)})
    rows = []
    for setting, part in df.groupby("setting", sort=False):
        row = {"setting": setting, **{k: part[k].iloc[0] for k in by}, "iqm_return": iqm[setting]}
        last = part[part.period == part.period.max()]
        for net in _networks(df):
            row[f"{net} dormant"] = mean_ci(last[f"{net}/dormant_fraction"].to_numpy())
        if "return_pruned" in part:
            seeds = part.drop_duplicates("seed")
            row["return unpruned"] = mean_ci(seeds["return_unpruned"].to_numpy())
            row["return pruned"] = mean_ci(seeds["return_pruned"].to_numpy())
            row["pruned − unpruned"] = mean_ci((seeds["return_pruned"] - seeds["return_unpruned"]).to_numpy())
        rows.append(row)
    return rows


def write_report(
    experiment: str, config: DormantExperimentConfig | SingleRunConfig, df: pd.DataFrame, path: str
) -> list[str]:
    """Figures (PNG, curves with 95% CIs over seeds) and ``report.md`` with the IQM table."""
    import matplotlib.pyplot as plt

    from plastix.report import few_seeds_note, figure_legend, format_estimate, plot_curves, save_figure

    by = _labels(experiment)
    df = with_settings(experiment, df)
    nets = _networks(df)
    files = []
    panel_key = by[0] if len(by) > 1 else None
    panels = list(dict.fromkeys(df[panel_key])) if panel_key else [None]
    hue = by[-1]
    hues = sorted(df[hue].astype(str).unique())  # one style per value in every panel: one legend per figure
    for metric, label, scale in [(f"{n}/dormant_fraction", f"{n}: τ={config.tau}-dormant (%)", 100) for n in nets] + [
        ("eval_return", "evaluation return", 1)
    ]:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            part = df if panel is None else df[df[panel_key] == panel]
            part = part.dropna(subset=[metric])
            plot_curves(
                ax, part.assign(**{hue: part[hue].astype(str)}), metric, hue=hue, x="env_steps", scale=scale, order=hues
            )
            ax.set_title(f"{panel_key} = {panel}" if panel is not None else experiment, fontsize=10)
            ax.set_ylabel(label)
        figure_legend(fig, axes, title=hue, fontsize=8)
        name = metric.replace("/", "_")
        files.append(save_figure(fig, os.path.join(path, f"{name}.png")))
    layer_cols = [c for c in df.columns if "/layer/" in c and c.endswith("/dormant_fraction")]
    if layer_cols:
        settings = list(dict.fromkeys(df["setting"]))[:4]
        layers = [c.replace("/dormant_fraction", "").replace("/layer/", ": ") for c in layer_cols]
        fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.4), squeeze=False)
        for ax, setting in zip(axes[0], settings):
            part = df[df.setting == setting]
            long = part.melt(
                id_vars=["seed", "env_steps"], value_vars=layer_cols, var_name="layer", value_name="dormant"
            )
            long["layer"] = long["layer"].str.replace("/dormant_fraction", "").str.replace("/layer/", ": ")
            plot_curves(ax, long, "dormant", hue="layer", x="env_steps", scale=100, order=layers)
            ax.set_title(setting, fontsize=10)
            ax.set_ylabel("dormant (%) per layer")
        figure_legend(fig, axes, title="layer")
        files.append(save_figure(fig, os.path.join(path, "dormant_per_layer.png")))
    rows = summary(experiment, df)
    marl_files, marl_lines = report_section(experiment, df, path) if experiment in MARL_EXPERIMENTS else ([], [])
    files += marl_files
    if experiment == "dqn-replay-ratio":
        fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4))
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            rr = [r["rr"] for r in mine]
            for ax, key, k in ((axes[0], "iqm_return", 1), (axes[1], f"{nets[0]} dormant", 100)):
                mid = [r[key][0] * k for r in mine]
                err = [[(r[key][0] - r[key][1]) * k for r in mine], [(r[key][2] - r[key][0]) * k for r in mine]]
                ax.errorbar(rr, mid, yerr=err, marker="o", capsize=3, label=method)
        for ax, title in zip(axes, ("IQM final return (95% CI)", "final dormant % (95% CI)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("replay ratio")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        figure_legend(fig, axes, title="method", fontsize=8)
        files.append(save_figure(fig, os.path.join(path, "replay_ratio.png")))
    extra = [k for k in rows[0] if k not in ("setting", "iqm_return", *by)]
    lines = [
        f"# {experiment} ({config.scale} scale, env {df['env'].iloc[0]}, {df.seed.nunique()} seeds per setting)",
        "",
        f"Default: {EXPERIMENTS[experiment][1]}. This run: {_run_settings(df)}.",
        "",
        "Final evaluation return: IQM with 95% stratified bootstrap CI across seeds (rliable). Dormant: final "
        f"τ = {config.tau} dormant fraction, mean [95% bootstrap CI] across seeds.",
        "",
        "| " + " | ".join(by + ["IQM return"] + extra) + " |",
        "|" + "---|" * (len(by) + 1 + len(extra)),
    ]
    for r in rows:
        cells = [str(r[k]) for k in by] + [format_estimate(r["iqm_return"])]
        cells += [format_estimate(r[k], percent="dormant" in k) for k in extra]
        lines.append("| " + " | ".join(cells) + " |")
    n_min = min((r[k].n for r in rows for k in ["iqm_return", *extra] if r[k].n > 0), default=0)
    if experiment not in MARL_EXPERIMENTS:  # the MARL section says it itself
        marl_lines = inactive_methods(df, list(dict.fromkeys(df["setting"])))
    lines += ["", *marl_lines, few_seeds_note(n_min)]
    lines += [*[f"![{os.path.basename(f)}]({os.path.basename(f)})" for f in files], ""]
    report = os.path.join(path, "report.md")
    with open(report, "w") as f:
        f.write("\n".join(lines))
    return files + [report]
