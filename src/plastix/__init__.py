"""plastix: measure and cure plasticity loss in deep reinforcement learning (JAX).

Subpackages: :mod:`plastix.nn` (networks that know their neurons), :mod:`plastix.metrics`
(dormant / GraMa / stagnant scores, ranks), :mod:`plastix.interventions` (ReDo, Reset,
Shrink & Perturb, weight decay), :mod:`plastix.experiments` (the papers' experiments) and
:mod:`plastix.report` (figures and tables).
"""

__version__ = "0.1.0"
