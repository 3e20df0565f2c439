"""Weight decay / L2: an optimizer-side intervention, built with optax."""

from __future__ import annotations

import dataclasses

import optax

from plastix.interventions.base import ZeroPreserving, check_choice

OPTIMIZERS = ("adam", "sgd", "rmsprop")
DECAY_MODES = ("l2", "decoupled")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer, with optional weight decay.

    Attributes:
      name: ``adam``, ``sgd`` or ``rmsprop``.
      learning_rate: step size.
      eps: ε of Adam / RMSProp (paper DQN: 1.5e-4 with Adam's lr 6.25e-5).
      momentum: momentum of ``sgd`` (0: plain SGD) and of ``rmsprop`` (a trace of the scaled
        updates, as PyTorch's ``RMSprop(momentum=...)``); ``adam`` has its own (β₁) and rejects it.
      rms_decay: ``rmsprop``'s decay of the squared-gradient average (PyTorch's α; PyMARL: 0.99).
      weight_decay: decay rate (paper's best for DQN: 1e-5); 0 disables it.
      decay_mode: ``l2`` adds ``rate·θ`` to the gradient before the optimizer (an L2 penalty);
        ``decoupled`` subtracts ``lr·rate·θ`` after it (AdamW-style).
      max_grad_norm: clip gradients to this global norm (0 disables).
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    eps: float = 1e-8
    momentum: float = 0.0
    rms_decay: float = 0.9
    weight_decay: float = 0.0
    decay_mode: str = "l2"
    max_grad_norm: float = 0.0

    def __post_init__(self):
        check_choice("OptimizerConfig.name", self.name, OPTIMIZERS)
        check_choice("OptimizerConfig.decay_mode", self.decay_mode, DECAY_MODES)
        if self.learning_rate <= 0:
            raise ValueError(f"OptimizerConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"OptimizerConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"OptimizerConfig.momentum must be in [0, 1), got {self.momentum}")
        if self.momentum > 0 and self.name == "adam":
            raise ValueError(
                "OptimizerConfig.momentum is not used by 'adam' (its β₁ is fixed at 0.9); "
                "set momentum=0 or use name='sgd' / 'rmsprop'"
            )
        if not 0 <= self.rms_decay < 1:
            raise ValueError(f"OptimizerConfig.rms_decay must be in [0, 1), got {self.rms_decay}")
        if self.eps <= 0:
            raise ValueError(f"OptimizerConfig.eps must be > 0, got {self.eps}")
        if self.max_grad_norm < 0:
            raise ValueError(f"OptimizerConfig.max_grad_norm must be >= 0, got {self.max_grad_norm}")


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """The optax transformation described by ``config``; a :class:`ZeroPreserving` one unless an
    L2 penalty feeds a stateful step (Adam, RMSProp, momentum)."""
    steps = []
    if config.max_grad_norm > 0:
        steps.append(optax.clip_by_global_norm(config.max_grad_norm))
    if config.weight_decay > 0 and config.decay_mode == "l2":
        steps.append(optax.add_decayed_weights(config.weight_decay))
    if config.name == "adam":
        steps.append(optax.scale_by_adam(eps=config.eps))
    elif config.name == "rmsprop":
        steps.append(optax.scale_by_rms(decay=config.rms_decay, eps=config.eps))
    if config.name != "adam" and config.momentum > 0:
        steps.append(optax.trace(decay=config.momentum))
    if config.weight_decay > 0 and config.decay_mode == "decoupled":
        steps.append(optax.add_decayed_weights(config.weight_decay))
    steps.append(optax.scale(-config.learning_rate))
    chain = optax.chain(*steps)
    l2 = config.weight_decay > 0 and config.decay_mode == "l2"
    stateful = config.name in ("adam", "rmsprop") or config.momentum > 0
    return chain if l2 and stateful else ZeroPreserving(*chain)
