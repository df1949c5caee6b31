"""Forecast metrics against known values."""

import math

import numpy as np
import pytest
import torch

from dgm_pyro.data.graphs import dynamic_sbm
from dgm_pyro.metrics import edge_scores, expected_calibration_error, feature_scores, forecast_scores


def test_calibrated_probabilities_have_small_ece_and_known_brier():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    assert expected_calibration_error(p, y) < 0.01
    # a forecast that is off by a constant 0.2 (clipped) has an ECE near 0.2
    assert expected_calibration_error(np.clip(p * 0.6, 0, 1), y) > 0.15


def test_edge_scores_on_a_perfect_and_a_constant_forecast():
    n = 30
    a = (torch.rand(n, n) < 0.2).float().triu(1)
    a = a + a.T
    perfect = edge_scores(a, a, torch.zeros(n, n), directed=False)
    assert perfect["auc"] == 1.0 and perfect["ap"] == 1.0 and perfect["brier"] == 0.0
    assert perfect["density_error"] == 0.0
    iu = torch.triu_indices(n, n, 1)
    density = float(a[iu[0], iu[1]].mean())
    const = edge_scores(torch.full((n, n), density), a, torch.zeros(n, n), directed=False)
    assert const["auc"] == 0.5
    assert const["brier"] == pytest.approx(density * (1 - density), rel=1e-6)
    assert const["edge_log_lik"] == pytest.approx(density * math.log(density) + (1 - density) * math.log1p(-density),
                                                  rel=1e-6)
    # new links: pairs that were edges at the origin are left out
    assert math.isnan(edge_scores(a, a, torch.ones(n, n), directed=False)["auc_new"])


def test_feature_scores_of_a_point_and_of_the_true_distribution():
    truth = torch.randn(50, 2)
    point = (truth + 0.5).unsqueeze(0)
    s = feature_scores(point, truth)
    # the CRPS of a point forecast is its absolute error; the energy score its Euclidean error
    assert s["crps"] == pytest.approx(0.5, rel=1e-6)
    assert s["energy"] == pytest.approx(math.sqrt(0.5), rel=1e-6)
    assert math.isnan(s["coverage_90"])
    torch.manual_seed(0)
    truth = torch.randn(4000, 1)
    draws = torch.randn(400, 4000, 1)
    s = feature_scores(draws, truth)
    assert abs(s["coverage_50"] - 0.5) < 0.03 and abs(s["coverage_90"] - 0.9) < 0.02
    # expected CRPS of N(0, 1) against an independent N(0, 1) truth: E|X - Y| - E|X - X'| / 2 = 1 / sqrt(pi)
    assert s["crps"] == pytest.approx(1 / math.sqrt(math.pi), abs=0.02)
    # univariate energy score equals the CRPS
    assert s["energy"] == pytest.approx(s["crps"], rel=1e-9)


def test_forecast_scores_rows():
    seq = dynamic_sbm(num_nodes=20, num_steps=6, seed=0)
    hist, fut = seq.split(2)
    fc = {"X": fut.x.unsqueeze(0), "edge_prob": torch.stack([fut.adjacency(0), fut.adjacency(1)])}
    rows = forecast_scores(fc, fut, hist)
    assert [r["h"] for r in rows] == [1, 2]
    assert all(r["auc"] == 1.0 and r["crps"] == 0.0 for r in rows)
