"""Run directories: ``config.json``, checkpoints that survive a kill, metrics, a finished marker.

A run directory holds::

    config.json          the full config (a re-run with a different config is refused)
    checkpoint/          the latest chunk's state (orbax; written aside, then renamed)
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

    def _checkpoints(self):
        import orbax.checkpoint as ocp

        options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
        return ocp.CheckpointManager(os.path.abspath(self.file("checkpoint")), options=options)

    def save_checkpoint(self, state: Any, rows: list[dict] | pd.DataFrame, meta: dict) -> None:
        """Save a pytree of arrays, the metric rows so far and a small ``meta`` dict (orbax).

        Orbax writes each checkpoint aside and renames it when complete, so a kill mid-save
        leaves the previous checkpoint intact; only the newest is kept.
        """
        import orbax.checkpoint as ocp

        os.makedirs(self.path, exist_ok=True)
        table = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
        tmp = self.file("rows.parquet.tmp")
        table.to_parquet(tmp)
        os.replace(tmp, self.file("rows.parquet"))  # may run ahead of the checkpoint: cut on load
        manager = self._checkpoints()
        step = (manager.latest_step() or 0) + 1
        state = jax.tree.map(np.asarray, state)
        extra = {"rows": len(table), "meta": meta}
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)))
        manager.wait_until_finished()
        manager.close()

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
        restored = manager.restore(step, args=ocp.args.Composite(**items))
        manager.close()
        return restored

    def checkpoint_meta(self) -> dict | None:
        """The ``meta`` dict of the last checkpoint, or ``None`` when there is none."""
        restored = self._restore(None)
        return None if restored is None else restored["extra"]["meta"]

    def load_checkpoint(self, template: Any) -> tuple[Any, list[dict], dict] | None:
        """The last checkpoint as ``(state, rows, meta)`` shaped like ``template``, or ``None``.

        Raises:
          ValueError: when the checkpoint does not match ``template`` (another config's state).
        """
        try:
            restored = self._restore(template)
        except (ValueError, KeyError) as e:
            raise ValueError(f"{self.file('checkpoint')}: checkpoint does not match this config's state ({e}); "
                             "delete it to restart") from e
        if restored is None:
            return None
        state = jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(restored["state"]))
        n_rows = restored["extra"]["rows"]
        rows = pd.read_parquet(self.file("rows.parquet")).iloc[:n_rows].to_dict("records") if n_rows else []
        return state, rows, restored["extra"]["meta"]

    def finish(self, metrics: pd.DataFrame) -> None:
        """Write ``metrics.parquet``, drop the checkpoint and mark the run done."""
        metrics.to_parquet(self.file("metrics.parquet"))
        shutil.rmtree(self.file("checkpoint"), ignore_errors=True)
        if os.path.exists(self.file("rows.parquet")):
            os.remove(self.file("rows.parquet"))
        with open(self.file("DONE"), "w") as f:
            f.write("ok\n")

    def metrics(self) -> pd.DataFrame:
        return pd.read_parquet(self.file("metrics.parquet"))
