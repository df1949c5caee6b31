"""Figures a person can read: what each plot shows, checked on the matplotlib figures it builds."""

import csv

import numpy as np
import pytest
import torch

from dgm_pyro import plotting
from dgm_pyro.data import load_dataset
from dgm_pyro.data.graphs import dynamic_sbm


@pytest.fixture
def figures(monkeypatch):
    """The figures passed to save_figure, by file name (nothing is written)."""
    import matplotlib

    matplotlib.use("Agg")
    made = {}

    def keep(fig, path, dpi=100):
        made[path.name] = fig
        return path

    monkeypatch.setattr(plotting, "save_figure", keep)
    return made


def test_node_order_groups_the_true_communities():
    seq = dynamic_sbm(seed=0)
    order = plotting.node_order(seq)
    comm = np.asarray(seq.truth["communities"][-1])[order]
    assert sorted(order.tolist()) == list(range(seq.num_nodes))
    assert (np.diff(comm) >= 0).all()  # contiguous blocks, one per community


def test_forecast_plots_name_features_and_have_colour_bars(figures, tmp_path):
    seq = dynamic_sbm(seed=0, num_steps=8)
    seq.feature_names = ["age", "income", "visits", "score"]
    seq.static = [True, False, False, False]
    history, future = seq.split(2)
    s, h = 12, 2
    fc = {"X": torch.randn(s, h, seq.num_nodes, 4), "edge_prob": torch.rand(s, h, seq.num_nodes, seq.num_nodes)}
    metrics = {"m": [{"h": 1, "auc": 0.5, "crps": 1.0}, {"h": 2, "auc": 0.5, "crps": 1.0}]}
    plotting.plot_forecast(history, future, fc, metrics, 2, tmp_path, prefix="f")
    titles = [ax.get_title() for ax in figures["f_features.png"].axes]
    assert titles[0] == f"node {history.node_ids[0]}: income"  # the first forecast feature, by name (age is static)
    labels = [ax.get_ylabel() for ax in figures["f_edges.png"].axes]
    assert labels.count("P(edge)") == 2 and labels.count("edge observed") == 2  # a colour bar beside every map


def test_training_curve_draws_every_epoch_and_beta(figures, tmp_path):
    rows = [{"epoch": e, "train_loss": 400.0 / e + 90, "valid_elbo": -400.0 / e - 90, "valid_log_likelihood": -89.0,
             "beta_mean": min(1.0, e / 4), "beta_last": min(1.0, e / 4)} for e in range(1, 9)]
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plotting.plot_training_curves(tmp_path)
    fig = figures["training.png"]
    ax, twin = fig.axes
    lo, hi = ax.get_ylim()
    assert lo <= -490 and hi >= -90  # the first epoch (ELBO -490) is inside the axis
    assert twin.get_ylabel() == "beta" and list(twin.lines[0].get_ydata()) == [r["beta_mean"] for r in rows]


def test_quadrant_samples_show_the_truth_first_and_shade_the_given_part(figures, tmp_path):
    ds = load_dataset("digits-q2")
    x, y = ds.splits["test"]
    plotting.save_sample_grid(x[:2].unsqueeze(1).repeat(1, 3, 1), y[:2], ds, tmp_path / "g.png", truth=x[:2])
    fig = figures["g.png"]
    assert len(fig.axes) == 2 * 4 and fig.axes[0].get_title() == "truth"
    assert all(len(ax.images) == 2 for ax in fig.axes)  # the digit and the shading of the given part


def test_many_samples_of_one_condition_wrap_into_a_square_grid_in_order(figures, tmp_path):
    ds = load_dataset("digits")
    x, y = ds.splits["test"]
    plotting.save_sample_grid(x[:14].unsqueeze(0), y[:1], ds, tmp_path / "g.png")
    axes = figures["g.png"].axes
    assert len(axes) == 4 * 4  # ceil(sqrt(14)) = 4 a row, the last row's two cells blank
    shown = [np.asarray(ax.images[0].get_array()) for ax in axes]
    expect = plotting.assemble_images(x[:14].unsqueeze(0).float(), y[:1], ds)[0].numpy()
    for k in range(14):
        np.testing.assert_array_equal(shown[k], expect[k])
    assert all((shown[k] == 0).all() for k in (14, 15))
    assert axes[0].get_ylabel() == str(int(y[0].argmax())) and axes[4].get_ylabel() == ""
    plotting.save_sample_grid(x[:8].unsqueeze(0), y[:1], ds, tmp_path / "h.png")
    assert len(figures["h.png"].axes) == 8  # ten or fewer stay one row


def test_titles_are_written_above_their_rows_as_given(figures, tmp_path):
    ds = load_dataset("digits")
    x, y = ds.splits["test"]
    plotting.save_sample_grid(x[:2].unsqueeze(1).repeat(1, 3, 1), y[:2], ds, tmp_path / "t.png",
                              titles=["elbo (seed 0, 4 passes)", "\u201ca seven\u201d"])
    axes = figures["t.png"].axes
    assert [t.get_text() for t in axes[0].texts] == ["elbo (seed 0, 4 passes)"]  # no quotes added
    assert [t.get_text() for t in axes[3].texts] == ["\u201ca seven\u201d"] and not axes[1].texts
