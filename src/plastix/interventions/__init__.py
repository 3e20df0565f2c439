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
from plastix.interventions.redo import ReDoConfig, recycle_neurons, redo, select_neurons
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
    "select_neurons", "ResetConfig", "reset", "ShrinkPerturbConfig", "shrink_perturb",
    "OptimizerConfig", "make_optimizer", "make_intervention",
]
