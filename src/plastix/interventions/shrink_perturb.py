"""Shrink & Perturb (Ash & Adams 2020): ``θ ← shrink·θ + perturb·θ_fresh`` on every parameter."""

from __future__ import annotations

import dataclasses

import jax

from plastix.interventions.base import InitParams, Intervention, _no_state
from plastix.nn.topology import Topology


@dataclasses.dataclass(frozen=True)
class ShrinkPerturbConfig:
    """Shrink & Perturb settings.

    Attributes:
      shrink: factor on the current weights, in ``[0, 1]``.
      perturb: factor on a fresh draw of the initializers, ``>= 0`` (the noise scale).
      period: apply every ``period`` updates.
    """

    shrink: float = 0.8
    perturb: float = 0.2
    period: int = 1000

    def __post_init__(self):
        if not 0 <= self.shrink <= 1:
            raise ValueError(f"ShrinkPerturbConfig.shrink must be in [0, 1], got {self.shrink}")
        if self.perturb < 0:
            raise ValueError(f"ShrinkPerturbConfig.perturb must be >= 0, got {self.perturb}")
        if self.period < 1:
            raise ValueError(f"ShrinkPerturbConfig.period must be >= 1 update, got {self.period}")


def shrink_perturb(config: ShrinkPerturbConfig, topology: Topology, init_params: InitParams) -> Intervention:
    """Shrink & Perturb as an :class:`Intervention`; optimizer state is kept."""

    def apply(key, state, scores, context):
        fresh = init_params(key)
        params = jax.tree.map(lambda p, f: config.shrink * p + config.perturb * f, state.params, fresh)
        return state.replace(params=params)

    return Intervention(_no_state, apply)
