"""Networks built from layers whose neurons plastix can see and edit."""

from plastix.nn.conv import ConvNet, nature_cnn, small_cnn
from plastix.nn.mlp import MLP
from plastix.nn.resnet import ImpalaResNet, impala_resnet
from plastix.nn.topology import (
    CAPTURE,
    PERTURB,
    Consumer,
    NeuronLayer,
    Neurons,
    ParamLayer,
    Probe,
    Slice,
    Topology,
    capture,
    get_path,
    layer_sizes,
    preactivation_shapes,
    set_path,
    validate,
)

__all__ = [
    "MLP",
    "ConvNet",
    "ImpalaResNet",
    "impala_resnet",
    "nature_cnn",
    "small_cnn",
    "Consumer",
    "NeuronLayer",
    "Neurons",
    "Topology",
    "ParamLayer",
    "Probe",
    "Slice",
    "CAPTURE",
    "PERTURB",
    "capture",
    "get_path",
    "set_path",
    "layer_sizes",
    "preactivation_shapes",
    "validate",
]
