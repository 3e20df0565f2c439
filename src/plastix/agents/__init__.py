"""Learners: one off-policy loop (:mod:`plastix.agents.off_policy`) shared by DQN, DrQ(ε) and SAC."""

from plastix.agents.dqn import DQNConfig, drq_epsilon_config, make_dqn
from plastix.agents.off_policy import (
    Agent,
    LoopConfig,
    Transition,
    make_train,
    n_step_return,
    n_step_targets,
    replay_schedule,
)
from plastix.agents.sac import SACConfig, make_sac

__all__ = [
    "Agent",
    "LoopConfig",
    "Transition",
    "make_train",
    "n_step_return",
    "n_step_targets",
    "replay_schedule",
    "DQNConfig",
    "drq_epsilon_config",
    "make_dqn",
    "SACConfig",
    "make_sac",
]
