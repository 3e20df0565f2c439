"""Run directories: ``config.json``, checkpoints that survive a kill, metrics, a finished marker.

A run directory holds::

    config.json          the full config (a re-run with a different config is refused)
    checkpoint/          the latest chunk's state (atomic: written aside, then renamed)
    metrics.parquet      one row per epoch / seed / setting, written when the run finishes
    DONE                 present once everything, figures and report included, is written

Re-running a finished run is a no-op; re-running a killed run resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import pandas as pd


def config_dict(config: Any) -> dict:
    """A dataclass config as JSON-ready dict."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


class RunDir:
    """One run's directory on disk (see the module docstring)."""

    def __init__(self, path: str):
        self.path = path

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def finished(self) -> bool:
        return os.path.exists(self.file("DONE"))

    def prepare(self, config: Any) -> None:
        """Create the directory and write ``config.json``, or check it matches the existing one.

        Raises:
          ValueError: when the directory holds a run of a different config.
        """
        os.makedirs(self.path, exist_ok=True)
        wanted = config_dict(config)
        path = self.file("config.json")
        if os.path.exists(path):
            with open(path) as f:
                existing = json.load(f)
            if existing != wanted:
                diff = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
                raise ValueError(
                    f"{self.path} holds a run with a different config (fields {diff}); "
                    "choose another --name or delete the directory"
                )
            return
        with open(path, "w") as f:
            json.dump(wanted, f, indent=2, sort_keys=True)

    def save_checkpoint(self, state: Any, rows: list[dict], meta: dict) -> None:
        """Atomically save a pytree of arrays, the metric rows so far, and a small ``meta`` dict."""
        tmp = self.file("checkpoint.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
        np.savez(os.path.join(tmp, "state.npz"), *leaves)
        pd.DataFrame(rows).to_parquet(os.path.join(tmp, "rows.parquet"))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
        final = self.file("checkpoint")
        old = self.file("checkpoint.old")
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def checkpoint_meta(self) -> dict | None:
        """The ``meta`` dict of the last checkpoint, or ``None`` when there is none."""
        for name in ("checkpoint", "checkpoint.old"):  # .old: killed between the two renames
            path = os.path.join(self.file(name), "meta.json")
            if os.path.exists(path):
                if name == "checkpoint.old":
                    os.replace(self.file(name), self.file("checkpoint"))
                with open(self.file("checkpoint/meta.json")) as f:
                    return json.load(f)
        return None

    def load_checkpoint(self, template: Any) -> tuple[Any, list[dict], dict] | None:
        """The last checkpoint as ``(state, rows, meta)`` shaped like ``template``, or ``None``."""
        if self.checkpoint_meta() is None:
            return None
        final = self.file("checkpoint")
        with np.load(os.path.join(final, "state.npz")) as npz:
            leaves = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        treedef = jax.tree.structure(template)
        if treedef.num_leaves != len(leaves):
            raise ValueError(f"{final}: checkpoint does not match this config's state; delete it to restart")
        state = jax.tree.unflatten(treedef, leaves)
        rows = pd.read_parquet(os.path.join(final, "rows.parquet")).to_dict("records")
        with open(os.path.join(final, "meta.json")) as f:
            meta = json.load(f)
        return state, rows, meta

    def finish(self, metrics: pd.DataFrame) -> None:
        """Write ``metrics.parquet``, drop the checkpoint and mark the run done."""
        metrics.to_parquet(self.file("metrics.parquet"))
        shutil.rmtree(self.file("checkpoint"), ignore_errors=True)
        with open(self.file("DONE"), "w") as f:
            f.write("ok\n")

    def metrics(self) -> pd.DataFrame:
        return pd.read_parquet(self.file("metrics.parquet"))
