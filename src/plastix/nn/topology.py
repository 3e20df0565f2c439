"""Which parameters belong to which neuron: the one map that metrics and interventions use.

A *neuron layer* is a Dense or Conv module followed by an activation ``h = σ(z)``. Its
:class:`NeuronLayer` names the module (the path of the module whose output is ``z``), the
incoming kernel and bias, the activation, and every *consumer*: a kernel that reads ``h``
(its outgoing weights), with how a neuron maps to that kernel's input axis.

Any Flax Linen module works, ours or a user's: :func:`capture` runs one forward pass and
intercepts the outputs of the listed modules, so no module needs to ``sow`` anything.

Declaring the topology of your own module::

    class MyNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(64, name="fc1")(x))
            x = nn.relu(nn.Dense(64, name="fc2")(x))
            return nn.Dense(4, name="head")(x)

    topology = Topology.sequential(["fc1", "fc2"], output="head")

or, for any wiring, list the :class:`NeuronLayer` objects yourself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

Path = tuple[str, ...]
Params = Mapping[str, Any]

CONSUMER_KINDS = ("dense", "conv", "flatten")
LAYER_KINDS = ("dense", "conv")
FLATTEN_LAYOUTS = ("channels_last", "channels_first")


def _as_path(path: str | Sequence[str]) -> Path:
    if isinstance(path, str):
        return tuple(p for p in path.split("/") if p)
    return tuple(path)


@dataclasses.dataclass(frozen=True)
class Consumer:
    """A kernel that reads a neuron layer's activations (the neurons' outgoing weights).

    Attributes:
      kernel: path of the consumer kernel in ``params`` (e.g. ``("Dense_1", "kernel")``).
      kind: ``"dense"`` (neuron i is row i of a ``(N, out)`` kernel), ``"conv"`` (neuron i is
        input channel i, axis -2 of a ``(kh, kw, N, out)`` kernel) or ``"flatten"`` (a conv
        layer's ``(H, W, N)`` output is flattened into the rows of a dense kernel).
      layout: for ``"flatten"``: ``"channels_last"`` (row r belongs to channel ``r % N``; what
        ``x.reshape(batch, -1)`` of NHWC gives) or ``"channels_first"`` (row r belongs to
        channel ``r // (H*W)``; NCHW flattening).
    """

    kernel: Path
    kind: Literal["dense", "conv", "flatten"] = "dense"
    layout: Literal["channels_last", "channels_first"] = "channels_last"

    def __post_init__(self):
        object.__setattr__(self, "kernel", _as_path(self.kernel))
        if self.kind not in CONSUMER_KINDS:
            raise ValueError(f"Consumer.kind: got {self.kind!r}, allowed values are {CONSUMER_KINDS}")
        if self.layout not in FLATTEN_LAYOUTS:
            raise ValueError(
                f"Consumer.layout: got {self.layout!r}, allowed values are {FLATTEN_LAYOUTS}"
            )

    def input_mask(self, neuron_mask: Array, kernel_shape: Sequence[int]) -> Array:
        """Expand a neuron mask ``(N,)`` to a boolean mask of this consumer's kernel.

        The result has ``kernel_shape`` and is True on every outgoing weight of a masked neuron.
        """
        neuron_mask = jnp.asarray(neuron_mask, dtype=bool)
        n = neuron_mask.shape[0]
        if self.kind == "dense":
            if kernel_shape[0] != n:
                raise ValueError(
                    f"consumer {'/'.join(self.kernel)}: kernel has {kernel_shape[0]} input rows, "
                    f"the neuron layer has {n} neurons"
                )
            rows = neuron_mask
        elif self.kind == "conv":
            if kernel_shape[-2] != n:
                raise ValueError(
                    f"consumer {'/'.join(self.kernel)}: kernel has {kernel_shape[-2]} input "
                    f"channels, the neuron layer has {n} neurons"
                )
            shape = [1] * len(kernel_shape)
            shape[-2] = n
            return jnp.broadcast_to(neuron_mask.reshape(shape), tuple(kernel_shape))
        else:  # flatten
            n_rows = kernel_shape[0]
            if n_rows % n:
                raise ValueError(
                    f"consumer {'/'.join(self.kernel)}: {n_rows} kernel rows are not a multiple "
                    f"of the {n} channels of the flattened conv layer"
                )
            positions = n_rows // n
            if self.layout == "channels_last":
                rows = jnp.tile(neuron_mask, positions)
            else:
                rows = jnp.repeat(neuron_mask, positions)
        shape = [1] * len(kernel_shape)
        shape[0] = kernel_shape[0]
        return jnp.broadcast_to(rows.reshape(shape), tuple(kernel_shape))


@dataclasses.dataclass(frozen=True)
class NeuronLayer:
    """One hidden layer of neurons.

    Attributes:
      name: unique name used in metrics and reports (e.g. ``"torso/conv_0"``).
      module: path of the module whose output is the pre-activation ``z`` (e.g. ``("Conv_0",)``).
      kernel: path of the incoming kernel in ``params``; defaults to ``module + ("kernel",)``.
      bias: path of the bias, defaults to ``module + ("bias",)``; ``None`` for a layer without one.
      consumers: kernels that read this layer's activations (outgoing weights).
      kind: ``"dense"`` or ``"conv"`` (one neuron per output channel).
      activation: ``σ``; ``h = σ(z)``.
    """

    name: str
    module: Path
    consumers: tuple[Consumer, ...] = ()
    kernel: Path | None = None
    bias: Path | None | Literal["default"] = "default"
    kind: Literal["dense", "conv"] = "dense"
    activation: Callable[[Array], Array] = nn.relu

    def __post_init__(self):
        module = _as_path(self.module)
        object.__setattr__(self, "module", module)
        object.__setattr__(
            self, "kernel", _as_path(self.kernel) if self.kernel is not None else module + ("kernel",)
        )
        bias = module + ("bias",) if self.bias == "default" else self.bias
        object.__setattr__(self, "bias", None if bias is None else _as_path(bias))
        object.__setattr__(self, "consumers", tuple(self.consumers))
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"NeuronLayer.kind: got {self.kind!r}, allowed values are {LAYER_KINDS}")


@dataclasses.dataclass(frozen=True)
class Topology:
    """All hidden neuron layers of a network, in forward order, plus its output kernel(s).

    The output layer is never a neuron layer; ``output`` lists its kernel path(s) so that
    interventions such as Reset can find it.
    """

    layers: tuple[NeuronLayer, ...]
    output: tuple[Path, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "output", tuple(_as_path(p) for p in self.output))
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"Topology: neuron layer names must be unique, got {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def __getitem__(self, name: str) -> NeuronLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no neuron layer {name!r}; layers are {self.names}")

    def prefixed(self, prefix: str | Sequence[str]) -> "Topology":
        """The same topology for a module nested under ``prefix`` (e.g. a torso inside an agent)."""
        pre = _as_path(prefix)
        tag = "/".join(pre)

        def move(path):
            return None if path is None else pre + tuple(path)

        layers = tuple(
            dataclasses.replace(
                layer,
                name=f"{tag}/{layer.name}",
                module=move(layer.module),
                kernel=move(layer.kernel),
                bias=move(layer.bias),
                consumers=tuple(dataclasses.replace(c, kernel=move(c.kernel)) for c in layer.consumers),
            )
            for layer in self.layers
        )
        return Topology(layers, tuple(move(p) for p in self.output))

    @classmethod
    def sequential(
        cls,
        modules: Sequence[str | Sequence[str]],
        output: str | Sequence[str],
        kinds: Sequence[str] | None = None,
        activation: Callable[[Array], Array] = nn.relu,
        flatten_layout: str = "channels_last",
        names: Sequence[str] | None = None,
    ) -> "Topology":
        """Topology of a plain chain ``module_0 -> σ -> module_1 -> σ -> ... -> output``.

        Args:
          modules: module paths of the hidden layers, in order (``"Conv_0"`` or ``("torso", "Conv_0")``).
          output: module path of the output layer (its kernel is the last consumer).
          kinds: ``"dense"`` / ``"conv"`` per hidden layer (default: all dense). A conv layer
            followed by a dense one is read as conv → flatten → dense.
          activation: the activation after every hidden layer.
          flatten_layout: how a conv output is flattened (see :class:`Consumer`).
          names: layer names (default: the module paths joined by ``/``).
        """
        paths = [_as_path(m) for m in modules]
        kinds = list(kinds) if kinds is not None else ["dense"] * len(paths)
        if len(kinds) != len(paths):
            raise ValueError(f"Topology.sequential: {len(kinds)} kinds for {len(paths)} modules")
        names = list(names) if names is not None else ["/".join(p) for p in paths]
        out_path = _as_path(output)
        next_modules = paths[1:] + [out_path]
        next_kinds = kinds[1:] + ["dense"]
        layers = []
        for path, kind, nxt, nxt_kind, name in zip(paths, kinds, next_modules, next_kinds, names):
            if kind == "conv" and nxt_kind == "dense":
                consumer = Consumer(nxt + ("kernel",), "flatten", flatten_layout)
            elif kind == "dense" and nxt_kind == "conv":
                raise ValueError("Topology.sequential: a dense layer cannot feed a conv layer")
            else:
                consumer = Consumer(nxt + ("kernel",), nxt_kind)
            layers.append(NeuronLayer(name, path, (consumer,), kind=kind, activation=activation))
        return cls(tuple(layers), (out_path + ("kernel",),))


# ---------------------------------------------------------------------------------------------
# Parameter access by path


def get_path(tree: Params, path: Path) -> Any:
    """``tree[p0][p1]...`` with an error naming the missing key."""
    node = tree
    for i, key in enumerate(path):
        try:
            node = node[key]
        except (KeyError, TypeError):
            raise KeyError(
                f"no parameter at {'/'.join(path)} (missing {key!r} after {'/'.join(path[:i]) or 'root'})"
            ) from None
    return node


def set_path(tree: Params, path: Path, value: Any) -> dict:
    """A copy of nested dict ``tree`` with ``tree[path] = value`` (untouched branches shared)."""
    if not path:
        return value
    head, *rest = path
    new = dict(tree)
    new[head] = set_path(tree[head], tuple(rest), value)
    return new


def validate(topology: Topology, params: Params) -> None:
    """Check that every path of ``topology`` exists in ``params`` and shapes agree.

    Raises:
      KeyError / ValueError naming the offending layer and path.
    """
    for layer in topology.layers:
        kernel = get_path(params, layer.kernel)
        n = kernel.shape[-1]
        if layer.bias is not None and get_path(params, layer.bias).shape != (n,):
            raise ValueError(f"layer {layer.name}: bias shape does not match {n} neurons")
        for consumer in layer.consumers:
            consumer.input_mask(jnp.zeros((n,), bool), get_path(params, consumer.kernel).shape)
    for path in topology.output:
        get_path(params, path)


def layer_sizes(topology: Topology, params: Params) -> dict[str, int]:
    """Number of neurons of each layer, ``{name: N}``."""
    return {layer.name: get_path(params, layer.kernel).shape[-1] for layer in topology.layers}


# ---------------------------------------------------------------------------------------------
# One forward pass that captures pre-activations (and lets gradients flow into them)


def capture(
    apply_fn: Callable[..., Any],
    topology: Topology,
    perturbations: Mapping[str, Array] | None = None,
) -> Callable[..., tuple[Any, dict[str, Array]]]:
    """Wrap ``apply_fn`` so that it also returns every neuron layer's pre-activation ``z``.

    ``capture(model.apply, topology)(variables, x)`` returns ``(output, {name: z})`` where
    ``z`` has the module output's shape, e.g. ``(batch, N)`` or ``(batch, H, W, N)``; the
    activation is ``layer.activation(z)``. When ``perturbations`` maps layer names to arrays of
    ``z``'s shape, they are added to ``z`` inside the forward pass: the gradient of a loss with
    respect to a zero perturbation is ``∂L/∂z``.
    """
    by_module = {layer.module: layer.name for layer in topology.layers}

    def wrapped(*args, **kwargs):
        captured: dict[str, Array] = {}

        def interceptor(next_fun, f_args, f_kwargs, context):
            out = next_fun(*f_args, **f_kwargs)
            if context.method_name != "__call__":
                return out
            name = by_module.get(tuple(context.module.path))
            if name is None:
                return out
            if perturbations is not None and name in perturbations:
                out = out + perturbations[name]
            captured[name] = out
            return out

        with nn.intercept_methods(interceptor):
            output = apply_fn(*args, **kwargs)
        missing = [n for n in by_module.values() if n not in captured]
        if missing:
            raise ValueError(
                f"capture: modules of layers {missing} were not called in the forward pass; "
                "check the `module` paths of the topology"
            )
        return output, captured

    return wrapped


def preactivation_shapes(
    apply_fn: Callable[..., Any], topology: Topology, *args, **kwargs
) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of every layer's ``z`` for the given inputs (no FLOPs spent)."""
    return jax.eval_shape(lambda *a, **k: capture(apply_fn, topology)(*a, **k)[1], *args, **kwargs)
