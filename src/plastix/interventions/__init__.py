"""Interventions against plasticity loss: pure ``(key, train_state, scores) -> train_state`` functions.

``make_intervention(config, topology, init_params)`` turns a config into an :class:`Intervention`
already gated by the config's period.
"""

from __future__ import annotations

from typing import Union

from plastix.interventions.base import (
    InitParams,
    Intervention,
    TrainState,
    every,
    no_intervention,
    reset_optimizer_elements,
    tree_select,
)
from plastix.interventions.redo import ReDoConfig, recycle_neurons, redo, select_neurons, zero_outgoing
from plastix.interventions.reset import ResetConfig, reset
from plastix.interventions.shrink_perturb import ShrinkPerturbConfig, shrink_perturb
from plastix.interventions.weight_decay import OptimizerConfig, make_optimizer
from plastix.nn.topology import Topology

InterventionConfig = Union[None, ReDoConfig, ResetConfig, ShrinkPerturbConfig]
_BUILDERS = {ReDoConfig: redo, ResetConfig: reset, ShrinkPerturbConfig: shrink_perturb}


def make_intervention(config: InterventionConfig, topology: Topology, init_params: InitParams) -> Intervention:
    """Build the intervention for ``config`` (``None`` = no intervention), gated by ``config.period``."""
    if config is None:
        return no_intervention()
    builder = _BUILDERS.get(type(config))
    if builder is None:
        allowed = tuple(c.__name__ for c in _BUILDERS) + ("None",)
        raise ValueError(f"intervention: got {type(config).__name__}, allowed values are {allowed}")
    return every(builder(config, topology, init_params), config.period)


__all__ = [
    "InitParams", "Intervention", "InterventionConfig", "TrainState", "every", "no_intervention",
    "tree_select", "reset_optimizer_elements", "ReDoConfig", "redo", "recycle_neurons",
    "select_neurons", "zero_outgoing", "ResetConfig", "reset", "ShrinkPerturbConfig", "shrink_perturb",
    "OptimizerConfig", "make_optimizer", "make_intervention",
]


import dataclasses as _dc

METHODS = ("none", "redo", "reset", "shrink_perturb")


@_dc.dataclass(frozen=True)
class PlasticityConfig:
    """The plasticity treatment of a learner: one intervention plus optional weight decay.

    The same field set is used by every agent (DQN, DrQ(ε), SAC, ...).

    Attributes:
      method: ``none``, ``redo`` (recycle dormant neurons), ``reset`` (last layers) or
        ``shrink_perturb``.
      redo: ReDo settings (used with ``method="redo"``).
      reset: Reset settings (used with ``method="reset"``).
      shrink_perturb: Shrink & Perturb settings (used with ``method="shrink_perturb"``).
      weight_decay: L2 weight decay added to the optimizer (paper's best for DQN: 1e-5); 0 = off.
        Combines with any method.
    """

    method: str = "none"
    redo: ReDoConfig = ReDoConfig()
    reset: ResetConfig = ResetConfig()
    shrink_perturb: ShrinkPerturbConfig = ShrinkPerturbConfig()
    weight_decay: float = 0.0

    def __post_init__(self):
        from plastix.interventions.base import check_choice

        check_choice("PlasticityConfig.method", self.method, METHODS)
        if self.weight_decay < 0:
            raise ValueError(f"PlasticityConfig.weight_decay must be >= 0, got {self.weight_decay}")

    @property
    def intervention(self) -> InterventionConfig:
        """The config :func:`make_intervention` takes (``None`` for ``method="none"``)."""
        return None if self.method == "none" else getattr(self, self.method)

    @property
    def period(self) -> int | None:
        return None if self.method == "none" else self.intervention.period

    @property
    def needs_scores(self) -> bool:
        return self.method == "redo"

    def optimizer(self, base: OptimizerConfig) -> OptimizerConfig:
        """``base`` with this config's weight decay (if any) switched on."""
        if self.weight_decay == 0:
            return base
        return _dc.replace(base, weight_decay=self.weight_decay)


__all__ += ["PlasticityConfig", "METHODS"]
