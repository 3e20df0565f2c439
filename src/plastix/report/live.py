"""Live logging of a sweep's cells: every metric a chunk returns, per cell and seed, on the host.

Off by default (``plastix sweep ... --log tensorboard --log wandb``). Loggers receive the chunk's
metric rows after the runner checked them (:func:`~plastix.experiments.runner.run_stages`'s
``on_rows``), so nothing in the jitted loop changes and nothing non-finite is logged. Each seed is
its own run (TensorBoard: ``<sweep>/tensorboard/<cell>/seed-<i>``; W&B: run ``<cell>/seed-<i>`` in
group ``<cell>``), stepped by ``env_steps``, with the cell's settings as tags / config.

A cell resumed after a crash logs the chunks after its last checkpoint again (default: one
chunk at most): both viewers then show the later value at the same step.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd

KEYS = ("seed", "period", "env_steps")


def _scalars(row: pd.Series) -> dict[str, float]:
    out = {}
    for key, value in row.items():
        if key in KEYS or isinstance(value, str):
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):  # evaluation columns are NaN between evaluations
            out[str(key)] = value
    return out


class TensorBoardLogger:
    """One tensorboardX writer per seed; the settings as a text summary and hparams-style tags."""

    def __init__(self, root: str, cell: Any):
        from tensorboardX import SummaryWriter

        self.base = os.path.join(root, "tensorboard", cell.id)
        self.cell = cell
        self.writers: dict[int, SummaryWriter] = {}
        self._writer_class = SummaryWriter

    def _writer(self, seed: int):
        if seed not in self.writers:
            writer = self._writer_class(os.path.join(self.base, f"seed-{seed}"))
            tags = "\n".join(f"- {k}: {v}" for k, v in {**self.cell.labels, "seed": seed}.items())
            writer.add_text("settings", tags, 0)
            self.writers[seed] = writer
        return self.writers[seed]

    def write(self, rows: pd.DataFrame) -> None:
        for _, row in rows.iterrows():
            writer = self._writer(int(row["seed"]))
            step = int(row["env_steps"])
            for key, value in _scalars(row).items():
                writer.add_scalar(key, value, step)
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class WandbLogger:
    """One W&B run per seed (group = cell; config and tags = the cell's settings)."""

    def __init__(self, root: str, cell: Any, mode: str, project: str):
        import wandb

        self.wandb = wandb
        self.root, self.cell, self.mode, self.project = root, cell, mode, project
        self.runs: dict[int, Any] = {}

    def _run(self, seed: int):
        if seed not in self.runs:
            settings = {k: str(v) for k, v in self.cell.labels.items()}
            directory = os.path.join(self.root, "wandb")
            os.makedirs(directory, exist_ok=True)
            self.runs[seed] = self.wandb.init(
                project=self.project,
                group=self.cell.id,
                name=f"{self.cell.id}/seed-{seed}",
                config={**settings, "seed": seed},
                tags=[f"{k}={v}"[:64] for k, v in settings.items()],
                mode=self.mode,
                dir=directory,
                reinit="create_new",
            )
        return self.runs[seed]

    def write(self, rows: pd.DataFrame) -> None:
        for _, row in rows.iterrows():
            self._run(int(row["seed"])).log(
                _scalars(row) | {"env_steps": int(row["env_steps"])}, step=int(row["env_steps"])
            )

    def close(self) -> None:
        for run in self.runs.values():
            run.finish()


def open_logger(kind: str, root: str, cell: Any, options: Any):
    """A logger of ``kind`` (``tensorboard`` or ``wandb``) for ``cell`` of the sweep in ``root``.

    Raises:
      ValueError: an unknown kind, or its package is not installed (``pip install -e ".[log]"``).
    """
    package = {"tensorboard": "tensorboardX", "wandb": "wandb"}.get(kind)
    if package is None:
        raise ValueError(f"--log: got {kind!r}, allowed values are ('tensorboard', 'wandb')")
    try:
        __import__(package)
    except ImportError:
        raise ValueError(f'--log {kind} needs the package {package}: pip install -e ".[log]"') from None
    if kind == "tensorboard":
        return TensorBoardLogger(root, cell)
    return WandbLogger(root, cell, options.wandb_mode, project=f"plastix-{os.path.basename(os.path.abspath(root))}")
