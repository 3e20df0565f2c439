"""Reset of the last k layers (Nikishin et al. 2022): fresh weights and fresh optimizer moments."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from plastix.interventions.base import (
    InitParams,
    Intervention,
    TrainState,
    _no_state,
    mark,
    reset_optimizer_elements,
    zeros_like_bool,
)
from plastix.nn.topology import Params, Path, Topology, get_path, set_path


@dataclasses.dataclass(frozen=True)
class ResetConfig:
    """Reset settings.

    Attributes:
      last_k: number of parameterized layers to reset, counted from the output (1 = output layer
        only, the paper's Atari baseline).
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


def layer_parameter_paths(topology: Topology, params: Params) -> list[list[Path]]:
    """Parameter paths per layer in forward order: hidden neuron layers, then output layer(s)."""
    groups = [[layer.kernel] + ([layer.bias] if layer.bias is not None else []) for layer in topology.layers]
    for kernel in topology.output:
        bias = kernel[:-1] + ("bias",)
        try:
            get_path(params, bias)
            groups.append([kernel, bias])
        except KeyError:
            groups.append([kernel])
    return groups


def reset_layers(state: TrainState, paths: list[Path], fresh_params: Params, reset_optimizer: bool) -> TrainState:
    """Replace the parameters at ``paths`` by their fresh draw (and zero their optimizer moments)."""
    params, touched = state.params, zeros_like_bool(state.params)
    for path in paths:
        params = set_path(params, path, get_path(fresh_params, path))
        touched = mark(touched, path, jnp.ones(get_path(params, path).shape, bool))
    opt_state = reset_optimizer_elements(state.tx, state.opt_state, touched) if reset_optimizer else state.opt_state
    return state.replace(params=params, opt_state=opt_state)


def reset(config: ResetConfig, topology: Topology, init_params: InitParams) -> Intervention:
    """Reset the last ``config.last_k`` layers as an :class:`Intervention`.

    Raises:
      ValueError: when ``last_k`` exceeds the network's number of layers (checked at ``init``).
    """

    def groups_of(params):
        groups = layer_parameter_paths(topology, params)
        if config.last_k > len(groups):
            raise ValueError(
                f"ResetConfig.last_k: got {config.last_k}, allowed values are 1..{len(groups)} "
                f"(the network has {len(groups)} layers)"
            )
        return [p for group in groups[-config.last_k :] for p in group]

    def init(params):
        groups_of(params)
        return _no_state(params)

    def apply(key, state, scores):
        return reset_layers(state, groups_of(state.params), init_params(key), config.reset_optimizer)

    return Intervention(init, apply)
