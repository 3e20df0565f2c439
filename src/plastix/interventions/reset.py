"""Reset of the last k layers (Nikishin et al. 2022): fresh weights and fresh optimizer moments."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax.numpy as jnp

from plastix.interventions.base import (
    InitParams,
    Intervention,
    TrainState,
    _no_state,
    mark,
    zeros_like_bool,
)
from plastix.nn.topology import Params, Path, Topology, get_path, set_path


@dataclasses.dataclass(frozen=True)
class ResetConfig:
    """Reset settings.

    Attributes:
      last_k: number of parameterized layers to reset, counted from every output head of each
        network along the layer graph (1 = the output layers only, the paper's Atari baseline);
        see :func:`last_layers`.
      period: reset every ``period`` updates (paper: 100,000 gradient steps on Atari).
      reset_optimizer: zero the optimizer moments of reset parameters.
    """

    last_k: int = 1
    period: int = 100_000
    reset_optimizer: bool = True

    def __post_init__(self):
        if self.last_k < 1:
            raise ValueError(f"ResetConfig.last_k must be >= 1, got {self.last_k}")
        if self.period < 1:
            raise ValueError(f"ResetConfig.period must be >= 1 update, got {self.period}")


def leaf_paths(params: Params, prefix: Path) -> list[Path]:
    """Paths of every array under ``prefix`` (a module path or a parameter path)."""
    node = get_path(params, prefix)
    if not isinstance(node, Mapping):
        return [tuple(prefix)]
    return [p for key in node for p in leaf_paths(params, tuple(prefix) + (key,))]


def last_layers(topology: Topology, last_k: int) -> list[str]:
    """Names of the layers within ``last_k`` of an output head of their network.

    Depth is counted along the real layer graph from every output head of each group
    (:meth:`Topology.depths`): both heads of a twin critic have depth 1; in a ResNet the conv
    that writes last into the residual stream is nearer the output than the convs before it; an
    agent network and a mixer are counted separately. A group with fewer layers is reset whole.

    Raises:
      ValueError: when ``last_k`` exceeds the deepest layer's depth.
    """
    depths = topology.depths()
    deepest = max(depths.values())
    if last_k > deepest:
        raise ValueError(
            f"ResetConfig.last_k: got {last_k}, allowed values are 1..{deepest} "
            f"(the deepest network has {deepest} layers)"
        )
    return [name for name, depth in depths.items() if depth <= last_k]


def layer_parameter_paths(topology: Topology, params: Params, last_k: int) -> list[Path]:
    """Every parameter path of the layers :func:`last_layers` selects."""
    paths = [
        p
        for name in last_layers(topology, last_k)
        for prefix in topology.layer_params(name)
        for p in leaf_paths(params, prefix)
    ]
    return list(dict.fromkeys(paths))


def reset_layers(state: TrainState, paths: list[Path], fresh_params: Params, reset_optimizer: bool) -> TrainState:
    """Replace the parameters at ``paths`` by their fresh draw (and zero their optimizer moments)."""
    params, touched = state.params, zeros_like_bool(state.params)
    for path in paths:
        params = set_path(params, path, get_path(fresh_params, path))
        touched = mark(touched, path, jnp.ones(get_path(params, path).shape, bool))
    state = state.replace(params=params)
    return state.with_fresh_moments(touched) if reset_optimizer else state


def reset(config: ResetConfig, topology: Topology, init_params: InitParams) -> Intervention:
    """Reset the last ``config.last_k`` layers as an :class:`Intervention`.

    Raises:
      ValueError: when ``last_k`` exceeds the network's number of layers (checked at ``init``).
    """

    def groups_of(params):
        return layer_parameter_paths(topology, params, config.last_k)

    def init(params):
        groups_of(params)
        return _no_state(params)

    def apply(key, state, scores, context):
        return reset_layers(state, groups_of(state.params), init_params(key), config.reset_optimizer)

    return Intervention(init, apply)
