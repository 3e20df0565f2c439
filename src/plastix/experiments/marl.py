"""The multi-agent experiments (stagnant-neuron paper): value factorization under task switches.

``matrix-sequential``: the five sequential matrix games (:mod:`plastix.envs.matrix_games`), one
after the other, then the first again; every evaluation plays every game, so the report shows the
return per task around each switch and how well task 1 is learned again at the end.
``predator-prey``: relative overgeneralization (:mod:`plastix.envs.predator_prey`) with a −2
miscoordination penalty and a 200-step time limit.

Each runs VDN, QMIX and QPLEX (``mixers``) × interventions ``none``, ``redo``, ``reset``
(``methods``; the stagnant-neuron study adds ``regrama``, ``injection`` (plasticity injection of
the output heads), ``knife`` and the KNIFE ablations, ``--methods all`` runs every one of them;
KNIFE and injection act at each task switch, or every quarter of the run without tasks); the
diagnostics give stagnant, dormant and GraMa fractions of the agent network
and of the mixer separately (``marl/group/agent/...``, ``marl/group/mixer/...``) and together.
The cells are :class:`~plastix.experiments.rl.RLConfig` s like every other RL experiment (same
runner, checkpoints and resume); this module only chooses their settings and adds the MARL part
of the report (task-switch markers, agent vs mixer neuron ratios, return per task).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pandas as pd

from plastix.agents import LoopConfig
from plastix.agents.marl import MARLConfig
from plastix.envs.matrix_games import sequential_schedule
from plastix.experiments.rl import RLConfig
from plastix.interventions import (
    CBPConfig,
    InjectionConfig,
    KnifeConfig,
    PlasticityConfig,
    ReBornConfig,
    ReDoConfig,
    ResetConfig,
)
from plastix.metrics import DiagnosticsConfig

SMAX_ENVS = {"smax-task-drift": "smax-drift", "smax-sequential": "smax-sequential", "smax-3s-vs-5z": "smax/3s_vs_5z"}
MIXER_CHOICES = ("vdn", "qmix", "qplex")
MARL_METHODS = ("none", "redo", "reset")
RATIOS = {"stagnant": "stagnant_fraction", "dormant": "dormant_fraction", "GraMa": "grama_fraction"}
OVERLAPS = {
    "stagnant∩dormant": "overlap_stagnant_dormant",
    "stagnant∩GraMa": "overlap_stagnant_grama",
    "dormant∩GraMa": "overlap_dormant_grama",
}
SMAX_GPU_ESTIMATE = (  # benchmarks/RESULTS.md, "GPU, second call": QMIX's paper cell measured in parts
    "≈ 3.5 min per mixer on one H200, its methods' 15 runs as one program (estimated from QMIX's measured "
    "parts: 9 s per 160k env steps of 8 seeds, 1.34× the time at 32 runs, ~50 s compilation, one checkpoint)"
)
DESCRIPTIONS = {
    "matrix-sequential": "VDN/QMIX/QPLEX × {none, ReDo, Reset} on 5 sequential matrix games, then game 1 again "
    "(small: ~70 s cold on 2 CPU cores; --scale paper: 5 seeds × 115.2k env steps per cell, GPU time not yet measured)",
    "predator-prey": "VDN/QMIX/QPLEX × {none, ReDo, Reset} on predator-prey with miscoordination penalty −2 "
    "(--scale paper: 5 seeds × 960k env steps per cell, GPU time not yet measured)",
    "smax-task-drift": "VDN/QMIX/QPLEX × {none, ReDo, Reset} on SMAX 5v5 with the unit-type mix drifting "
    "protoss → zerg-like (small: ~3.5 min cold on a 2-core CPU; --scale paper: 5 seeds × 1.6M env steps per cell, "
    f"≈ 1.6 h on a 2-core CPU from the measured 12.6k env-steps/s, {SMAX_GPU_ESTIMATE})",
    "smax-sequential": "VDN/QMIX/QPLEX × {none, ReDo, Reset} on SMAX 5v5, five fixed unit compositions in sequence "
    f"(--scale paper: 5 seeds × 1.6M env steps per cell, ≈ 1.6 h on a 2-core CPU, {SMAX_GPU_ESTIMATE})",
    "smax-3s-vs-5z": "VDN/QMIX/QPLEX × {none, ReDo, Reset} on SMAX 3s_vs_5z (--scale paper: 5 seeds × 1.92M env "
    f"steps per cell, ≈ 1.1 h on a 2-core CPU from the measured 22k env-steps/s, {SMAX_GPU_ESTIMATE})",
}
"""One line per MARL experiment (``plastix list`` and the reports)."""
MARL_EXPERIMENTS = tuple(DESCRIPTIONS)


def _period(paper: bool, experiment: str) -> int:
    return 50 if experiment == "matrix-sequential" and not paper else 200 if paper else 20


def _whole_periods(asked: int, default: int, unit: int, split: str) -> int:
    """``asked`` env steps if they split into ``split``, whole ``unit`` s of env steps (when 0:
    ``default`` rounded down to whole units, at least one): a run never silently does another
    length than the one asked for.

    Raises:
      ValueError: naming ``--env-steps`` and the nearest lengths that split.
    """
    if not asked:
        return max(unit, default // unit * unit)
    if asked % unit == 0:
        return asked
    lower = asked // unit * unit
    nearest = f"{lower:,} or {lower + unit:,}" if lower else f"{unit:,}"
    raise ValueError(
        f"DormantExperimentConfig.env_steps (--env-steps): {asked:,} env steps do not split into {split}; "
        f"use a multiple of {unit:,}, e.g. {nearest}"
    )


STUDY_METHODS = ("none", "redo", "regrama", "reborn", "cbp", "reset", "injection", "knife")
"""The stagnant-neuron study's comparison (``--methods all`` adds the KNIFE ablations)."""
KNIFE_ABLATIONS = {
    "knife-all": {"selection": "all"},  # layer-level injection (paper Fig. 7a)
    "knife-dormant": {"selection": "dormant"},
    "knife-random": {"selection": "random"},
    "knife-no-compensation": {"compensation": False},
    "knife-no-freeze": {"freeze_knowledge": False},
    "knife-copy": {"active_init": "copy"},
}
MARL_METHOD_CHOICES = STUDY_METHODS + tuple(KNIFE_ABLATIONS) + ("all",)
KNIFE_SLOTS = 2
"""Injection slots per neuron in the experiments (a neuron can be injected at two switches)."""


def expand_methods(methods: tuple[str, ...]) -> tuple[str, ...]:
    """``methods`` with ``all`` expanded to the study and its ablations; empty: none, ReDo, Reset."""
    if not methods:
        return MARL_METHODS
    out = []
    for m in methods:
        out += list(STUDY_METHODS + tuple(KNIFE_ABLATIONS)) if m == "all" else [m]
    return tuple(dict.fromkeys(out))


def marl_plasticity(method: str, period: int, every: int, tasks: bool = False, mixer: str = "qmix") -> PlasticityConfig:
    """The intervention of one MARL cell.

    ReDo / ReGraMa on every neuron layer of agent network and mixer every ``period`` updates (at
    the diagnostics' thresholds); ReBorn on the mixer's ReLU layers every ``period`` updates (on the
    agent network's for VDN, which has no mixer neurons); CBP on every neuron layer after every
    update (maturity ``period`` updates, replacement rate 1e-4); a reset of the last layer of each
    network every ``every`` updates; KNIFE (stagnant neurons, ``KNIFE_SLOTS`` slots) and plasticity
    injection (output heads) at each task switch, or every ``every`` updates when the run has no
    task schedule.
    """
    trigger = "task_switch" if tasks else "period"
    if method == "reborn":
        return PlasticityConfig(
            "reborn", reborn=ReBornConfig(period=period, groups=() if mixer == "vdn" else ("mixer",))
        )
    if method == "cbp":
        return PlasticityConfig("cbp", cbp=CBPConfig(maturity=period))
    if method == "redo":
        return PlasticityConfig("redo", redo=ReDoConfig(period=period))
    if method == "regrama":
        return PlasticityConfig("redo", redo=ReDoConfig(period=period, score="grama"))
    if method == "reset":
        return PlasticityConfig("reset", reset=ResetConfig(1, every))
    if method == "injection":
        return PlasticityConfig("injection", trigger, injection=InjectionConfig(period=every, slots=KNIFE_SLOTS))
    if method == "knife" or method in KNIFE_ABLATIONS:
        knife = KnifeConfig(slots=KNIFE_SLOTS, period=every, **KNIFE_ABLATIONS.get(method, {}))
        return PlasticityConfig("knife", trigger, knife=knife)
    if method == "none":
        return PlasticityConfig()
    raise ValueError(
        f"DormantExperimentConfig.methods: got {method!r}, allowed values for MARL are {MARL_METHOD_CHOICES}"
    )


def matrix_loop(config, paper: bool) -> LoopConfig:
    """8 envs (8 one-step episodes per vector step), one update per vector step (PyMARL2: one
    update per 8 episodes). small: 2,000 env steps per task (250 updates), F = 50 updates;
    paper: 19,200 env steps per task (20,000 rounded down to whole periods), F = 200."""
    period = _period(paper, "matrix-sequential")
    steps_per_period = period * 8
    tasks = len(sequential_schedule(1).segments)  # five games, then the first again
    split = f"{tasks} tasks of whole periods ({period} updates = {steps_per_period:,} env steps each)"
    total = _whole_periods(config.env_steps, tasks * (20_000 if paper else 2_000), tasks * steps_per_period, split)
    per_task = total // tasks
    schedule = sequential_schedule(per_task)
    return LoopConfig(
        env_steps=schedule.total_steps,
        num_envs=8,
        replay_ratio=1 / 8,
        warmup_steps=256,
        buffer_size=5_000,
        batch_size=128 if paper else 32,
        period=period,
        eval_every=per_task // steps_per_period,
        eval_envs=8,
        scoring_batch=128 if paper else 64,
        tasks=schedule.segments,
    )


def predator_prey_loop(config, paper: bool) -> LoopConfig:
    """8 envs of 200-step episodes, one update (a batch of episodes) per 8 episodes collected
    (PyMARL2). small: 160,000 env steps (100 updates: shows the pipeline and the neuron ratios
    in minutes on a CPU, far too short to learn the task), batch 8 episodes, F = 20 updates;
    paper: 960,000 env steps (WQMIX's t_max of 1M, rounded down to whole periods), batch 32, F = 200 updates."""
    period = _period(paper, "predator-prey")
    per_period = period * 1_600
    split = f"whole periods ({period} updates = {per_period:,} env steps each)"
    steps = _whole_periods(config.env_steps, 1_000_000 if paper else 160_000, per_period, split)
    return LoopConfig(
        env_steps=steps,
        num_envs=8,
        replay_ratio=1 / 1_600,
        warmup_steps=1_600,
        buffer_size=200 * (5_000 if paper else 64) + 8,
        batch_size=32 if paper else 8,
        period=period,
        eval_every=max(1, steps // per_period // 10),
        eval_envs=8,
        scoring_batch=32 if paper else 8,
    )


def smax_loop(config, paper: bool, tasks: int) -> LoopConfig:
    """8 envs of ≤ 100-step battles, one update per 8 episodes' worth of env steps (RR 1/800).
    small: 80,000 env steps (100 updates: the pipeline and the neuron ratios in minutes on a CPU,
    far too short to learn), batch 8 episodes, F = 20 updates; paper: 2M env steps rounded down to
    whole periods (1.6M with 5 tasks, 1.92M without), batch 32, F = 200. With tasks, the run is
    split evenly between them (whole periods)."""
    period = 200 if paper else 20
    per_period = period * 800
    split = f"whole periods ({period} updates = {per_period:,} env steps each)"
    if tasks:
        split = f"{tasks} tasks of {split}"
    total = _whole_periods(config.env_steps, 2_000_000 if paper else 80_000, per_period * max(tasks, 1), split)
    per_task = total // tasks if tasks else total
    schedule = tuple((t, per_task) for t in range(tasks)) if tasks else ()
    return LoopConfig(
        env_steps=total,
        num_envs=8,
        replay_ratio=1 / 800,
        warmup_steps=816,  # one whole battle (≤ 101 steps) per env before learning
        buffer_size=101 * (5_000 if paper else 64) + 8,
        batch_size=32 if paper else 8,
        period=period,
        eval_every=max(1, per_task // per_period) if tasks else max(1, total // per_period // 10),
        eval_envs=8,
        scoring_batch=32 if paper else 8,
        tasks=schedule,
    )


def marl_cells(experiment: str, config) -> list[tuple[dict, RLConfig]]:
    """``mixers × methods`` cells of ``experiment`` (see the module docstring)."""
    paper = config.scale == "paper"
    mixers = config.mixers or MIXER_CHOICES
    methods = expand_methods(config.methods)
    if experiment == "matrix-sequential":
        loop, env = matrix_loop(config, paper), "matrix-sequential"
        marl = MARLConfig(epsilon_decay_steps=2_000 if paper else 1_000, td_lambda=0.0)  # one-step episodes
    elif experiment in SMAX_ENVS:
        from plastix.envs import make_env

        env = SMAX_ENVS[experiment]
        tasks = make_env(env).num_tasks if env != "smax/3s_vs_5z" else 0
        loop = smax_loop(config, paper, tasks)
        marl = MARLConfig(epsilon_decay_steps=100_000 if paper else 20_000)
    else:
        loop, env = predator_prey_loop(config, paper), "predator-prey"
        marl = MARLConfig(epsilon_decay_steps=100_000 if paper else 20_000)
    if config.env and config.env != env:
        raise ValueError(f"DormantExperimentConfig.env: {experiment} runs on {env}, got {config.env!r}")
    total_updates = int(loop.env_steps * loop.replay_ratio)
    seeds = config.seeds or (5 if paper else 2)
    cells = []
    for mixer in mixers:
        for method in methods:
            cell = RLConfig(
                env=env,
                agent=mixer,
                loop=loop,
                marl=marl,
                plasticity=marl_plasticity(
                    method,
                    loop.period,
                    max(loop.period, total_updates // 4 // loop.period * loop.period),
                    tasks=bool(loop.tasks),
                    mixer=mixer,
                ),
                diagnostics=DiagnosticsConfig(tau=config.tau),
                seeds=seeds,
                vmap_seeds=config.vmap_seeds,
            )
            cells.append(({"mixer": mixer, "method": method}, cell))
    return cells


# ------------------------------------------------------------------------------------------ report


def switch_steps(df: pd.DataFrame) -> list[int]:
    """Env steps of the task switches logged by the loop."""
    if "task_switched" not in df:
        return []
    steps = df.loc[df.task_switched.astype(bool), "task_switch_step"]
    return sorted(int(s) for s in steps.unique() if s >= 0)


GROUPS = ("agent", "mixer", "all")
"""Column groups of the MARL tables: agent network, mixer, and both together."""


def group_column(part: pd.DataFrame, group: str, field: str) -> str:
    """The column of ``field`` for ``group`` (``all``: the whole network, ``marl/<field>``); a
    learner whose mixer has no neurons (VDN) logs its agent network as the whole network."""
    if group == "all":
        return f"marl/{field}"
    column = f"marl/group/{group}/{field}"
    if column in part and part[column].notna().any():
        return column
    whole = f"marl/{field}"
    if group == "agent" and whole in part:
        mixer_layers = [c for c in part.columns if c.startswith("marl/layer/mixer/")]
        if not part[mixer_layers].notna().to_numpy().any():  # one pass, not a column at a time
            return whole
    return column


def group_table(title: str, df: pd.DataFrame, settings: list[str], fields: dict, cell) -> list[str]:
    """Markdown lines: one row per setting, one column per (group, ``fields`` label); a cell is
    ``cell(rows of the setting, column)``, ``–`` where the column is missing."""
    lines = [
        f"### {title}",
        "",
        "| setting | " + " | ".join(f"{g} {label}" for g in GROUPS for label in fields) + " |",
        "|---|" + "---|" * (len(GROUPS) * len(fields)),
    ]
    for setting in settings:
        part = df[df.setting == setting]
        cells = []
        for group in GROUPS:
            for field in fields.values():
                column = group_column(part, group, field)
                cells.append(cell(part, column) if column in part else "–")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return lines + [""]


def mean_ci_cell(percent: bool = False):
    """A :func:`group_table` cell: mean [95% CI] of the column over seeds."""
    from plastix.report import format_estimate, mean_ci

    return lambda part, column: format_estimate(mean_ci(part[column].to_numpy()), percent=percent)


def around_switches(part: pd.DataFrame, column: str, switches: list[int]) -> tuple[float, float]:
    """Mean of ``column`` just before and just after the task switches, over seeds and switches.

    *Before* a switch at env step s is the last diagnostics at or before s (the network trained on the
    old task only, scored on its data, before the period's intervention); *after* is the first one
    past s (``F`` updates on a replay filling with the new task). Per seed, both are averaged over
    the switches that have both; then over seeds. NaN where no switch has both.
    """
    before, after = [], []
    for _, run in part.dropna(subset=[column]).groupby("seed"):
        steps = run.env_steps.to_numpy()
        values = run[column].to_numpy()
        pairs = [
            (values[steps <= s][steps[steps <= s].argmax()], values[steps > s][steps[steps > s].argmin()])
            for s in switches
            if (steps <= s).any() and (steps > s).any()
        ]
        if pairs:
            before.append(sum(b for b, _ in pairs) / len(pairs))
            after.append(sum(a for _, a in pairs) / len(pairs))
    if not before:
        return float("nan"), float("nan")
    return sum(before) / len(before), sum(after) / len(after)


def switch_table(df: pd.DataFrame, settings: list[str], switches: list[int]) -> list[str]:
    """Markdown lines: neuron ratios just before → just after the task switches (:func:`around_switches`)."""

    def cell(part, column):
        before, after = around_switches(part, column, switches)
        return "–" if before != before else f"{100 * before:.1f} → {100 * after:.1f}"

    title = "Neuron ratios just before → just after the task switches (%, mean over seeds and switches)"
    return group_table(title, df, settings, RATIOS, cell)


def competition_ranks(values: dict[str, float]) -> dict[str, str]:
    """Rank 1 = highest value; equal values share a rank, marked ``=`` (``{a: 1, b: 1, c: 3}`` → ``=1, =1, 3``)."""
    ranks = {}
    for s, v in values.items():
        rank = 1 + sum(other > v for other in values.values())
        tied = sum(other == v for other in values.values()) > 1
        ranks[s] = f"={rank}" if tied else str(rank)
    return ranks


def ranking_table(df: pd.DataFrame, settings: list[str], task_cols: list[str]) -> list[str]:
    """Markdown lines: settings ranked by IQM [95% stratified bootstrap CI] of the final greedy return
    and, with tasks, of the final return on the first task (re-visited at the end of the sequence;
    left out when it equals the final return for every run, as when the sequence ends on task 1),
    each with P(> none), the probability of improvement over the same mixer's ``none`` (rliable's
    definition, 95% bootstrap CI), and a line per column saying what the intervals separate: a rank
    alone does not say whether a difference is more than the spread across seeds. Methods are
    ranked, and separated, among the settings of the same mixer (different mixers are different
    learners); mixers come in the order of ``settings``."""
    from plastix.report import final_values, format_estimate, improvement_ci, iqm_ci

    columns = {"final return": "eval_return"} | ({"task 1 at the end": task_cols[0]} if task_cols else {})
    baselines = {s: baseline_setting(df, s) for s in settings}
    estimates, improvements, finals, same_as_final = {}, {}, {}, False
    for label, column in columns.items():
        if column not in df:
            continue
        final = final_values(df, column, ["setting"])
        scores = {s: final.loc[final.setting == s, column].to_numpy()[:, None] for s in settings}
        scores = {s: v for s, v in scores.items() if len(v)}
        if finals and all(s in scores and np.array_equal(v, scores[s]) for s, v in finals.items()):
            same_as_final = True  # the sequence ends on task 1: the final return says it all
            continue
        finals = finals or scores
        estimates[label] = iqm_ci(scores)
        improvements[label] = {
            s: improvement_ci(v, scores[baseline])
            for s, v in scores.items()
            if (baseline := baselines[s]) in scores and baseline != s
        }
    if not estimates:
        return []
    first = next(iter(estimates))
    groups = {}  # mixer -> its settings, in the order of ``settings``
    for setting in settings:
        mixer = (
            df.loc[df.setting == setting, "mixer"].iloc[0] if "mixer" in df and (df.setting == setting).any() else ""
        )
        groups.setdefault(mixer, []).append(setting)
    order = [
        s
        for members in groups.values()
        for s in sorted((s for s in members if s in estimates[first]), key=lambda s: -estimates[first][s].value)
    ]
    ranks = {
        label: {
            s: rank
            for members in groups.values()
            for s, rank in competition_ranks({s: e[s].value for s in members if s in e}).items()
        }
        for label, e in estimates.items()
    }
    by_mixer = " within each mixer" if len(groups) > 1 else ""
    lines = [
        f"### Methods ranked by {first}{by_mixer} (IQM [95% stratified bootstrap CI] over seeds)",
        "",
        "P(> none): probability that a run of the method scores higher than a run of `none` with the same "
        "mixer (ties count 1/2; 0.5 = no difference), with its 95% stratified bootstrap CI."
        + (
            " The sequence ends on task 1, so the final return is the return on the re-visited task 1."
            if same_as_final
            else ""
        ),
        "",
        "| setting | " + " | ".join(f"{label} | rank | P(> none)" for label in estimates) + " |",
        "|---|" + "---|---|---|" * len(estimates),
    ]
    for setting in order:
        cells = []
        for label in estimates:
            if setting not in estimates[label]:
                cells.append("– | – | –")
                continue
            gain = improvements[label].get(setting)
            cells.append(
                f"{format_estimate(estimates[label][setting], digits=2)} | {ranks[label][setting]} | "
                + ("–" if gain is None else format_estimate(gain, digits=2))
            )
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    lines.append("")
    for label in estimates:
        for mixer, members in groups.items():
            scored = {s: estimates[label][s] for s in members if s in estimates[label]}
            if scored:
                gains = {s: g for s, g in improvements[label].items() if s in members}
                lines += [separation(label, scored, gains, group=mixer.upper() if len(groups) > 1 else ""), ""]
    return lines


def baseline_setting(df: pd.DataFrame, setting: str) -> str | None:
    """The ``none`` setting with the same mixer as ``setting`` (``None`` if the run has none)."""
    part = df.loc[df.setting == setting]
    if part.empty or "method" not in df:
        return None
    same_mixer = df.mixer == part.mixer.iloc[0] if "mixer" in df else True
    found = df.loc[same_mixer & (df.method == "none"), "setting"]
    return None if found.empty else found.iloc[0]


def separation(label: str, estimates: dict, improvements: dict, group: str = "") -> str:
    """One sentence: which settings the 95% CIs of ``label`` separate from the best one and from
    ``none`` (:func:`ranking_table`), or that they separate none at this number of seeds; ``group``
    (a mixer) is named after the label."""
    best = max(estimates, key=lambda s: estimates[s].value)
    top = estimates[best]
    below = [s for s, e in estimates.items() if e.high < top.low]
    better = [s for s, e in improvements.items() if e.low > 0.5]
    worse = [s for s, e in improvements.items() if e.high < 0.5]
    seeds = min(e.n for e in estimates.values())
    heading = label.capitalize() + (f", {group}" if group else "")
    if not below and not better and not worse:
        return (
            f"**{heading}:** every 95% CI overlaps the best setting's ({best}) and every P(> none) CI "
            f"contains 0.5: at {seeds} seeds these methods are not separated by {label}."
        )
    parts = [f"below the best ({best}): " + (", ".join(below) if below else "none")]
    if improvements:
        parts.append("better than `none`: " + (", ".join(better) if better else "none"))
        parts.append("worse than `none`: " + (", ".join(worse) if worse else "none"))
    return f"**{heading}, separated by the 95% CIs** ({seeds} seeds): " + "; ".join(parts) + "."


def inactive_methods(df: pd.DataFrame, settings: list[str]) -> list[str]:
    """Markdown lines naming the settings whose intervention never changed anything (every
    ``intervention/*`` count 0 in every period and seed), so that "no better than none" is not read
    as "tried and failed" (e.g. CBP's 1e-4 replacements per update in a short run)."""
    from plastix.interventions import REGISTRY

    counts = [c for c in df.columns if c.startswith("intervention/")]
    if not counts or "method" not in df:
        return []

    def intervenes(labels: set) -> bool:  # `none` and optimizer-only methods (weight decay) have nothing to count
        return any(REGISTRY[m].build is not None if m in REGISTRY else True for m in labels)

    idle = [
        setting
        for setting in settings
        if intervenes(set(df.loc[df.setting == setting, "method"]))
        and not (df.loc[df.setting == setting, counts].fillna(0).to_numpy() > 0).any()
    ]
    if not idle:
        return []
    return [
        f"**Never acted:** {', '.join(idle)}: the intervention changed no parameter at any period end and "
        "replaced no neuron in any update of any seed, so these rows are `none` under another name "
        "(e.g. a period longer than the run, or CBP's replacement rate too low for this many updates).",
        "",
    ]


RATIO_COLUMNS = 4
"""Settings per row of the neuron-ratio figure."""


def mark_switches(ax, steps: list[int]) -> None:
    for s in steps:
        ax.axvline(s, color="0.4", lw=0.8, ls="--", zorder=0)


def ratio_panels(
    df: pd.DataFrame, settings: list[str], has_neurons: Callable[[str, str], bool] = lambda setting, group: True
) -> tuple[dict[str, dict[str, tuple[int, int]]], int, int]:
    """Where each setting's neuron-ratio panels go: ``({setting: {group: (row, column)}}, rows,
    columns)``. A setting is a column of panels, agent network above mixer; each mixer's settings
    start new rows, at most :data:`RATIO_COLUMNS` per row, so that a row compares one mixer's
    methods and the figure stays readable at 14 methods. A group without neurons in any of a
    mixer's settings (VDN's mixer) gets no row there."""
    if "mixer" in df:
        mixer_of = df.drop_duplicates("setting").set_index("setting")["mixer"]
        blocks = [[s for s in settings if mixer_of[s] == m] for m in dict.fromkeys(mixer_of[s] for s in settings)]
    else:
        blocks = [settings]
    columns = min(max(len(block) for block in blocks), RATIO_COLUMNS)
    places, rows = {}, 0
    for block in blocks:
        groups = [g for g in ("agent", "mixer") if any(has_neurons(s, g) for s in block)] or ["agent"]
        for j, setting in enumerate(block):
            top = rows + len(groups) * (j // columns)
            places[setting] = {g: (top + i, j % columns) for i, g in enumerate(groups)}
        rows += len(groups) * -(-len(block) // columns)
    return places, rows, columns


def report_section(experiment: str, df: pd.DataFrame, path: str) -> tuple[list[str], list[str]]:
    """MARL figures and tables: ``(files, markdown lines)``."""
    import matplotlib.pyplot as plt

    from plastix.report import figure_legend, format_estimate, mean_ci, plot_curves, save_figure

    files, lines = [], []
    switches = switch_steps(df)
    settings = list(dict.fromkeys(df["setting"]))

    # neuron ratios, agent network vs mixer
    def ratio_columns(part: pd.DataFrame, group: str) -> dict[str, str] | None:
        cols = {name: group_column(part, group, field) for name, field in RATIOS.items()}
        return cols if all(c in part and part[c].notna().any() for c in cols.values()) else None

    parts = {setting: df[df.setting == setting] for setting in settings}
    found = {(s, g): ratio_columns(parts[s], g) for s in settings for g in ("agent", "mixer")}
    places, rows, columns = ratio_panels(df, settings, lambda setting, group: found[setting, group] is not None)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.1 * rows), squeeze=False)
    used = {place for panels in places.values() for place in panels.values()}
    for r in range(rows):
        for column in range(columns):
            if (r, column) not in used:  # the empty places at the end of a mixer's rows
                axes[r][column].set_visible(False)
    for setting, panels in places.items():
        part = parts[setting]
        for group, (r, column) in panels.items():
            ax = axes[r][column]
            cols = found[setting, group]
            if cols is None:
                ax.set_title(f"{setting}: {group} (no neurons)", fontsize=9)
                ax.axis("off")
                continue
            long = part.melt(
                id_vars=["seed", "env_steps"], value_vars=list(cols.values()), var_name="ratio", value_name="v"
            )
            long["ratio"] = long["ratio"].map({c: n for n, c in cols.items()})
            plot_curves(ax, long, "v", hue="ratio", x="env_steps", scale=100, order=list(RATIOS))
            mark_switches(ax, switches)
            no_mixer = "mixer" not in panels and group == "agent"
            ax.set_title(f"{setting}: {group}" + (" (the mixer has no neurons)" if no_mixer else ""), fontsize=9)
            ax.set_ylabel("% of neurons")
    figure_legend(fig, axes, title="neurons")
    files.append(save_figure(fig, os.path.join(path, "neuron_ratios_agent_vs_mixer.png")))
    # return per task
    task_cols = sorted(c for c in df.columns if c.startswith("eval_return/task_"))
    if task_cols:  # a row per mixer, so a panel holds one mixer's methods (14 with --methods all), not 42 lines
        by_mixer = "mixer" in df and "method" in df  # else (e.g. ``plastix run rl``) one row of settings
        mixers = list(dict.fromkeys(df["mixer"])) if by_mixer else [None]
        hue, order = ("method", list(dict.fromkeys(df["method"]))) if by_mixer else ("setting", settings)
        fig, axes = plt.subplots(
            len(mixers), len(task_cols), figsize=(3.4 * len(task_cols), 3.0 * len(mixers)), squeeze=False
        )
        for row, mixer in zip(axes, mixers):
            for ax, col in zip(row, task_cols):
                part = (df if mixer is None else df[df.mixer == mixer]).dropna(subset=[col])
                plot_curves(ax, part, col, hue=hue, x="env_steps", order=order)
                mark_switches(ax, switches)
                task = col.replace("eval_return/", "")
                ax.set_title(task if mixer is None else f"{mixer}: {task}", fontsize=10)
                ax.set_ylabel("greedy return")
        figure_legend(fig, axes, title=hue)
        files.append(save_figure(fig, os.path.join(path, "return_per_task.png")))
    # neuron-level vs layer-level injection (paper Fig. 7a): KNIFE vs KNIFE on every neuron vs heads
    levels = [m for m in ("none", "knife", "knife-all", "injection") if "method" in df and m in set(df["method"])]
    if {"knife", "knife-all"} <= set(levels):
        mixers = list(dict.fromkeys(df["mixer"]))
        fig, axes = plt.subplots(1, len(mixers), figsize=(4.2 * len(mixers), 3.2), squeeze=False)
        for ax, mixer in zip(axes[0], mixers):
            part = df[(df.mixer == mixer) & df.method.isin(levels)].dropna(subset=["eval_return"])
            plot_curves(ax, part, "eval_return", hue="method", x="env_steps", order=levels)
            mark_switches(ax, switches)
            ax.set_title(f"{mixer}: neuron-level vs layer-level injection", fontsize=9)
            ax.set_ylabel("greedy return")
        figure_legend(fig, axes, title="method")
        files.append(save_figure(fig, os.path.join(path, "neuron_vs_layer_level.png")))
    # tables: ranking, neuron ratios at the end, around the switches, and task 1 first vs revisited
    lines += ranking_table(df, settings, task_cols)
    lines += inactive_methods(df, settings)
    final = df[df.period == df.period.max()]
    title = "Neuron ratios at the end of training (mean [95% CI] over seeds)"
    lines += group_table(title, final, settings, RATIOS, mean_ci_cell(percent=True))
    if any(f"marl/group/{g}/{f}" in final for g in ("agent", "mixer") for f in OVERLAPS.values()):
        title = "Overlap coefficients |A∩B| / min(|A|, |B|) of the neuron sets at the end (mean [95% CI] over seeds)"
        lines += group_table(title, final, settings, OVERLAPS, mean_ci_cell())
    if switches:
        lines += switch_table(df, settings, switches)
    if task_cols and switches:
        first_end = switches[0]
        lines += [
            "### Task 1: learned first vs re-learned at the end (greedy return, mean [95% CI] over seeds)",
            "",
            "| setting | task 1 at its first switch | task 1 at the end | end − first |",
            "|---|---|---|---|",
        ]
        col = task_cols[0]
        for setting in settings:
            part = df[(df.setting == setting)].dropna(subset=[col])
            at_switch = part[part.env_steps == first_end].set_index("seed")[col]
            at_end = part[part.env_steps == part.env_steps.max()].set_index("seed")[col]
            seeds = at_switch.index.intersection(at_end.index)
            first, end = at_switch[seeds].to_numpy(), at_end[seeds].to_numpy()
            lines.append(
                f"| {setting} | {format_estimate(mean_ci(first))} | {format_estimate(mean_ci(end))} | "
                f"{format_estimate(mean_ci(end - first))} |"
            )
        lines.append("")
    lines += [f"Task switches at env steps {switches}." if switches else "", ""]
    return files, lines
