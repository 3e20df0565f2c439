"""Runs of single-agent RL: one *cell* = one agent config on one env, all seeds at once.

:func:`run_cell` builds the jitted loop (:func:`plastix.agents.off_policy.make_train`), runs it
chunk by chunk with a progress callback, checkpoints the whole carry (networks, optimizer,
replay buffer, env states, keys) with orbax every ``checkpoint_every`` chunks, and resumes from
the last checkpoint after a kill: the resumed run computes exactly what the uninterrupted run
would have (same keys, same buffer), so the final metrics are identical. The exception is Atari,
whose emulator states live on the host and are not checkpointed: a resumed Atari run keeps its
networks, optimizer, buffer and keys but starts fresh episodes.

Experiments (:mod:`plastix.experiments.dormant`) are lists of cells, each in its own run
directory, merged into one table.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from plastix.agents import DQNConfig, LoopConfig, SACConfig, make_dqn, make_sac, make_train
from plastix.agents.marl import MARLConfig, make_marl
from plastix.agents.off_policy import Train
from plastix.envs import make_env
from plastix.experiments.rundir import CorruptRunError, RunDir, write_json
from plastix.experiments.runner import Stage, run_stages, stacked_rows
from plastix.interventions import PlasticityBundle, PlasticityConfig, assign_members, group_key
from plastix.jit import jit_program
from plastix.metrics import DiagnosticsConfig

AGENTS = ("dqn", "drq", "sac", "vdn", "qmix", "qplex")
SECTIONS = {"dqn": "dqn", "drq": "dqn", "sac": "sac", "vdn": "marl", "qmix": "marl", "qplex": "marl"}
"""The settings section each agent reads (the others must stay at their defaults)."""


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """One agent on one environment, ``seeds`` seeds in parallel.

    Attributes:
      env: environment name (see ``plastix.envs.available_envs()``).
      agent: ``dqn``, ``drq`` (DQN settings + random shifts; see ``drq_epsilon_config``), ``sac``, or
        the multi-agent value factorizations ``vdn``, ``qmix``, ``qplex`` (one learner, the mixer
        named by the agent; multi-agent envs such as ``matrix-sequential``, ``predator-prey``).
      loop: the off-policy loop (replay ratio, steps, period F, evaluation).
      plasticity: the plasticity method (a registry name), its trigger and settings, weight decay;
        the same for every agent.
      diagnostics: thresholds of the neuron diagnostics, defined once for every agent and for
        ReDo (τ, GraMa τ, κ / ρ, stagnation source ``grad`` or ``update``).
      dqn: DQN / DrQ(ε) settings (used by ``dqn`` and ``drq``).
      sac: SAC settings (used by ``sac``).
      marl: value-factorization settings (used by ``vdn``, ``qmix``, ``qplex``; its ``mixer`` is the agent).
      seeds: independent seeds run together with ``vmap``.
      seed: base seed; seed i uses ``fold_in(PRNGKey(seed), i)``.
      checkpoint_every: chunks between orbax checkpoints (0: never).
      checkpoint_share: the most of the run's time saving checkpoints may take, in (0, 1]: a
        checkpoint that took ``s`` seconds (1 s or more) delays the next one by ``s · (1 − share) /
        share`` (a paper-scale SMAX replay: 36 s per save vs 9 s per chunk on an H200); 1: every
        ``checkpoint_every`` chunks whatever it costs. Does not change results (a resumed run may
        change it).
      vmap_seeds: run seeds with ``vmap`` (True) or one after another (False).
      xla_cpu_threads: threads of XLA:CPU's pool in the process that runs this (``plastix run rl``),
        set before JAX starts (:func:`plastix.jit.xla_cpu_threads`); ``None``: one for DQN with an
        MLP and for SAC (measured faster on a 2-core Xeon: DQN 8 seeds 7.4 vs 8.6–9.0 s per chunk,
        SAC on Pendulum 3 seeds 70–77 vs 75–79 s per run), XLA's default (one per core) otherwise;
        0: XLA's default. Does not change results.
    """

    env: str = "Breakout-MinAtar"
    agent: Literal["dqn", "drq", "sac", "vdn", "qmix", "qplex"] = "dqn"
    loop: LoopConfig = LoopConfig()
    plasticity: PlasticityConfig = PlasticityConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    dqn: DQNConfig = DQNConfig()
    sac: SACConfig = SACConfig()
    marl: MARLConfig = MARLConfig()
    seeds: int = 3
    seed: int = 0
    checkpoint_every: int = 1
    checkpoint_share: float = 0.1
    vmap_seeds: bool = True
    xla_cpu_threads: int | None = None

    def cpu_threads(self) -> int:
        """:attr:`xla_cpu_threads` resolved (0: XLA's default): one for DQN with an MLP (a classic-control
        env's ``auto`` network) and for SAC (MLPs), decided from names alone, before anything starts JAX."""
        if self.xla_cpu_threads is not None:
            return self.xla_cpu_threads
        from plastix.envs.gymnax_envs import CLASSIC

        mlp = self.dqn.network == "mlp" or (self.dqn.network == "auto" and self.env in CLASSIC)
        return 1 if (self.agent == "dqn" and mlp) or self.agent == "sac" else 0

    def __post_init__(self):
        if self.agent not in AGENTS:
            raise ValueError(f"RLConfig.agent: got {self.agent!r}, allowed values are {AGENTS}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"RLConfig.seed must be in [0, 2**32), the PRNG key range, got {self.seed}")
        if self.seeds < 1:
            raise ValueError(f"RLConfig.seeds must be >= 1, got {self.seeds}")
        if self.checkpoint_every < 0:
            raise ValueError(f"RLConfig.checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not 0 < self.checkpoint_share <= 1:  # NaN fails too
            raise ValueError(f"RLConfig.checkpoint_share must be in (0, 1], got {self.checkpoint_share}")
        if self.xla_cpu_threads is not None and self.xla_cpu_threads < 0:
            raise ValueError(f"RLConfig.xla_cpu_threads must be >= 0 (0: XLA's default), got {self.xla_cpu_threads}")
        if SECTIONS[self.agent] == "marl":
            if self.marl.mixer not in (self.agent, MARLConfig.mixer):
                raise ValueError(
                    f"RLConfig.marl.mixer={self.marl.mixer!r} contradicts agent={self.agent!r}: "
                    "the agent names the mixer"
                )
            object.__setattr__(self, "marl", dataclasses.replace(self.marl, mixer=self.agent))
        single = isinstance(self.plasticity, PlasticityConfig)  # a bundle's members were checked in their cells
        trigger = self.plasticity.resolved_trigger if single else None
        if single and self.plasticity.intervention is not None and trigger == "task_switch" and not self.loop.tasks:
            raise ValueError(
                f"PlasticityConfig.trigger: {self.plasticity.method} would run only at task switches "
                f"(trigger {self.plasticity.trigger!r}) and this run has no LoopConfig.tasks, so it would never "
                "run: set --plasticity.trigger period (every <method>.period updates) or a task schedule"
            )
        for other in self._other_agent_settings:
            if getattr(self, other) != getattr(RLConfig, other):
                raise ValueError(
                    f"RLConfig.{other} is set but agent={self.agent!r} does not use it (it would be ignored): "
                    "leave it out or choose the agent that reads it"
                )

    @property
    def _other_agent_settings(self) -> tuple[str, ...]:
        return tuple(sorted(set(SECTIONS.values()) - {SECTIONS[self.agent]}))

    def unused_settings(self) -> tuple[str, ...]:
        """Sections this config never reads (the other agents' sections, e.g. ``sac`` and ``marl``
        for DQN, and the plasticity settings of other methods as ``plasticity.<field>``)."""
        return self._other_agent_settings + tuple(f"plasticity.{name}" for name in self.plasticity.unused_settings())


_PURE_ENVS: dict = {}


def shared_env(name: str):
    """``make_env(name)``, made once per process for environments that are pure JAX (their
    functions and task data are immutable, so cells can share them): building SMAX's derives its
    spec by tracing a reset (~0.3 s), which an experiment did for every cell. Environments with
    host state (Atari's emulators) are made anew on every call."""
    env = _PURE_ENVS.get(name)
    if env is None:
        env = make_env(name)
        if not env.host_state:
            _PURE_ENVS[name] = env
    return env


def build_agent(config: RLConfig):
    """``(env, agent, topologies)`` for a cell (``env`` the training environment)."""
    env = shared_env(config.env)
    shared = {"plasticity": config.plasticity, "diagnostics": config.diagnostics}
    if config.agent == "sac":
        agent, _, topologies = make_sac(env.spec, config.sac, config.loop.period, **shared)
    elif SECTIONS[config.agent] == "marl":
        agent, _, topology = make_marl(env.spec, config.marl, config.loop.gamma, config.loop.period, **shared)
        topologies = {"marl": topology}
    else:
        agent, _, topology = make_dqn(env.spec, config.dqn, config.loop.period, **shared)
        topologies = {"q": topology}
    return env, agent, topologies


@functools.lru_cache(maxsize=8)
def build_train(config: RLConfig) -> Train:
    """The compiled loop of a cell (memoized: cells differing only in seeds share it)."""
    env, agent, _ = build_agent(config)
    eval_env = make_env(config.env, evaluation=True) if env.host_state else env
    return make_train(config.loop, env, agent, eval_env)


def _compute_key(config: RLConfig) -> RLConfig:
    return dataclasses.replace(config, seeds=1, seed=0, checkpoint_every=0, checkpoint_share=1.0)


def seed_keys(config: RLConfig) -> jax.Array:
    base = jax.random.PRNGKey(config.seed)
    return jnp.stack([jax.random.fold_in(base, i) for i in range(config.seeds)])


def chunk_rows(period_metrics: dict, eval_metrics: dict, first_period: int) -> pd.DataFrame:
    """Stacked ``{name: (seeds, periods)}`` and ``{name: (seeds,)}`` as one row per seed and period.

    Evaluation columns are set on the chunk's last period and NaN elsewhere.
    """
    seeds, periods = np.shape(period_metrics["env_steps"])
    table = stacked_rows(period_metrics, "period", first_period, {"seed": np.arange(seeds)})
    last = np.tile(np.arange(periods) == periods - 1, seeds)
    for k, v in eval_metrics.items():
        table[k] = np.where(last, np.repeat(np.asarray(v, np.float64), periods), np.nan)
    return table


def seed_sharding(seeds: int, devices: int = 0) -> jax.sharding.NamedSharding | None:
    """How a cell's seeds are spread over the local devices: a 1-D mesh ``("seeds",)`` over the
    largest number of devices ≤ ``devices`` (0: all local devices) that divides ``seeds``;
    ``None`` when that is one device (nothing to shard).

    Every array of a seed-vmapped carry has the seeds as its leading axis, so one jitted program
    runs each device's seeds where they live (GSPMD); seeds never talk to each other, so the
    numbers are those of the unsharded run.
    """
    local = jax.local_devices()
    n = len(local) if devices == 0 else min(devices, len(local))
    while n > 1 and seeds % n:
        n -= 1
    if n <= 1:
        return None
    mesh = jax.sharding.Mesh(np.array(local[:n]), ("seeds",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds"))


def group_config(configs: list[RLConfig]) -> RLConfig:
    """The cells ``configs``, which differ only in their plasticity method, as one config whose
    plasticity is a :class:`~plastix.interventions.PlasticityBundle`: one compiled program runs
    ``len(configs) × seeds`` runs, member-major (run ``m·seeds + s`` is seed ``s`` of ``configs[m]``).

    Raises:
      ValueError: the cells differ in anything but ``plasticity``, or their methods cannot share a
        program (KNIFE / plasticity injection with other slot settings than the rest).
    """
    if not configs:
        raise ValueError("group_config: needs at least one cell")
    first = configs[0]
    for config in configs[1:]:
        other = dataclasses.replace(config, plasticity=first.plasticity)
        if other != first:
            fields = [f.name for f in dataclasses.fields(RLConfig) if getattr(other, f.name) != getattr(first, f.name)]
            raise ValueError(f"group_config: cells differ in {fields}; only RLConfig.plasticity may differ in a group")
    if any(isinstance(c.plasticity, PlasticityBundle) for c in configs):
        raise ValueError("group_config: a cell is already a group")
    return dataclasses.replace(first, plasticity=PlasticityBundle(tuple(c.plasticity for c in configs)))


def run_bytes(config: RLConfig) -> int:
    """Bytes of one run's carry of ``config`` (networks, optimizer states, replay, env states): its
    shapes only (``jax.eval_shape``), nothing is computed. A paper-scale SMAX cell: 1.57 GB per run,
    the replay of 5,000 battles nearly all of it."""
    train = build_train(_compute_key(config))
    keys = seed_keys(_compute_key(config))  # one run's key, batched as the seed vmap takes it
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(jax.eval_shape(train.init, keys)))


def device_memory() -> int | None:
    """Bytes of memory of the device programs run on: the first accelerator's limit
    (``memory_stats``), or the machine's physical memory on a CPU; ``None`` when unknown."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    stats = device.memory_stats() or {}
    return stats.get("bytes_limit")


def split_to_fit(members: list[int], each: int, limit: float) -> list[list[int]]:
    """``members`` (a group of :func:`groups`) in as few consecutive parts as keep every part's
    bytes (``each`` per member) within ``limit``, their sizes as equal as possible; a member that
    alone exceeds ``limit`` is a part of its own."""
    per_part = max(1, int(limit // max(each, 1)))
    parts = -(-len(members) // per_part)  # ceil
    size, extra = divmod(len(members), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + size + (p < extra)
        out.append(members[start:end])
        start = end
    return out


def groups(configs: list[RLConfig]) -> list[list[int]]:
    """Indices of ``configs`` worth running as one program (:func:`group_config`), in first-seen
    order: cells equal but for a plasticity method of the same :func:`~plastix.interventions.group_key`
    (same parameters and forward pass; a per-update hook such as CBP's only with its own settings)."""
    found: dict = {}
    for i, config in enumerate(configs):
        rest = dataclasses.replace(config, plasticity=PlasticityConfig())
        found.setdefault((rest, group_key(config.plasticity)), []).append(i)
    return list(found.values())


def members(config: RLConfig) -> int:
    """Methods run side by side by ``config`` (1 unless its plasticity is a bundle)."""
    return len(config.plasticity.members) if isinstance(config.plasticity, PlasticityBundle) else 1


def stage(config: RLConfig, devices: int = 0) -> Stage:
    """A cell as the runner's one stage ("learn"): chunks of ``eval_every`` periods, then evaluation.

    A group config (:func:`group_config`) runs ``members × seeds`` runs; its rows carry a
    ``member`` column (the index into the bundle) next to ``seed``.

    Args:
      devices: local devices the runs are sharded over (0: all; see :func:`seed_sharding`).
        Host environments (Atari) and ``vmap_seeds=False`` run on one device.
    """
    train = build_train(_compute_key(config))
    n_members = members(config)
    keys = jnp.tile(seed_keys(config), (n_members, 1))  # every member sees the seeds' own keys
    runs = n_members * config.seeds
    if train.host_env and not config.vmap_seeds:
        raise ValueError(
            f"RLConfig.vmap_seeds must be True for {config.env}: its emulators live on the host, "
            "one group per run, stepped for all seeds at once"
        )
    sharding = seed_sharding(runs, devices) if config.vmap_seeds and not train.host_env else None
    place = (lambda tree: jax.device_put(tree, sharding)) if sharding is not None else (lambda tree: tree)
    bundled = isinstance(config.plasticity, PlasticityBundle)
    member = jnp.repeat(jnp.arange(n_members, dtype=jnp.int32), config.seeds)
    assign = (lambda carry: assign_members(carry, member)) if bundled else (lambda carry: carry)
    if config.vmap_seeds:
        init = lambda k: place(assign(train.init(place(k))))  # noqa: E731
        run_chunk = lambda c: train.run_chunk(place(c))  # noqa: E731
    else:  # one run at a time through the same jitted single-run functions
        single_init, single_chunk = jit_program(train.init_single), jit_program(train.run_chunk_single)
        stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
        unstack = lambda t: [jax.tree.map(lambda a: a[i], t) for i in range(runs)]  # noqa: E731
        init = lambda k: assign(stack([single_init(x) for x in k]))  # noqa: E731
        run_chunk = lambda c: stack([single_chunk(x) for x in unstack(c)])  # noqa: E731

    def chunk(carry, done: int):
        carry, metrics, evals = run_chunk(carry)
        rows = chunk_rows(metrics, evals, done * train.layout.periods)
        if bundled:
            run = rows.pop("seed").to_numpy()
            rows.insert(0, "seed", run % config.seeds)
            rows.insert(0, "member", run // config.seeds)
        return carry, rows

    def resumed(fresh, restored):
        if train.host_env:  # emulator states are not in the checkpoint: continue with fresh episodes
            fresh_episodes = ("env_state", "obs", "episode_return", "memory", "done")
            return restored._replace(**{name: getattr(fresh, name) for name in fresh_episodes})
        return place(restored)

    return Stage(
        "learn",
        train.layout.chunks,
        lambda _: init(keys),
        chunk,
        trained=lambda carry: carry.agent,
        resumed=resumed,
    )


def _learn(
    rundir: RunDir,
    config: RLConfig,
    where: str,
    progress: Callable[[int, int], None] | None,
    stop_after_chunks: int | None,
    devices: int,
    on_rows: Callable[[pd.DataFrame], None] | None = None,
    on_start: Callable[[], None] | None = None,
):
    """Prepare ``rundir`` for ``config`` (after every check passed), call ``on_start`` and run or
    resume its one stage; returns ``(stage, RunResult)``."""
    cell = stage(config, devices)
    rundir.prepare(config)
    if on_start:
        on_start()
    result = run_stages(
        rundir,
        [cell],
        where=where,
        progress=(lambda _, done, total: progress(done, total)) if progress else None,
        checkpoint_every=config.checkpoint_every,
        stop_after_chunks=stop_after_chunks,
        on_rows=on_rows,
        checkpoint_share=config.checkpoint_share,
    )
    return cell, result


def run_cell(
    config: RLConfig,
    path: str,
    progress: Callable[[int, int], None] | None = None,
    stop_after_chunks: int | None = None,
    keep_final: bool = False,
    devices: int = 0,
    on_rows: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """Run (or resume, or read back if finished) one cell in run directory ``path``.

    Args:
      config: the cell.
      path: its run directory.
      progress: ``progress(chunks_done, chunks_total)`` after every chunk.
      stop_after_chunks: stop (as if killed) after this many chunks of this call (for tests).
      keep_final: also keep the final carry (``<path>/final``, orbax) for analyses after training.
      devices: local devices the seeds are sharded over (0: every local device; results do not
        depend on it).
      on_rows: called with each new chunk's rows (live logging).

    Returns:
      one row per (seed, period): ``env_steps``, ``updates``, ``train_return``, losses,
      ``<network>/dormant_fraction`` and every other diagnostic, ``eval_return`` at chunk ends.
    """
    rundir = RunDir(path)
    if rundir.finished:
        rundir.prepare(config)  # refuses another config's finished run
        return rundir.metrics()
    where = f"{path} (agent {config.agent}, env {config.env})"
    cell, result = _learn(rundir, config, where, progress, stop_after_chunks, devices, on_rows)
    if not result.finished:
        return result.rows
    if keep_final:
        RunDir(os.path.join(path, "final")).save_checkpoint(result.carry, [], {"chunks_done": cell.chunks})
    rundir.finish(result.rows)
    return result.rows


def run_cell_group(
    configs: list[RLConfig],
    paths: list[str],
    group_path: str,
    progress: Callable[[int, int], None] | None = None,
    stop_after_chunks: int | None = None,
    devices: int = 0,
) -> list[pd.DataFrame] | None:
    """Run cells that differ only in their plasticity method as one compiled program.

    The unfinished cells of ``configs`` run together (:func:`group_config`, methods and seeds
    vmapped) in run directory ``group_path``, which checkpoints and resumes like a cell; when the
    group finishes, each cell's rows go to its own run directory ``paths[i]``, which then reads as
    if the cell had run alone: same keys per seed, same numbers up to the float rounding of a
    larger batch (which RL amplifies over hundreds of updates, as it does another thread count's).
    One difference: every member's rows carry the ``intervention/<tally>`` columns of every member
    (0 where the run's own method keeps no such count, e.g. ``cbp_replaced`` of a ReDo run).
    Finished cells are read back, not run again.

    Returns:
      each cell's metrics (as :func:`run_cell`), or ``None`` when ``stop_after_chunks`` stopped it.
    """
    if len(configs) != len(paths):
        raise ValueError(f"run_cell_group: {len(configs)} configs but {len(paths)} paths")
    for config, path in zip(configs, paths):
        if RunDir(path).finished:
            RunDir(path).prepare(config)  # refuses another config's finished run
    rundir = RunDir(group_path)
    todo = _group_members(rundir, paths)
    if len(todo) == 1:
        i = todo[0]
        run_cell(configs[i], paths[i], progress, stop_after_chunks, devices=devices)
        if not RunDir(paths[i]).finished:
            return None
    elif todo:
        group = group_config([configs[i] for i in todo])
        if not rundir.finished:
            names = [os.path.basename(os.path.normpath(paths[i])) for i in todo]
            methods = ", ".join(f"member {m}: {p.method}" for m, p in enumerate(group.plasticity.members))
            where = f"{group_path} (agent {group.agent}, env {group.env}; {methods})"
            _, result = _learn(
                rundir, group, where, progress, stop_after_chunks, devices,
                on_start=lambda: write_json(rundir.file("members.json"), names),
            )  # fmt: skip
            if not result.finished:
                return None
            rundir.finish(result.rows)
        rows = rundir.metrics()
        for member, i in enumerate(todo):
            if RunDir(paths[i]).finished:  # split before a crash
                continue
            own = rows[rows["member"] == member].drop(columns="member").reset_index(drop=True)
            cell_dir = RunDir(paths[i])
            cell_dir.prepare(configs[i])
            cell_dir.finish(own)
    return [RunDir(path).metrics() for path in paths]


def _group_members(rundir: RunDir, paths: list[str]) -> list[int]:
    """Which of ``paths`` the group runs: those recorded when it started (``members.json``), else
    the cells not finished yet."""
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    recorded = rundir.file("members.json")
    if os.path.exists(rundir.file("config.json")) and os.path.exists(recorded):
        try:
            with open(recorded) as f:
                members = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            why = f"not valid JSON ({e}); delete {rundir.path} to rerun the group"
            raise CorruptRunError(f"{recorded}: {why}") from None
        missing = [m for m in members if m not in names]
        if missing:
            raise ValueError(f"{rundir.path}: this group ran cells {missing} that are not in the experiment any more")
        return [names.index(m) for m in members]
    return [i for i, path in enumerate(paths) if not RunDir(path).finished]


def load_final(config: RLConfig, path: str):
    """The final carry kept by ``run_cell(..., keep_final=True)`` (seeds stacked)."""
    train = build_train(_compute_key(config))
    template = train.init(seed_keys(config))
    state, _, _ = RunDir(os.path.join(path, "final")).load_checkpoint(template)
    return jax.tree.map(jnp.asarray, state), train
