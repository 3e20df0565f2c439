"""The Ray backend of ``plastix sweep`` (``pip install -e ".[ray]"``): one Ray task per cell.

Each task declares ``--cpus-per-cell`` / ``--gpus-per-cell`` and runs
:func:`~plastix.experiments.sweep.run_one_cell` on the sweep directory, which must be a path every
node sees (a shared file system). A task whose worker dies (node lost, killed, out of memory) is
retried up to ``--retries`` times by Ray; the retry finds the cell's last checkpoint and resumes
from it, and a cell that finished before its worker died is not run again (``DONE`` is written last,
atomically). A cell that raises (a diverged run, a bad input) is not retried: it is marked
``failed`` with its error. Every attempt is appended to ``<cell>/ATTEMPTS`` (host, pid, the chunk
it resumed from; both backends).

Connecting: ``--address auto`` joins the cluster of ``ray start`` on this node; an empty address
starts a local one with this machine's CPUs; ``ray://host:10001`` uses Ray Client.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable


def cell_task(root: str, cell, options) -> str:
    """What a Ray worker runs for one cell (also callable directly)."""
    from plastix.cli import prepare_process
    from plastix.experiments.sweep import run_one_cell

    prepare_process()
    return run_one_cell(root, cell, options)


def run_on_ray(root: str, cells: list, options, on_update: Callable[[], None] | None = None) -> dict[str, str]:
    """Submit one task per cell and wait for all; returns ``{cell id: "done" | error text}``.

    Raises:
      ValueError: Ray is not installed (names the extra to install).
    """
    try:
        import ray
    except ImportError:
        raise ValueError('--backend ray needs Ray: pip install -e ".[ray]"') from None
    from plastix.experiments.sweep import cell_path

    if not ray.is_initialized():
        ray.init(address=options.address or None, logging_level="WARNING", log_to_driver=False)
    if options.gpus_per_cell == 0 and ray.cluster_resources().get("GPU", 0) > 0:
        warnings.warn(
            "the Ray cluster has GPUs but --gpus-per-cell is 0: Ray hides the GPUs from such tasks and the "
            "cells run on CPU (give --gpus-per-cell 1 to use them)",
            stacklevel=2,
        )
    task = ray.remote(
        num_cpus=options.cpus_per_cell,
        num_gpus=options.gpus_per_cell,
        max_retries=options.retries,
        retry_exceptions=False,
    )(cell_task)
    root = os.path.abspath(root)
    refs = {task.remote(root, cell, options): cell for cell in cells}
    outcome: dict[str, str] = {}
    waiting = list(refs)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        for ref in ready:
            cell = refs[ref]
            try:
                outcome[cell.id] = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the cell raised: FAILED was written by the worker
                outcome[cell.id] = f"failed: {type(e.cause).__name__ if e.cause else 'error'}"
            except ray.exceptions.RayError as e:  # the worker died more than `retries` times
                message = f"worker died {options.retries + 1} times ({type(e).__name__}); re-run the sweep to resume"
                with open(os.path.join(cell_path(root, cell), "FAILED"), "w") as f:
                    f.write(message + "\n")
                outcome[cell.id] = "failed: " + message
            if on_update:
                on_update()
    return outcome
