"""Multi-agent value factorization (VDN, QMIX, QPLEX): one learner, three mixers (:mod:`.common`)."""

from plastix.agents.marl.common import MIXERS, FactorizedQ, MARLConfig, lambda_returns, make_marl, make_mixer

__all__ = ["MIXERS", "FactorizedQ", "MARLConfig", "lambda_returns", "make_marl", "make_mixer"]
