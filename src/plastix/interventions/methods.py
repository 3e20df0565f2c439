"""The one registry of plasticity methods: name → settings → builder.

Every agent, experiment and the CLI names methods by these registry names and builds them with
:func:`make_intervention`; nothing outside this module tests ``method == "redo"``. A method is

- an :class:`~plastix.interventions.base.Intervention` builder ``build(settings, topology,
  init_params)`` (ReDo, Reset, Shrink & Perturb, ...), applied by the loop at the end of every
  period when its :class:`~plastix.interventions.base.Trigger` fires; and/or
- an optimizer change (weight decay).

Adding a method (KNIFE, ReBorn, plasticity injection, CBP): write its settings dataclass (with a
``period`` field) and builder, add a field of that type to :class:`PlasticityConfig`, and one
:func:`register_method` call below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from plastix.interventions.base import (
    TRIGGERS,
    InitParams,
    Intervention,
    Trigger,
    check_choice,
    no_intervention,
    triggered,
)
from plastix.interventions.bundle import PlasticityBundle, bundle
from plastix.interventions.cbp import CBPConfig, cbp
from plastix.interventions.injection import InjectionConfig, plasticity_injection
from plastix.interventions.knife import KnifeConfig, knife
from plastix.interventions.reborn import ReBornConfig, reborn
from plastix.interventions.redo import ReDoConfig, redo
from plastix.interventions.reset import ResetConfig, reset
from plastix.interventions.shrink_perturb import ShrinkPerturbConfig, shrink_perturb
from plastix.interventions.weight_decay import OptimizerConfig
from plastix.nn.topology import Topology


@dataclasses.dataclass(frozen=True)
class Method:
    """One registered plasticity method.

    Attributes:
      name: the registry name (CLI value of ``--plasticity.method``).
      field: the :class:`PlasticityConfig` field holding its settings (``None``: no settings).
      build: ``build(settings, topology, init_params) -> Intervention`` or ``None`` (optimizer-only).
      needs_scores: the intervention reads the diagnostics (they are then computed every period).
      optimizer: ``optimizer(base, plasticity) -> OptimizerConfig`` or ``None`` (optimizer unchanged).
      default_trigger: the trigger of ``PlasticityConfig.trigger="default"`` (``period``: every
        ``<settings>.period`` updates; ``task_switch`` for the methods made for task switches;
        ``update``: the method acts in its per-update hook only and takes no trigger, e.g. CBP).
      program: ``program(settings) -> hashable``: the settings that decide the parameters the
        method adds and its forward pass (``Intervention.extend`` / ``forward``), for methods that
        change them (KNIFE, plasticity injection); ``None``: the method keeps the network as it is.
        Methods with equal programs can run in one compiled program
        (:class:`~plastix.interventions.bundle.PlasticityBundle`), also across methods: KNIFE and
        plasticity injection both return ``("injection slots", K)``, and their bundle allocates
        the union of their slots.
    """

    name: str
    field: str | None
    build: Callable[[Any, Topology, InitParams], Intervention] | None = None
    needs_scores: bool = False
    optimizer: Callable[[OptimizerConfig, Any], OptimizerConfig] | None = None
    default_trigger: str = "period"
    program: Callable[[Any], Any] | None = None


REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (its name must be new)."""
    if method.name in REGISTRY:
        raise ValueError(f"register_method: {method.name!r} is already registered")
    REGISTRY[method.name] = method
    return method


def _with_weight_decay(base: OptimizerConfig, plasticity: PlasticityConfig) -> OptimizerConfig:
    return dataclasses.replace(base, weight_decay=plasticity.weight_decay)


register_method(Method("none", None))
register_method(Method("redo", "redo", redo, needs_scores=True))
register_method(Method("reset", "reset", reset))
register_method(Method("shrink_perturb", "shrink_perturb", shrink_perturb))
register_method(Method("weight_decay", None, optimizer=_with_weight_decay))
register_method(
    Method(
        "knife",
        "knife",
        knife,
        needs_scores=True,
        default_trigger="task_switch",
        program=lambda s: ("injection slots", s.slots),
    )
)
register_method(
    Method(
        "injection",
        "injection",
        plasticity_injection,
        default_trigger="task_switch",
        program=lambda s: ("injection slots", s.slots),
    )
)
register_method(Method("reborn", "reborn", reborn, needs_scores=True))
register_method(Method("cbp", "cbp", cbp, default_trigger="update"))


def method_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


@dataclasses.dataclass(frozen=True)
class PlasticityConfig:
    """The plasticity treatment of a learner: one registered method, its trigger, weight decay.

    The same field set is used by every agent (DQN, DrQ(ε), SAC, ...).

    Attributes:
      method: a registry name: ``none``, ``redo`` (recycle dormant neurons), ``reset`` (last
        layers), ``shrink_perturb``, ``weight_decay`` (L2 on the optimizer only), ``knife``
        (neuron injection), ``injection`` (plasticity injection of the output heads) or ``reborn``
        (dormant neurons take over-active neurons' weights; mixer hidden layers by default) or
        ``cbp`` (continual backprop: low-utility mature neurons re-initialized after every update).
      trigger: when the intervention runs: ``period`` (every ``<method>.period`` updates),
        ``task_switch`` (at the end of a period in which the task switched), ``both``, or
        ``default``: the method's own (``task_switch`` for ``knife`` and ``injection``, ``period``
        for the others).
      redo: ReDo settings (used with ``method="redo"``).
      reset: Reset settings (used with ``method="reset"``).
      shrink_perturb: Shrink & Perturb settings (used with ``method="shrink_perturb"``).
      knife: KNIFE settings (used with ``method="knife"``).
      injection: plasticity-injection settings (used with ``method="injection"``).
      reborn: ReBorn settings (used with ``method="reborn"``).
      cbp: CBP settings (used with ``method="cbp"``; CBP takes no trigger).
      weight_decay: L2 weight decay of the optimizer (paper's best for DQN: 1e-5); 0 = off. With
        ``method="weight_decay"`` it must be > 0; with any other method it combines with it.
    """

    method: str = "none"
    trigger: str = "default"
    redo: ReDoConfig = ReDoConfig()
    reset: ResetConfig = ResetConfig()
    shrink_perturb: ShrinkPerturbConfig = ShrinkPerturbConfig()
    knife: KnifeConfig = KnifeConfig()
    injection: InjectionConfig = InjectionConfig()
    reborn: ReBornConfig = ReBornConfig()
    cbp: CBPConfig = CBPConfig()
    weight_decay: float = 0.0

    def __post_init__(self):
        check_choice("PlasticityConfig.method", self.method, method_names())
        check_choice("PlasticityConfig.trigger", self.trigger, ("default",) + TRIGGERS)
        if not self.weight_decay >= 0 or self.weight_decay == float("inf"):
            raise ValueError(f"PlasticityConfig.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.method == "weight_decay" and self.weight_decay == 0:
            raise ValueError("PlasticityConfig.weight_decay must be > 0 with method='weight_decay' (paper: 1e-5)")
        for name in self.unused_settings():
            if getattr(self, name) != _FIELD_DEFAULTS[name]:
                raise ValueError(
                    f"PlasticityConfig.{name} is set but method={self.method!r} does not use it "
                    f"(it would be ignored): leave it out or choose the method that reads it"
                )

    def unused_settings(self) -> tuple[str, ...]:
        """Fields this config's method never reads: the other methods' settings, and ``trigger``
        when the method has no intervention."""
        own = self.spec.field if self.spec.build is not None else None
        fields = tuple(m.field for m in REGISTRY.values() if m.field is not None and m.build is not None)
        unused = tuple(f for f in dict.fromkeys(fields) if f != own)
        return unused + (("trigger",) if own is None or self.spec.default_trigger == "update" else ())

    @property
    def spec(self) -> Method:
        return REGISTRY[self.method]

    @property
    def intervention(self) -> Any:
        """The settings of the method's intervention (``None`` when it has none)."""
        field = self.spec.field
        return None if field is None or self.spec.build is None else getattr(self, field)

    @property
    def period(self) -> int | None:
        """Updates between two periodic applications (``None``: no periodic intervention)."""
        settings = self.intervention
        if settings is None or self.resolved_trigger in ("task_switch", "update"):
            return None
        return settings.period

    @property
    def resolved_trigger(self) -> str:
        """``trigger``, with ``default`` replaced by the method's own default."""
        return self.spec.default_trigger if self.trigger == "default" else self.trigger

    @property
    def needs_scores(self) -> bool:
        return self.spec.needs_scores

    def check_loop_period(self, loop_period: int) -> None:
        """Interventions run only at period ends: their period must be a multiple of the loop's ``F``.

        Raises:
          ValueError: naming ``PlasticityConfig.<method>.period``.
        """
        if self.period is not None and self.period % loop_period:
            raise ValueError(
                f"PlasticityConfig.{self.spec.field}.period ({self.period}) must be a multiple of the loop's "
                f"period F={loop_period} (interventions run only at period ends)"
            )

    def optimizer(self, base: OptimizerConfig) -> OptimizerConfig:
        """``base`` with this config's weight decay (if any) switched on."""
        if self.weight_decay == 0:
            return base
        return _with_weight_decay(base, self)


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PlasticityConfig)}


def make_intervention(config: Any, topology: Topology, init_params: InitParams) -> Intervention:
    """The intervention of ``config``, wrapped with its trigger.

    Args:
      config: a :class:`PlasticityConfig`, a :class:`~plastix.interventions.bundle.PlasticityBundle`
        (several methods in one program, one per vmapped run), or the settings of one method (e.g. ``ReDoConfig``,
        then triggered every ``period`` updates), or ``None`` (no intervention).
      topology: the network's neuron layers.
      init_params: ``key -> params``, a fresh draw of the network's initializers.
    """
    if config is None:
        return no_intervention()
    if isinstance(config, PlasticityBundle):
        return bundle([make_intervention(member, topology, init_params) for member in config.members])
    if isinstance(config, PlasticityConfig):
        settings = config.intervention
        if settings is None:
            return no_intervention()
        built = config.spec.build(settings, topology, init_params)
        if config.resolved_trigger == "update":  # acts in its per-update hook only
            return built
        return triggered(built, Trigger.named(config.resolved_trigger, settings.period))
    for method in REGISTRY.values():
        if (
            method.build is not None
            and method.field is not None
            and isinstance(config, type(getattr(PlasticityConfig(), method.field)))
        ):
            built = method.build(config, topology, init_params)
            return built if method.default_trigger == "update" else triggered(built, Trigger(every=config.period))
    allowed = tuple(type(getattr(PlasticityConfig(), m.field)).__name__ for m in REGISTRY.values() if m.build) + (
        "PlasticityConfig",
        "None",
    )
    raise ValueError(f"make_intervention: got {type(config).__name__}, allowed values are {allowed}")
