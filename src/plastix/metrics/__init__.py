"""Pure, jittable plasticity metrics: array level (``(..., N) -> (N,)``) and network level."""

from plastix.metrics.network import (
    Diagnostics,
    DiagnosticsConfig,
    GroupDiagnostics,
    LayerDiagnostics,
    diagnose,
    network_fraction,
    summarize,
)
from plastix.metrics.neurons import (
    EPS,
    active_fraction,
    dormant_scores,
    grama_scores,
    overlap_coefficient,
    preactivation_grama_scores,
    stagnant_scores,
    stagnation_ratios,
)
from plastix.metrics.representation import effective_rank, srank

__all__ = [
    "EPS",
    "dormant_scores",
    "grama_scores",
    "preactivation_grama_scores",
    "stagnation_ratios",
    "stagnant_scores",
    "overlap_coefficient",
    "active_fraction",
    "effective_rank",
    "srank",
    "Diagnostics",
    "DiagnosticsConfig",
    "GroupDiagnostics",
    "LayerDiagnostics",
    "diagnose",
    "network_fraction",
    "summarize",
]
