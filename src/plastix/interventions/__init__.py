"""Interventions against plasticity loss: pure ``(key, train_state, scores, context) -> train_state``.

``make_intervention(plasticity_config, topology, init_params)`` builds the registered method of a
:class:`PlasticityConfig` (see :mod:`plastix.interventions.methods`) wrapped with its trigger.
"""

from __future__ import annotations

from plastix.interventions.base import (
    TRIGGERS,
    Context,
    InitParams,
    Intervention,
    Tally,
    TrainState,
    Trigger,
    ZeroPreserving,
    create_train_state,
    every,
    no_intervention,
    reset_optimizer_elements,
    tree_select,
    triggered,
)
from plastix.interventions.bundle import BundleState, PlasticityBundle, assign_members, bundle, group_key, program_key
from plastix.interventions.cbp import CBPConfig, cbp
from plastix.interventions.injection import InjectionConfig, plasticity_injection
from plastix.interventions.knife import KnifeConfig, knife
from plastix.interventions.methods import (
    REGISTRY,
    Method,
    PlasticityConfig,
    make_intervention,
    method_names,
    register_method,
)
from plastix.interventions.reborn import ReBornConfig, reborn
from plastix.interventions.redo import ReDoConfig, recycle_neurons, redo, select_neurons, zero_outgoing
from plastix.interventions.reset import ResetConfig, reset
from plastix.interventions.shrink_perturb import ShrinkPerturbConfig, shrink_perturb
from plastix.interventions.weight_decay import OptimizerConfig, make_optimizer

METHODS = method_names()

__all__ = [
    "InitParams",
    "Intervention",
    "TrainState",
    "create_train_state",
    "Context",
    "Tally",
    "Trigger",
    "TRIGGERS",
    "every",
    "triggered",
    "no_intervention",
    "tree_select",
    "reset_optimizer_elements",
    "ZeroPreserving",
    "ReDoConfig",
    "redo",
    "recycle_neurons",
    "select_neurons",
    "zero_outgoing",
    "KnifeConfig",
    "knife",
    "InjectionConfig",
    "plasticity_injection",
    "ReBornConfig",
    "CBPConfig",
    "cbp",
    "reborn",
    "ResetConfig",
    "reset",
    "ShrinkPerturbConfig",
    "shrink_perturb",
    "OptimizerConfig",
    "make_optimizer",
    "make_intervention",
    "PlasticityConfig",
    "PlasticityBundle",
    "BundleState",
    "bundle",
    "assign_members",
    "program_key",
    "group_key",
    "METHODS",
    "REGISTRY",
    "Method",
    "register_method",
    "method_names",
]
