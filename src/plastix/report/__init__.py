"""Statistics, figures and markdown reports of runs."""

from plastix.report.aggregate import final_values, improvement_ci, iqm_ci, probability_of_improvement
from plastix.report.figures import curve_grid, figure_legend, plot_curves, save_figure
from plastix.report.stats import Estimate, curve_ci, few_seeds_note, format_estimate, mean_ci

__all__ = [
    "iqm_ci",
    "improvement_ci",
    "probability_of_improvement",
    "final_values",
    "mean_ci",
    "curve_ci",
    "Estimate",
    "format_estimate",
    "few_seeds_note",
    "plot_curves",
    "curve_grid",
    "figure_legend",
    "save_figure",
]
