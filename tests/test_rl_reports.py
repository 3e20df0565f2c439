"""RL experiment plumbing that needs no training: cells, pruning surgery, IQM reports."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from plastix.experiments import dormant
from plastix.interventions.redo import zero_outgoing as prune_neurons
from plastix.nn import MLP
from plastix.report import iqm_ci


def test_replay_ratio_cells_cover_the_grid_and_scale_target_updates():
    config = dormant.DormantExperimentConfig()
    cells = dormant.replay_ratio_cells(config)
    assert {(lab["rr"], lab["method"]) for lab, _ in cells} == {
        (rr, m) for rr in (0.25, 0.5, 1, 2) for m in ("none", "redo", "reset", "weight_decay")
    }
    for labels, cell in cells:
        assert cell.loop.replay_ratio == labels["rr"]
        assert cell.plasticity.method == labels["method"]
        assert (cell.plasticity.weight_decay > 0) == (labels["method"] == "weight_decay")
    paper = dormant.replay_ratio_cells(dataclasses.replace(config, scale="paper"))
    assert all(c.loop.env_steps == 1_000_000 and c.dqn.target_update_period == 2_000 for _, c in paper)
    subset = dormant.replay_ratio_cells(dormant.DormantExperimentConfig(replay_ratios=(1.0,), methods=("none", "redo")))
    assert [(lab["rr"], lab["method"]) for lab, _ in subset] == [(1.0, "none"), (1.0, "redo")]


def test_atari_cells_store_single_frames_in_a_full_buffer_and_use_wider_shifts():
    config = dormant.DormantExperimentConfig(env="atari/pong", scale="paper")
    (_, dqn), (_, drq) = dormant.growth_cells(config)
    assert dqn.env == "atari/pong" and dqn.loop.buffer_size == 1_000_000 and dqn.loop.single_frames
    assert drq.dqn.augment_shift == 4
    minatar = dormant.growth_cells(dormant.DormantExperimentConfig(scale="paper"))
    assert minatar[0][1].loop.buffer_size == 1_000_000 and minatar[1][1].dqn.augment_shift == 1


def test_experiment_config_errors_name_the_field():
    with pytest.raises(ValueError, match="scale"):
        dormant.DormantExperimentConfig(scale="huge")
    with pytest.raises(ValueError, match="method"):
        dormant.plasticity(dormant.DormantExperimentConfig(), "magic")
    with pytest.raises(ValueError, match="methods.*allowed values"):
        dormant.DormantExperimentConfig(methods=("none", "magic"))
    with pytest.raises(ValueError, match="replay_ratios"):
        dormant.DormantExperimentConfig(replay_ratios=(0.0,))
    for field in ("seeds", "env_steps"):
        with pytest.raises(ValueError, match=rf"DormantExperimentConfig\.{field}: got -1, must be >= 0"):
            dormant.DormantExperimentConfig(**{field: -1})


def test_pruning_removes_exactly_the_masked_neurons_contribution():
    net = MLP((8, 8), 3)
    params = net.init(jax.random.PRNGKey(0), jnp.ones((1, 4)))["params"]
    topology = net.topology()
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
    none = {name: jnp.zeros(8, bool) for name in topology.names}
    assert jnp.array_equal(
        net.apply({"params": prune_neurons(params, topology, none)}, x), net.apply({"params": params}, x)
    )
    mask = jnp.arange(8) < 3
    pruned = prune_neurons(params, topology, {"hidden_0": mask, "hidden_1": jnp.zeros(8, bool)})
    assert jnp.all(pruned["hidden_1"]["kernel"][:3] == 0)
    assert jnp.array_equal(pruned["hidden_1"]["kernel"][3:], params["hidden_1"]["kernel"][3:])
    # same as a network whose first three hidden_0 neurons output 0
    silenced = jax.tree.map(lambda a: a, params)
    silenced["hidden_0"] = {
        "kernel": params["hidden_0"]["kernel"].at[:, :3].set(0),
        "bias": params["hidden_0"]["bias"].at[:3].set(0),
    }
    np.testing.assert_allclose(net.apply({"params": pruned}, x), net.apply({"params": silenced}, x), rtol=1e-6)


def test_iqm_matches_hand_computation():
    scores = {"a": np.array([[1.0], [2.0], [3.0], [4.0], [100.0], [-50.0], [5.0], [6.0]])}
    point, low, high, n = iqm_ci(scores, reps=200)["a"]
    assert point == pytest.approx(np.mean([2, 3, 4, 5]))  # middle 50% of 8 runs
    assert low <= point <= high


def test_probability_of_improvement_and_its_ci_equal_rliable():
    """P(X > Y) with ties and unequal run counts, and its stratified independent bootstrap CI: the same
    numbers as rliable's ``probability_of_improvement`` through ``get_interval_estimates``."""
    from rliable import library as rly
    from rliable import metrics

    from plastix.report import improvement_ci, probability_of_improvement

    rs = np.random.RandomState(3)
    ties = (np.round(rs.rand(7, 3) * 3), np.round(rs.rand(5, 3) * 3))
    pairs = {"normal": (rs.randn(10, 1), rs.randn(10, 1)), "ties": ties}
    for name, (x, y) in pairs.items():
        assert probability_of_improvement(x, y) == pytest.approx(metrics.probability_of_improvement(x, y), abs=1e-12)
        np.random.seed(0)
        point, interval = rly.get_interval_estimates({name: (x, y)}, metrics.probability_of_improvement, reps=300)
        ours = improvement_ci(x, y, reps=300, seed=0)
        assert ours.value == pytest.approx(point[name], abs=1e-12)
        assert (ours.low, ours.high) == pytest.approx(tuple(interval[name][:, 0]), abs=1e-12)
        assert ours.n == min(len(x), len(y))
    assert tuple(improvement_ci(np.ones((6, 1)), np.zeros((6, 1)), reps=50)[:3]) == (1.0, 1.0, 1.0)
    assert tuple(improvement_ci(np.zeros((6, 2)), np.zeros((4, 2)), reps=50)[:3]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="tasks"):
        probability_of_improvement(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="NaN"):
        improvement_ci(np.array([[1.0], [np.nan]]), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="reps"):
        improvement_ci(np.zeros((2, 1)), np.zeros((2, 1)), reps=0)


def test_iqm_ci_equals_rliable():
    """The vectorized bootstrap draws rliable's resamples: the same point, the same interval."""
    from rliable import library as rly
    from rliable import metrics

    rs = np.random.RandomState(3)
    scores = {"a": rs.randn(10, 1), "b": rs.randn(7, 3) * 5, "ties": np.round(rs.rand(8, 2) * 4)}
    np.random.seed(0)
    point, interval = rly.get_interval_estimates(scores, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=300)
    ours = iqm_ci(scores, reps=300, seed=0)
    for group in scores:
        assert ours[group].value == pytest.approx(point[group][0], rel=1e-12)
        assert (ours[group].low, ours[group].high) == pytest.approx(tuple(interval[group][:, 0]), rel=1e-12)
        assert ours[group].n == len(scores[group])
    nan = iqm_ci({"x": np.array([[1.0], [np.nan], [2.0], [3.0]])}, reps=10)["x"]
    assert np.isnan(nan.value)
    for bad in (np.zeros((0, 1)), np.ones(4)):
        with pytest.raises(ValueError, match="scores\\['x'\\]"):
            iqm_ci({"x": bad})
    with pytest.raises(ValueError, match="reps"):
        iqm_ci({"x": np.ones((3, 1))}, reps=0)


def _fake_table():
    rows = []
    for rr in (0.25, 1):
        for method in ("none", "redo"):
            for seed in range(3):
                for period in (1, 2):
                    rows.append(
                        {
                            "rr": rr,
                            "method": method,
                            "seed": seed,
                            "period": period,
                            "env_steps": 1000 * period,
                            "eval_return": float(seed + period) if period == 2 else np.nan,
                            "q/dormant_fraction": 0.1 * rr * (method == "none"),
                            "q/layer/conv_0/dormant_fraction": 0.2,
                            "env": "Breakout-MinAtar",
                        }
                    )
    return pd.DataFrame(rows)


def test_report_writes_figures_and_iqm_table(tmp_path):
    df = _fake_table()
    files = dormant.write_report("dqn-replay-ratio", dormant.DormantExperimentConfig(), df, str(tmp_path))
    names = {f.rsplit("/", 1)[-1] for f in files}
    assert {
        "report.md",
        "replay_ratio.png",
        "q_dormant_fraction.png",
        "eval_return.png",
        "dormant_per_layer.png",
    } <= names
    text = (tmp_path / "report.md").read_text()
    assert "| rr | method | IQM return | q dormant |" in text
    assert "This run: 4 settings: 0.25 none, 0.25 redo, 1.0 none, 1.0 redo." in text  # not only the default
    rows = dormant.summary("dqn-replay-ratio", df)
    none_1 = next(r for r in rows if r["rr"] == 1 and r["method"] == "none")
    assert none_1["q dormant"][0] == pytest.approx(0.1)
    assert none_1["iqm_return"][0] == pytest.approx(3.0)  # final evals 2, 3, 4
    assert "‡" in text and "fewer than 5 seeds" in text  # 3 seeds: the CI is flagged, not presented as meaningful


def test_estimates_flag_fewer_than_five_seeds():
    from plastix.report import format_estimate, mean_ci

    assert "‡" in format_estimate(mean_ci([0.1, 0.2, 0.3]), percent=True)
    assert "no CI" in format_estimate(mean_ci([0.5]))
    five = format_estimate(mean_ci([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert "‡" not in five and five.startswith("3.0 [")
    assert format_estimate(mean_ci([np.nan])) == "–"


def test_curve_ci_equals_mean_ci_step_by_step():
    """The curves' CIs resample all complete steps at once; each step still gets mean_ci's numbers
    (steps with a missing seed, a single seed, no seed included)."""
    from plastix.report import curve_ci, mean_ci

    rng = np.random.default_rng(3)
    values = rng.normal(size=(7, 12))
    values[2, 4] = np.nan
    values[:, 7] = np.nan
    values[1:, 9] = np.nan
    for table in (values, values[:1], values[:, :3]):
        got = np.stack(curve_ci(table), axis=1)
        want = np.array([mean_ci(table[:, t], n_boot=1000)[:3] for t in range(table.shape[1])])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_cells_json_records_what_really_runs(tmp_path):
    """Every cell's full config is recorded; sac-dormant vmaps its seeds on every backend again
    (the XLA:CPU deadlock came from batched LAPACK eigen-solves, see metrics.representation.eigvalsh)."""
    import json

    cells = dormant.sac_cells(dormant.DormantExperimentConfig(vmap_seeds=False))
    dormant._record_cells(str(tmp_path), cells)
    record = json.loads((tmp_path / "cells.json").read_text())
    assert set(record) == {"method-none", "method-redo"}
    assert all(c["config"]["vmap_seeds"] is False for c in record.values())
    assert all(c.vmap_seeds for _, c in dormant.sac_cells(dormant.DormantExperimentConfig()))


def test_curves_keep_one_style_per_setting_and_one_legend_per_figure():
    """14 methods (more than matplotlib's ten colors, and ``none`` / ``redo`` with fixed colors that
    collide with positional ones) get 14 distinct styles; a figure whose first panel has no data
    (VDN's mixer: no neurons) still gets a legend naming every method, drawn alike in every panel,
    and the empty panel says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from plastix.experiments.marl import STUDY_METHODS, expand_methods
    from plastix.report import figure_legend, plot_curves
    from plastix.report.figures import curve_styles

    methods = sorted(expand_methods(("all",)))
    assert len(methods) == 14 and set(STUDY_METHODS) <= set(methods)
    styles = curve_styles(methods)
    assert len({(s["color"], s["ls"]) for s in styles.values()}) == 14
    assert styles["none"]["color"] == "#7f7f7f" and curve_styles(methods) == styles
    rng = np.random.default_rng(0)
    rows = [
        {"method": m, "seed": s, "env_steps": t, "y": rng.normal()} for m in methods for s in range(2) for t in range(3)
    ]
    df = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 3, squeeze=False)
    plot_curves(axes[0][0], df.iloc[:0], "y", hue="method", x="env_steps", order=methods)  # empty panel
    plot_curves(axes[0][1], df, "y", hue="method", x="env_steps", order=methods)
    plot_curves(axes[0][2], df[df.method != "cbp"], "y", hue="method", x="env_steps", order=methods)
    figure_legend(fig, axes, title="method")
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == methods
    assert [t.get_text() for t in axes[0][0].texts] == ["no y here"]
    drawn = {line.get_label(): (line.get_color(), line.get_linestyle()) for line in axes[0][1].lines}
    assert all(drawn[line.get_label()] == (line.get_color(), line.get_linestyle()) for line in axes[0][2].lines)
    assert len(set(drawn.values())) == 14
    plt.close(fig)
