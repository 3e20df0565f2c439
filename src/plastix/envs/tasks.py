"""Task schedules: which of an env's tasks (``Env.tasks``) is active at each learning env step.

A schedule is a list of ``(task index, env steps)`` segments, e.g. ``((0, 5000), (1, 5000),
(0, 5000))``: task 0 for the first 5,000 learning env steps (per seed), then task 1, then task 0
again. The active task is a function of the loop's step counter (:meth:`TaskSchedule.task_at`), so
it switches inside one jitted run; *task drift* is a schedule whose segments are tasks with
slowly changing parameters, *sequential tasks* one whose tasks are distinct. Warm-up steps use the
first segment's task.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import Array


@dataclasses.dataclass(frozen=True)
class TaskSchedule:
    """``segments``: ``((task, env_steps), ...)``; learning env steps per seed, in order."""

    segments: tuple[tuple[int, int], ...]

    def __post_init__(self):
        segments = tuple((int(t), int(n)) for t, n in self.segments)
        object.__setattr__(self, "segments", segments)
        if not segments:
            raise ValueError("TaskSchedule.segments: at least one (task, env_steps) segment is needed")
        for task, steps in segments:
            if task < 0 or steps < 1:
                raise ValueError(
                    f"TaskSchedule.segments: each segment is (task index >= 0, env steps >= 1), got {(task, steps)}"
                )

    @classmethod
    def single(cls, env_steps: int, task: int = 0) -> TaskSchedule:
        return cls(((task, env_steps),))

    @property
    def total_steps(self) -> int:
        return sum(n for _, n in self.segments)

    @property
    def tasks(self) -> tuple[int, ...]:
        return tuple(t for t, _ in self.segments)

    @property
    def switch_steps(self) -> tuple[int, ...]:
        """Learning env steps at which a new segment starts (a switch; the first segment excluded)."""
        return tuple(int(s) for s in np.cumsum([n for _, n in self.segments])[:-1])

    def check(self, num_tasks: int, env_name: str = "env") -> None:
        """Raise if a segment names a task the env does not have."""
        bad = [t for t in self.tasks if t >= num_tasks]
        if bad:
            raise ValueError(
                f"TaskSchedule.segments: {env_name} has {num_tasks} task(s) (indices 0..{num_tasks - 1}), got {bad}"
            )

    def task_at(self, step: Array) -> Array:
        """int32 index of the task used by learning env step ``step`` (0-based; beyond the end: the last)."""
        ends = jnp.asarray(np.cumsum([n for _, n in self.segments]), jnp.int32)
        segment = jnp.minimum(jnp.searchsorted(ends, step, side="right"), len(self.segments) - 1)
        return jnp.asarray(self.tasks, jnp.int32)[segment]
