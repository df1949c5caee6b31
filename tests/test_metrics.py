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


def test_pit_coverage_is_nominal_for_a_calibrated_discrete_forecast():
    """Truth and forecast draws from the same zero-inflated Poisson (70 % zeros, like the degree features):
    the randomised PIT coverage is the nominal 50 % and 90 % (within 3 binomial SE over 4000 nodes), while
    the closed sample-quantile interval over-covers (a true 0 lies in [0, 0] at any level). A forecast that
    is too high under-covers on the PIT."""
    g = torch.Generator().manual_seed(0)

    def zip_draws(shape, rate):
        counts = torch.poisson(torch.full(shape, rate), generator=g)
        return torch.where(torch.rand(shape, generator=g) < 0.7, torch.zeros(shape), counts)

    n = 4000
    truth = zip_draws((n, 1), 2.0)
    s = feature_scores(zip_draws((100, n, 1), 2.0), truth)
    for level in (50, 90):
        se = math.sqrt(level / 100 * (1 - level / 100) / n)
        assert abs(s[f"pit_coverage_{level}"] - level / 100) < 3 * se + 1.0 / 100, (level, s)
        assert s[f"coverage_{level}"] > level / 100 + 0.04, (level, s)
    high = feature_scores(zip_draws((100, n, 1), 2.0) + 2.0, truth)
    assert high["pit_coverage_50"] < 0.35


def test_pit_coverage_matches_interval_coverage_for_continuous_draws():
    torch.manual_seed(1)
    s = feature_scores(1.3 * torch.randn(200, 2000, 2), torch.randn(2000, 2))
    assert abs(s["pit_coverage_50"] - s["coverage_50"]) < 0.01
    assert abs(s["pit_coverage_90"] - s["coverage_90"]) < 0.01
    assert s["pit_coverage_90"] > 0.9  # the forecast is too wide: it over-covers on both measures


def test_energy_score_by_blocks_of_nodes_equals_all_at_once(monkeypatch):
    from pyro.ops.stats import energy_score_empirical

    from dgm_pyro import metrics

    torch.manual_seed(2)
    draws, truth = torch.randn(30, 50, 3).double(), torch.randn(50, 3).double()
    whole = energy_score_empirical(draws.transpose(0, 1).contiguous(), truth)
    monkeypatch.setattr(metrics, "ENERGY_BLOCK", 30 * 30 * 7)  # blocks of 7 nodes
    assert torch.allclose(metrics._energy_score(draws, truth), whole, rtol=1e-12, atol=1e-12)


def test_balanced_ap_samples_as_many_non_edges_as_edges():
    """By hand: 2 positives ranked above every negative give AP 1 whatever is drawn; with one positive ranked last of
    3 pairs, AP over 1:1 draws is the mean over which negative is drawn (each equally likely, 1/2 both ways)."""
    import numpy as np

    from dgm_pyro.metrics import balanced_ap

    y = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    assert balanced_ap(y, np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.1, 0.0, 0.2])) == 1.0
    # one positive with score 0.5 between negatives 0.9 and 0.1: AP is 1 against the 0.1 negative, 1/2 against 0.9
    y, p = np.array([1, 0, 0]), np.array([0.5, 0.9, 0.1])
    got = balanced_ap(y, p, draws=4000, seed=1)
    assert abs(got - 0.75) < 0.02
    assert np.isnan(balanced_ap(np.zeros(4), np.ones(4)))
    # fewer negatives than positives: all of them, every draw
    assert balanced_ap(np.array([1, 1, 1, 0]), np.array([0.9, 0.8, 0.1, 0.5])) == pytest.approx(
        (1 + 1 + 3 / 4) / 3)


def test_weighted_auc_and_ap_equal_sklearns_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from dgm_pyro.metrics import _weighted_ranking

    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.05).astype(float)
    score = np.round(rng.random(2000) + 0.3 * y, 2)  # many ties
    weights = rng.integers(0, 3, (4, 2000)).astype(float)
    auc, ap = _weighted_ranking(y, score, weights)
    for i in range(4):
        assert auc[i] == pytest.approx(roc_auc_score(y, score, sample_weight=weights[i]), abs=1e-12)
        assert ap[i] == pytest.approx(average_precision_score(y, score, sample_weight=weights[i]), abs=1e-12)


def test_edge_score_difference_interval():
    from dgm_pyro.errors import DgmPyroError
    from dgm_pyro.metrics import edge_score_difference

    g = torch.Generator().manual_seed(0)
    n = 60
    truth = (torch.rand(n, n, generator=g) < 0.05).float().triu(1)
    truth = truth + truth.T
    good = truth + torch.rand(n, n, generator=g)  # every edge above every non-edge: AUC 1
    noise = torch.rand(n, n, generator=g)  # AUC about 0.5
    same = edge_score_difference(noise, noise, truth, directed=False, num_resamples=200)
    assert same["pairs"] == n * (n - 1) // 2 and same["positives"] == int(truth.triu(1).sum())
    assert all(same[m]["difference"] == same[m]["low"] == same[m]["high"] == 0.0 for m in ("auc", "ap"))
    diff = edge_score_difference(good, noise, truth, directed=False, num_resamples=200)
    auc = diff["auc"]
    # AUC(good) = 1, so the difference is 1 - AUC(noise), and every resample's is positive
    assert auc["low"] > 0.3 and auc["low"] <= auc["difference"] <= auc["high"] <= 0.7
    # the interval narrows with more edges: half the snapshot's edges removed widens it
    fewer = truth * (torch.rand(n, n, generator=g) < 0.5).float().triu(1)
    fewer = fewer + fewer.T
    wide = edge_score_difference(fewer + torch.rand(n, n, generator=g), noise, fewer, directed=False,
                                 num_resamples=200)["auc"]
    assert wide["high"] - wide["low"] > auc["high"] - auc["low"]
    with pytest.raises(DgmPyroError):
        edge_score_difference(good, noise, truth, directed=False, level=1.5)
