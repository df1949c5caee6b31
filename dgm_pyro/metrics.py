"""Scores for probabilistic graph forecasts (seed P4.4), per horizon step.

Edges: ROC-AUC and average precision (scikit-learn) over all pairs and over the pairs that were not edges
at the forecast origin ("new links"), the Brier score, the expected calibration error (10 equal-width
bins), the error in edge density, and the mean Bernoulli log-likelihood per pair (probabilities clipped to
[1e-6, 1 - 1e-6] so that 0/1 forecasts such as persistence get a finite value).
Node features: CRPS and energy score (``pyro.ops.stats``), MAE of the sample median, and for forecasts
with at least 10 samples two coverages of the central 50% and 90% intervals:

- ``coverage_L``: the share of true values inside the closed equal-tailed sample-quantile interval.
  Right for continuous predictive distributions, but inflated where the predictive puts mass on a point,
  such as the zeros of a count-like feature: a true 0 falls inside [0, 0] whatever the level.
- ``pit_coverage_L``: the share of randomised PIT values u = F(x-) + V (F(x) - F(x-)), V ~ U(0, 1), within
  L/2 of 1/2. Here F is the empirical predictive CDF of the samples and V is drawn from a fixed seed. A
  calibrated forecast, discrete, mixed or continuous, gives uniform u, so this is L in expectation
  (Czado, Gneiting and Held 2009). For continuous samples it equals ``coverage_L`` up to the ECDF's
  resolution.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import pyro
import torch
from pyro.ops.stats import crps_empirical, energy_score_empirical

from .data.graphs import GraphSequence, pair_index, uniform_nonedges
from .errors import DgmPyroError

__all__ = ["edge_scores", "pair_edge_scores", "sample_pairs", "feature_scores", "forecast_scores",
           "expected_calibration_error", "randomised_pit", "EDGE_METRICS", "FEATURE_METRICS", "score_window",
           "backtest", "stationarity_check", "FORECAST_MAX_NODES", "PROBABILITY_METRICS", "ranking_only",
           "balanced_ap", "edge_score_difference"]

#: forecasts are dense (S x H x N x N edge probabilities): larger graphs are trained but not forecast
FORECAST_MAX_NODES = 2000

EDGE_METRICS = ("auc", "ap", "auc_new", "ap_new", "ap_1to1", "ap_new_1to1", "brier", "ece", "density_error",
                "edge_log_lik")
#: draws of the balanced negative sets of ``ap_1to1`` (as many non-edges as edges, as VGRNN and most dynamic link
#: prediction papers score), and their seed
BALANCED_DRAWS, BALANCED_SEED = 10, 0
FEATURE_METRICS = ("crps", "energy", "mae", "coverage_50", "coverage_90", "pit_coverage_50", "pit_coverage_90")


def expected_calibration_error(prob: np.ndarray, truth: np.ndarray, bins: int = 10,
                               weight: Optional[np.ndarray] = None) -> float:
    """sum_b (n_b / n) |mean(prob in b) - mean(truth in b)| over ``bins`` equal-width bins of [0, 1] (each pair
    counted ``weight`` times where given)."""
    idx = np.minimum((prob * bins).astype(np.int64), bins - 1)
    w = np.ones_like(prob) if weight is None else weight
    count = np.bincount(idx, weights=w, minlength=bins)
    mean_p = np.bincount(idx, weights=w * prob, minlength=bins)
    mean_y = np.bincount(idx, weights=w * truth, minlength=bins)
    used = count > 0
    return float(np.abs(mean_p[used] - mean_y[used]).sum() / w.sum())


def _ranking(truth: np.ndarray, prob: np.ndarray, weight: Optional[np.ndarray] = None) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if truth.size == 0 or truth.min() == truth.max():
        return math.nan, math.nan
    return (float(roc_auc_score(truth, prob, sample_weight=weight)),
            float(average_precision_score(truth, prob, sample_weight=weight)))


def balanced_ap(truth: np.ndarray, prob: np.ndarray, draws: int = BALANCED_DRAWS, seed: int = BALANCED_SEED) -> float:
    """Average precision with as many negatives as positives: the mean over ``draws`` sets, each every positive
    and that many negatives drawn uniformly without replacement (all of them where there are fewer), from a
    generator seeded with ``seed``. The AP of the papers that sample 1:1 (VGRNN, EvolveGCN); it is far higher than
    the AP over every non-edge of a sparse graph, so the two are reported side by side, named."""
    from sklearn.metrics import average_precision_score

    pos, neg = np.flatnonzero(truth == 1), np.flatnonzero(truth == 0)
    if pos.size == 0 or neg.size == 0:
        return math.nan
    rng = np.random.default_rng(seed)
    aps = []
    for _ in range(draws):
        chosen = neg if neg.size <= pos.size else rng.choice(neg, size=pos.size, replace=False)
        idx = np.concatenate([pos, chosen])
        aps.append(average_precision_score(truth[idx], prob[idx]))
    return float(np.mean(aps))


def edge_scores(prob: torch.Tensor, truth: torch.Tensor, previous: torch.Tensor, directed: bool) -> dict[str, float]:
    """Edge metrics of one horizon step over every pair.

    Args:
        prob: predicted edge probabilities (N, N).
        truth: the true 0/1 adjacency (N, N).
        previous: the adjacency at the forecast origin (N, N); pairs with no edge there are "new links".
        directed: score all ordered pairs u != v, else the pairs u < v.
    """
    n = prob.shape[-1]
    u, v = pair_index(n, directed)
    return pair_edge_scores(prob[u, v], truth[u, v], previous[u, v] == 0)


def pair_edge_scores(prob: torch.Tensor, truth: torch.Tensor, new: torch.Tensor,
                     weight: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Edge metrics of one horizon step from a list of pairs: probabilities, 0/1 truth and whether each pair was
    a non-edge at the origin, all (P,). ``weight`` (P,) counts each pair that many times: with every positive
    at weight 1 and m non-edges drawn uniformly from the n_0 non-edges at weight n_0 / m, the Brier score,
    density error and log-likelihood are unbiased (Horvitz-Thompson) estimates of those over all pairs, AUC is
    unbiased (the Mann-Whitney statistic of all positives against a uniform sample of negatives), and AP and
    ECE are consistent ratio estimates, and the balanced APs (``ap_1to1``, :func:`balanced_ap`) are NaN. Without
    ``weight``: the exact metrics of these pairs."""
    p = prob.double().numpy()
    y = truth.double().numpy()
    w = None if weight is None else weight.double().numpy()
    new = new.bool().numpy()
    auc, ap = _ranking(y, p, w)
    auc_new, ap_new = _ranking(y[new], p[new], None if w is None else w[new])
    balanced = (balanced_ap(y, p), balanced_ap(y[new], p[new])) if w is None else (math.nan, math.nan)
    pc = np.clip(p, 1e-6, 1 - 1e-6)
    return {"auc": auc, "ap": ap, "auc_new": auc_new, "ap_new": ap_new, "ap_1to1": balanced[0],
            "ap_new_1to1": balanced[1],
            "brier": float(np.average((p - y) ** 2, weights=w)), "ece": expected_calibration_error(p, y, weight=w),
            "density_error": float(abs(np.average(p, weights=w) - np.average(y, weights=w))),
            "edge_log_lik": float(np.average(y * np.log(pc) + (1 - y) * np.log1p(-pc), weights=w))}


def _weighted_ranking(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC and AP (sklearn's definitions, ties included) of one set of pairs under each row of ``weights`` (B, P)
    at once: the pairs are sorted and grouped by score once, so each row costs a few passes over P."""
    order = np.argsort(-score, kind="stable")
    s, yy, w = score[order], y[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of tied scores, descending
    pos = np.add.reduceat(w * yy, starts, axis=1)
    neg = np.add.reduceat(w * (1 - yy), starts, axis=1)
    total_pos, total_neg = pos.sum(1), neg.sum(1)
    tp, fp = np.cumsum(pos, 1), np.cumsum(neg, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (pos * np.where(tp + fp > 0, tp / (tp + fp), 0.0)).sum(1) / total_pos
        # a positive beats the negatives of lower groups and ties half of its own group's
        below = total_neg[:, None] - fp
        auc = (pos * (below + 0.5 * neg)).sum(1) / (total_pos * total_neg)
    return auc, ap


def edge_score_difference(prob_a: torch.Tensor, prob_b: torch.Tensor, truth: torch.Tensor, directed: bool,
                          num_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """How sure a difference in AUC and AP between two edge forecasts of one snapshot is: the differences
    metric(a) - metric(b) over every pair and their paired bootstrap intervals (percentile method): the pairs are
    resampled with replacement ``num_resamples`` times and both forecasts are scored on the same resample. A
    snapshot with few edges gives wide intervals: with 11 edges among 16,110 pairs an AUC is uncertain by several
    points whatever the forecaster. Resamples without a positive are left out.

    Args:
        prob_a, prob_b: the two forecasts' edge scores (N, N) (probabilities or ranking scores).
        truth: the true 0/1 adjacency (N, N).
        directed: score all ordered pairs u != v, else the pairs u < v.
    Returns:
        ``{"auc": {"difference", "low", "high"}, "ap": {...}, "positives": E, "pairs": P}``.
    """
    if num_resamples < 1 or not 0 < level < 1:
        raise DgmPyroError("num_resamples must be >= 1 and level in (0, 1)")
    u, v = pair_index(truth.shape[-1], directed)
    y, a, b = (t[u, v].double().numpy() for t in (truth, prob_a, prob_b))
    out: dict[str, Any] = {"positives": int(y.sum()), "pairs": int(y.size)}
    if out["positives"] in (0, y.size):
        return out | {m: dict.fromkeys(("difference", "low", "high"), math.nan) for m in ("auc", "ap")}
    ones = np.ones((1, y.size))
    point = (np.stack(_weighted_ranking(y, a, ones)) - np.stack(_weighted_ranking(y, b, ones)))[:, 0]
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, num_resamples, 100):  # 100 resamples at a time bound the (B, P) weights
        rows = min(100, num_resamples - start)
        draws = rng.integers(0, y.size, (rows, y.size)) + y.size * np.arange(rows)[:, None]
        weights = np.bincount(draws.ravel(), minlength=rows * y.size).reshape(rows, y.size).astype(np.float64)
        diffs.append(np.stack(_weighted_ranking(y, a, weights)) - np.stack(_weighted_ranking(y, b, weights)))
    d = np.concatenate(diffs, 1)
    d = d[:, np.isfinite(d).all(0)]
    tail = 100 * (1 - level) / 2
    for i, m in enumerate(("auc", "ap")):
        lo, hi = np.percentile(d[i], [tail, 100 - tail])
        out[m] = {"difference": float(point[i]), "low": float(lo), "high": float(hi)}
    return out


def sample_pairs(positives: torch.Tensor, num_nodes: int, directed: bool, num_negatives: int,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs that score a sparse forecast: every edge of ``positives`` (2, E) (canonical: u < v when
    undirected) and ``num_negatives`` non-edges drawn uniformly with replacement from ``seed`` (every non-edge,
    once, when there are at most that many). Returns the pairs (2, P), their 0/1 truth (P,) and the weights
    (P,) of :func:`pair_edge_scores`: 1 for an edge, (#non-edges / #drawn) for a drawn non-edge."""
    n = num_nodes
    total = n * (n - 1) if directed else n * (n - 1) // 2
    pos = torch.unique(positives[0] * n + positives[1])
    zeros = total - pos.numel()
    if zeros <= num_negatives:
        u, v = pair_index(n, directed)
        key = u * n + v
        neg = key[~torch.isin(key, pos)]
        weight = 1.0
    else:
        neg = uniform_nonedges(pos, n, directed, num_negatives, generator=torch.Generator().manual_seed(seed))
        weight = zeros / num_negatives
    key = torch.cat([pos, neg])
    truth = torch.cat([torch.ones(pos.numel()), torch.zeros(neg.numel())])
    w = torch.cat([torch.ones(pos.numel()), torch.full((neg.numel(),), float(weight))])
    return torch.stack([key // n, key % n]), truth, w


def feature_scores(samples: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Node-feature metrics of one horizon step, averaged over nodes (and features for CRPS/MAE/coverage).

    Args:
        samples: forecast draws (S, N, F).
        truth: the true features (N, F).
    """
    if samples.shape[-1] == 0:
        return {k: math.nan for k in FEATURE_METRICS}
    s = samples.double()
    t = truth.double()
    out = {"crps": float(crps_empirical(s, t).mean()), "energy": float(_energy_score(s, t).mean()),
           "mae": float((s.median(0).values - t).abs().mean())}
    pit = randomised_pit(s, t) if s.shape[0] >= 10 else None
    for level in (50, 90):
        if pit is not None:
            a = (1 - level / 100) / 2
            q = torch.quantile(s, torch.tensor([a, 1 - a], dtype=s.dtype), dim=0)
            out[f"coverage_{level}"] = float(((t >= q[0]) & (t <= q[1])).double().mean())
            out[f"pit_coverage_{level}"] = float(((pit - 0.5).abs() <= level / 200).double().mean())
        else:
            out[f"coverage_{level}"] = out[f"pit_coverage_{level}"] = math.nan
    return out


#: pairwise sample distances held at once by the energy score (nodes x S x S); about 270 MB in float64
ENERGY_BLOCK = 2 ** 25


def _energy_score(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Energy score (N,) of draws (S, N, F) against (N, F), a block of nodes at a time: the pairwise distances
    of all N nodes at once (N x S x S) would need 25.6 GB at N = 20 000 and S = 400."""
    block = max(1, ENERGY_BLOCK // (samples.shape[0] ** 2))
    # energy_score_empirical takes draws on the second-to-last dimension: (n, S, F) against (n, F)
    return torch.cat([energy_score_empirical(samples[:, i:i + block].transpose(0, 1).contiguous(), truth[i:i + block])
                      for i in range(0, truth.shape[0], block)])


def randomised_pit(samples: torch.Tensor, truth: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Randomised probability integral transform F(x-) + V (F(x) - F(x-)) of each true value ``truth`` (...)
    under the empirical CDF F of ``samples`` (S, ...), V ~ U(0, 1) from ``seed``: uniform on [0, 1] for a
    calibrated forecast even where the predictive has atoms (discrete or zero-inflated)."""
    below = (samples < truth).double().mean(0)
    at_most = (samples <= truth).double().mean(0)
    v = torch.rand(truth.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return below + v * (at_most - below)


#: the edge metrics that need probabilities: NaN for a forecaster of ranking scores
PROBABILITY_METRICS = ("brier", "ece", "density_error", "edge_log_lik")


def ranking_only(row: dict[str, Any]) -> dict[str, Any]:
    """A score row of a forecaster whose edge scores rank pairs but are not probabilities: its
    :data:`PROBABILITY_METRICS` set to NaN."""
    return {**row, **{k: math.nan for k in PROBABILITY_METRICS if k in row}}


def forecast_scores(forecast: dict[str, Optional[torch.Tensor]], future: GraphSequence, origin: GraphSequence,
                    horizon: Optional[int] = None, probabilistic: bool = True) -> list[dict[str, Any]]:
    """Every metric for each horizon step h = 1..H of a forecast against the held-out future.

    Args:
        forecast: ``X`` draws (S, H, N, F) (``None``: no feature forecast, its metrics NaN) and ``edge_prob``
            (H, N, N) or (S, H, N, N) (averaged over S).
        future: the true snapshots T+1..T+H' (H' >= H).
        origin: the history; its last snapshot defines the new links.
        probabilistic: ``False`` for edge scores that only rank pairs (:func:`ranking_only`).
    """
    probs = forecast["edge_prob"]
    if probs.dim() == 4:
        probs = probs.mean(0)
    h_max = probs.shape[0] if horizon is None else horizon
    previous = origin.adjacency(origin.num_steps - 1)
    rows = []
    for h in range(h_max):
        row: dict[str, Any] = {"h": h + 1}
        row.update(edge_scores(probs[h], future.adjacency(h), previous, future.directed))
        x = forecast["X"]
        row.update(feature_scores(x[:, h], future.x[h]) if x is not None else dict.fromkeys(FEATURE_METRICS, math.nan))
        rows.append(row if probabilistic else ranking_only(row))
    return rows


# --------------------------------------------------------------------------------------------------
# evaluation of a forecaster over time (as pyro.contrib.forecast.evaluate)


def score_window(module: Any, history: GraphSequence, future: GraphSequence, horizon: int, num_samples: int = 100,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Forecast ``horizon`` snapshots after ``history`` with ``num_samples`` paths drawn from ``seed`` (on the
    module's device) and score them against ``future``: :func:`forecast_scores` rows with the held-out
    predictive log-likelihood ``log_lik`` of each step."""
    device = next(module.parameters()).device
    pyro.set_rng_seed(seed)
    fc = module.forecast(history.x.to(device), [e.to(device) for e in history.edges], horizon=horizon,
                         num_samples=num_samples, future=(future.x.to(device), [e.to(device) for e in future.edges]))
    rows = forecast_scores({k: v.cpu() for k, v in fc.items()}, future, history, horizon)
    for h, row in enumerate(rows):
        row["log_lik"] = float(fc["log_lik"][h])
    return rows


def backtest(module: Any, sequence: GraphSequence, origins: list[int], horizon: int, num_samples: int = 100,
             seed: int = 0) -> list[dict[str, Any]]:
    """Rolling-origin evaluation without refitting (in the spirit of ``pyro.contrib.forecast.backtest``): for
    each origin T0 the model filters snapshots 1..T0 and forecasts T0+1..T0+H. Returns one dict per
    window: ``{"origin", "metrics": [one row per horizon step]}``. ``dgm-pyro backtest``
    (:func:`dgm_pyro.runs.graph_backtest.backtest_graph`) also refits per origin and scores the baselines."""
    rows = []
    for t0 in origins:
        if not 1 <= t0 <= sequence.num_steps - horizon:
            raise DgmPyroError(f"origin {t0} leaves no {horizon} snapshots to score in {sequence.num_steps}")
        hist, fut = sequence.slice(0, t0), sequence.slice(t0, t0 + horizon)
        rows.append({"origin": t0, "metrics": score_window(module, hist, fut, horizon, num_samples, seed)})
    return rows


def stationarity_check(module: Any, history: GraphSequence, chains: int = 4, steps: int = 200,
                       seed: int = 0) -> dict[str, Any]:
    """Long-run behaviour of the rollout (seed P4.4): ``chains`` independent paths of ``steps`` steps from the
    filtered state; on their second halves, arviz's R-hat and bulk ESS of two summary statistics per step
    (the expected edge density and the mean node feature). R-hat near 1 (< 1.05) says the chains forget
    where they started and agree on one stationary distribution."""
    import arviz as az

    if chains < 2 or steps < 20:
        raise DgmPyroError("the stationarity check needs at least 2 chains and 20 steps")
    if module.num_nodes > FORECAST_MAX_NODES:
        raise DgmPyroError(f"the stationarity check rolls out dense graphs; available up to {FORECAST_MAX_NODES} nodes")
    pyro.set_rng_seed(seed)
    density, feature = [], []
    for step in module.rollout(history.x, history.edges, steps, chains):
        density.append(step["edge_prob"].mean((-1, -2)) * module.num_nodes / (module.num_nodes - 1))
        feature.append(step["x"].mean((-1, -2)) if module.num_features else torch.zeros(chains))
    half = steps // 2
    stats = {"edge_density": torch.stack(density, 1)[:, half:].numpy(),
             "mean_feature": torch.stack(feature, 1)[:, half:].numpy()}
    ds = az.convert_to_dataset({k: v for k, v in stats.items() if np.ptp(v) > 0})
    out: dict[str, Any] = {"chains": chains, "steps": steps, "kept_steps": steps - half}
    for name, values in stats.items():
        if name in ds:
            rhat = float(az.rhat(ds)[name])
            ess = float(az.ess(ds, method="bulk")[name])
        else:
            rhat, ess = math.nan, math.nan
        out[name] = {"mean": float(values.mean()), "rhat": rhat, "ess_bulk": ess}
    rhats = [out[k]["rhat"] for k in stats if math.isfinite(out[k]["rhat"])]
    out["stationary"] = bool(rhats) and max(rhats) < 1.05
    return out
