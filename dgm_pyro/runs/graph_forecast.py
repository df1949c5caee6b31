"""Forecasts of a graph run (``dgm-pyro forecast``, seed P4.4): sample paths of the trained GraphSSM, dense or
sparse, written as an arviz ``InferenceData`` (NetCDF) and scored against the held-out snapshots, beside
persistence, the historical mean, the GCN+GRU baseline and, on the dynamic SBM, the oracle.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyro
import torch

from ..checkpoint import write_json
from ..data.graphs import GraphSequence
from ..errors import DgmPyroError
from ..metrics import (FORECAST_MAX_NODES, edge_score_difference, feature_scores, forecast_scores, pair_edge_scores,
                       ranking_only, sample_pairs, stationarity_check)
from ..models.graph_baselines import DSBMOracle, HistoricalMean, Persistence
from ..models.graph_sparse import sparse_forecast
from ..models.link_heuristics import link_heuristics
from ..plotting import plot_forecast
from ..training import deterministic_algorithms
from .base import Run

__all__ = ["GraphRun", "forecast_run", "to_inference_data", "EDGE_OUTPUTS"]

log = logging.getLogger("dgm_pyro.runs")


@dataclass
class GraphRun(Run):
    """A loaded graph run: adds the history and the held-out future (the baseline is the GCN+GRU predictor)."""

    history: Optional[GraphSequence] = None
    future: Optional[GraphSequence] = None




def to_inference_data(forecast: dict[str, Any], chains: int, history: GraphSequence,
                      future: Optional[GraphSequence] = None, static: Sequence[bool] = ()):
    """An arviz ``InferenceData`` of a dense or sparse forecast (the layout is in docs/graphs.md).

    Always: ``posterior_predictive`` ``X`` (chain, draw, horizon, node, feature); ``observed_data`` the history
    ``X_history`` (time, node, feature) and, where the whole horizon is held out, the true ``X``. The ``feature``
    coordinate holds the feature names; the ``static_features`` attribute names those that were conditioned on
    (``static``: a flag per feature), whose draws repeat their last value.

    Dense forecasts: ``posterior_predictive`` also ``A`` (int8) and ``edge_prob`` (float16) (chain, draw, horizon,
    node, node_to), ``observed_data`` the true ``A``. Sparse forecasts (``edge_index``): group ``edge_draws`` with
    one row per drawn edge (dimension ``edge``: ``edge_chain``, ``edge_draw``, ``edge_horizon`` (1-based),
    ``src``, ``dst`` node positions), sorted by horizon, then chain and draw, and ``num_edges`` (chain, draw,
    horizon); group ``edge_top_k`` with ``dst`` (horizon, node, rank; -1 where a node has fewer) and ``prob``
    (the mean edge probability over draws; NaN there); group ``observed_edges`` the true edges
    (``edge_horizon``, ``src``, ``dst`` per ``edge``) where held out.
    """
    import arviz as az
    import xarray as xr

    s, h, n, f = forecast["X"].shape
    draws = s // chains

    def split(t: torch.Tensor, dtype: Any) -> np.ndarray:
        return t.reshape(chains, draws, *t.shape[1:]).numpy().astype(dtype)

    node_ids = [str(v) for v in history.node_ids]
    coords = {"horizon": list(range(1, h + 1)), "node": node_ids, "node_to": node_ids,
              "feature": list(history.feature_names),
              "time": list(range(1, history.num_steps + 1))}
    dims = {"X": ["horizon", "node", "feature"], "A": ["horizon", "node", "node_to"],
            "edge_prob": ["horizon", "node", "node_to"], "X_history": ["time", "node", "feature"]}
    sparse = "edge_index" in forecast
    observed: dict[str, np.ndarray] = {"X_history": history.x.numpy()}
    held_out = future is not None and future.num_steps >= h
    if held_out:
        observed["X"] = future.x[:h].numpy()
        if not sparse:
            observed["A"] = torch.stack([future.adjacency(t) for t in range(h)]).numpy().astype(np.int8)
    predictive = {"X": split(forecast["X"], np.float32)}
    if not sparse:
        # half precision (absolute error at most 2.4e-4 for probabilities in [0, 1]): it halves the file, whose
        # size is the per-draw probabilities (zlib barely compresses floats; measured in docs/cli.md)
        predictive.update(A=split(forecast["A"], np.int8), edge_prob=split(forecast["edge_prob"], np.float16))
    attrs = {"model": "dgm_pyro.models.GraphSSM", "directed": int(history.directed), "edges": "sparse" if sparse
             else "dense", "static_features": ",".join(n for n, st in zip(history.feature_names, static) if st)}
    idata = az.from_dict(posterior_predictive=predictive, observed_data=observed, coords=coords, dims=dims,
                         attrs=attrs)
    if sparse:
        path, step, src, dst = forecast["edge_index"].numpy()  # int32, sorted by step, then path
        count = np.bincount(path + s * step, minlength=s * h).reshape(h, chains, draws).transpose(1, 2, 0)
        groups = {"edge_draws": xr.Dataset(
            {"edge_chain": ("edge", path // draws), "edge_draw": ("edge", path % draws),
             "edge_horizon": ("edge", (step + 1).astype(np.int16)), "src": ("edge", src), "dst": ("edge", dst),
             "num_edges": (("chain", "draw", "horizon"), count.astype(np.int32))},
            coords={"horizon": coords["horizon"]}, attrs={"node_positions": "index into the node coordinate"})}
        if "top_k_dst" in forecast:
            k = forecast["top_k_dst"].shape[-1]
            groups["edge_top_k"] = xr.Dataset(
                {"dst": (("horizon", "node", "rank"), forecast["top_k_dst"].numpy().astype(np.int32)),
                 "prob": (("horizon", "node", "rank"), forecast["top_k_prob"].numpy().astype(np.float32))},
                coords={"horizon": coords["horizon"], "node": node_ids, "rank": list(range(1, k + 1))})
        if held_out:
            step_true = np.concatenate([np.full(future.edges[t].shape[1], t + 1) for t in range(h)])
            true = torch.cat(future.edges[:h], 1).numpy()
            groups["observed_edges"] = xr.Dataset(
                {"edge_horizon": ("edge", step_true.astype(np.int16)), "src": ("edge", true[0].astype(np.int32)),
                 "dst": ("edge", true[1].astype(np.int32))})
        idata.add_groups(groups)
    return idata


def _write_netcdf(idata: Any, path: Path) -> None:
    """Write the InferenceData atomically (arviz writes to a path, so: a temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        idata.to_netcdf(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


#: ``forecast --edges``: dense N x N probabilities, sampled sparse edges, or dense up to FORECAST_MAX_NODES nodes
EDGE_OUTPUTS = ("auto", "dense", "sparse")

#: the most drawn edges a sparse forecast holds over all paths and steps (about 40 bytes each at the peak)
SPARSE_MAX_EDGES = 10 ** 8


def forecast_run(run: GraphRun, horizon: int, num_samples: int = 100, chains: int = 1, seed: int = 0,
                 out: Optional[str | Path] = None, plots: bool = True,
                 stationarity_steps: int = 0, edges: str = "auto", top_k: int = 10,
                 negatives: int = 100_000, intervals: int = 0) -> dict[str, Any]:
    """Forecast ``horizon`` snapshots after the history (P4.4) and score them where the truth is held out.

    Writes the NetCDF ``InferenceData`` ``out`` (default ``RUN/forecast.nc``), the scores beside it
    (``forecast.json`` for ``forecast.nc``) and, with ``plots``, ``plots/<stem>_*.png`` in the same folder.
    Returns the JSON dict: ``metrics`` maps each forecaster (model, baselines, oracle where known) to one row
    per scored horizon step, ``not_scored`` says why a forecaster has no row, ``notes`` why a value is NaN,
    ``files`` lists what was written. A run whose training is not finished is forecast from its last
    checkpoint with a warning (``unfinished`` says what is left).

    ``edges``: ``dense`` keeps every path's N x N edge probabilities and draws and scores all pairs; ``sparse``
    (:func:`~dgm_pyro.models.graph_sparse.sparse_forecast`) keeps each path's drawn edges as a COO list and
    the ``top_k`` most probable new edges per node and step, and scores all true edges against ``negatives``
    uniformly drawn non-edges per step (:func:`~dgm_pyro.metrics.sample_pairs`); ``auto``: dense up to
    ``FORECAST_MAX_NODES`` nodes.

    ``intervals`` > 0 (dense edges only) adds ``comparisons``: for each scored step ``h<k>`` and each other
    forecaster, GraphSSM's AUC and AP minus that forecaster's, each with its 95 % paired bootstrap interval over
    the pairs from ``intervals`` resamples (:func:`~dgm_pyro.metrics.edge_score_difference`): whether a lead or a
    gap is larger than what the snapshot's few edges can tell apart.
    """
    if horizon < 1:
        raise DgmPyroError(f"horizon must be >= 1, got {horizon}")
    if num_samples < 1 or chains < 1:
        raise DgmPyroError("samples and chains must be >= 1")
    if edges not in EDGE_OUTPUTS:
        raise DgmPyroError(f"edges must be one of {', '.join(EDGE_OUTPUTS)}; got '{edges}'")
    if top_k < 0 or negatives < 1:
        raise DgmPyroError("top-k must be >= 0 and negatives >= 1")
    history, future = run.history, run.future
    sparse = edges == "sparse" or (edges == "auto" and history.num_nodes > FORECAST_MAX_NODES)
    if not sparse and history.num_nodes > FORECAST_MAX_NODES:
        raise DgmPyroError(f"the graph has {history.num_nodes} nodes; dense forecasts (N^2 edge probabilities per "
                           f"draw and step) are available up to {FORECAST_MAX_NODES} nodes: use --edges sparse")
    if sparse and getattr(run.module, "edge_proximity", False):
        raise DgmPyroError("this run's edge logits use the Katz proximity (--edge-proximity), an N x N matrix: "
                           "forecast it with --edges dense")
    if intervals < 0:
        raise DgmPyroError(f"intervals must be >= 0, got {intervals}")
    if sparse and intervals:
        raise DgmPyroError("the paired intervals resample every pair of a dense forecast; leave them out with "
                           "--edges sparse")
    if sparse and stationarity_steps:
        raise DgmPyroError("the stationarity check rolls out dense graphs; leave it out with --edges sparse")
    out_path = Path(out) if out is not None else run.path / "forecast.nc"
    if out_path.suffix != ".nc":
        raise DgmPyroError(f"the forecast file must end in .nc (NetCDF); got '{out_path.name}'")
    if not out_path.parent.is_dir():
        raise DgmPyroError(f"{out_path.parent}: no such directory for the forecast file")
    if out_path.with_suffix(".json") in (run.path / "config.json", run.path / "environment.json"):
        raise DgmPyroError(f"{out_path}: its scores would overwrite the run's {out_path.stem}.json; choose another name")
    unfinished = run.kind.unfinished(run.config, run.path)
    if unfinished:
        log.warning("%s: training is not finished (%s); forecasting from its last checkpoint", run.path,
                    "; ".join(unfinished))
    total = num_samples * chains
    scored = min(horizon, future.num_steps)
    if sparse:
        fc, metrics, extra = _sparse_forecast(run, horizon, total, seed, scored, top_k, negatives)
    else:
        fc, metrics, probs = _dense_forecast(run, horizon, total, seed, scored)
        extra = {}
        if intervals:
            extra["comparisons"] = {
                f"h{h + 1}": {name: edge_score_difference(probs["GraphSSM"][h], p[h], future.adjacency(h),
                                                          history.directed, num_resamples=intervals, seed=seed + h)
                              for name, p in probs.items() if name != "GraphSSM"} for h in range(scored)}
    idata = to_inference_data(fc, chains, history, future if future.num_steps >= horizon else None,
                              static=run.module.static_mask.tolist())
    _write_netcdf(idata, out_path)
    notes = [] if total >= 10 else [f"coverage is NaN: intervals need at least 10 draws, this forecast has {total} "
                                    "(raise --samples)"]
    heuristics = {h.name: h for h in link_heuristics()}
    point = [name for name, rows in metrics.items() if rows and name not in heuristics and name != "GraphSSM"
             and all(not math.isfinite(r.get("coverage_50", math.nan)) for r in rows)]
    if total >= 10 and point:
        notes.append(f"coverage (cov50, cov90, PIT50, PIT90) is NaN for {', '.join(point)}: point forecasts have no "
                     "predictive interval")
    if any(name in heuristics for name in metrics):
        ranking = [name for name, h in heuristics.items() if not h.probabilistic and name in metrics]
        notes.append(f"the link heuristics ({', '.join(heuristics)}) forecast edges only: their feature columns are "
                     f"NaN; {', '.join(ranking)} give ranking scores, not probabilities: only AUC and AP apply")
    not_scored = {} if run.baseline is not None else {"GCN+GRU": _why_no_baseline(run)}
    if sparse and history.num_nodes > FORECAST_MAX_NODES:
        not_scored.update({h.name: f"the link heuristics score all N x N pairs, up to {FORECAST_MAX_NODES} nodes"
                           for h in link_heuristics()})
    result: dict[str, Any] = {"run": str(run.path), "out": str(out_path), "horizon": horizon, "samples": num_samples,
                              "chains": chains, "seed": seed, "edges": "sparse" if sparse else "dense",
                              "scored_steps": scored, "metrics": metrics,
                              "not_scored": not_scored, "notes": notes + extra.pop("notes", []),
                              "unfinished": unfinished, **extra}
    if stationarity_steps:
        result["stationarity"] = stationarity_check(run.module.cpu(), history, chains=max(chains, 4),
                                                    steps=stationarity_steps, seed=seed)
    files = [out_path]
    if plots and scored:
        result["plots"] = [str(p) for p in plot_forecast(history, future, fc, metrics, scored, out_path.parent / "plots",
                                                         prefix=out_path.stem)]
        files += [Path(p) for p in result["plots"]]
    json_path = out_path.with_suffix(".json")
    result["files"] = [str(f) for f in files + [json_path]]
    write_json(json_path, result)
    return result


def _dense_forecast(run: GraphRun, horizon: int, total: int, seed: int, scored: int
                    ) -> tuple[dict[str, torch.Tensor], dict[str, list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """The forecast, every forecaster's scores and its edge scores (H, N, N) (the model's averaged over paths)."""
    history, future = run.history, run.future
    pyro.set_rng_seed(seed)
    device = run.device
    with deterministic_algorithms():
        fc = run.module.forecast(history.x.to(device), [e.to(device) for e in history.edges], horizon=horizon,
                                 num_samples=total, future=(future.x.to(device), [e.to(device) for e in future.edges]))
    fc = {k: v.cpu() for k, v in fc.items()}
    metrics: dict[str, list[dict[str, Any]]] = {"GraphSSM": forecast_scores(fc, future, history, scored)}
    probs = {"GraphSSM": fc["edge_prob"].mean(0)}
    for h in range(scored):
        metrics["GraphSSM"][h]["log_lik"] = float(fc["log_lik"][h])
    for forecaster in _baselines(run):
        out = forecaster.forecast(history, scored)
        metrics[forecaster.name] = forecast_scores(out, future, history, scored)
        probs[forecaster.name] = _edge_scores_of(out)
    for heuristic in link_heuristics():
        out = heuristic.forecast(history, scored)
        metrics[heuristic.name] = forecast_scores(out, future, history, scored, probabilistic=heuristic.probabilistic)
        probs[heuristic.name] = _edge_scores_of(out)
    if "blocks" in history.truth:
        oracle = DSBMOracle(history).forecast(scored, total, seed=seed)
        metrics["oracle"] = forecast_scores(oracle, future, history, scored)
        probs["oracle"] = _edge_scores_of(oracle)
    return fc, metrics, probs


def _edge_scores_of(forecast: dict[str, Any]) -> torch.Tensor:
    p = forecast["edge_prob"]
    return p.mean(0) if p.dim() == 4 else p


def _baselines(run: GraphRun) -> list[Any]:
    return [Persistence(), HistoricalMean()] + ([run.baseline] if run.baseline is not None else [])


def _sparse_forecast(run: GraphRun, horizon: int, total: int, seed: int, scored: int, top_k: int, negatives: int
                     ) -> tuple[dict[str, torch.Tensor], dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The ``--edges sparse`` forecast and its scores on all true edges and sampled non-edges per step."""
    history, future = run.history, run.future
    n, directed, device = history.num_nodes, history.directed, run.device
    pairs = [sample_pairs(future.edges[h], n, directed, negatives, seed=seed + h) for h in range(scored)]
    new = [Persistence().edge_probability_at(history, p) == 0 for p, _, _ in pairs]
    pyro.set_rng_seed(seed)
    per_snapshot = sum(e.shape[1] for e in history.edges) / history.num_steps
    try:
        with deterministic_algorithms():
            fc = sparse_forecast(run.module, history.x.to(device), [e.to(device) for e in history.edges],
                                 horizon=horizon, num_samples=total, top_k=top_k,
                                 score_pairs=[p.to(device) for p, _, _ in pairs], max_edges=SPARSE_MAX_EDGES)
    except ValueError as e:
        raise DgmPyroError(f"{e}: the forecast would hold more than {SPARSE_MAX_EDGES:.0e} drawn edges (the history "
                           f"has {per_snapshot:.0f} per snapshot); the model expects far more edges than the "
                           "data has (train it longer), or lower --samples / --horizon") from None
    fc = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in fc.items()}
    metrics = {"GraphSSM": _pair_rows([p.cpu() for p in fc["pair_prob"]], fc["X"], future, pairs, new)}
    for forecaster in _baselines(run):
        if isinstance(forecaster, (Persistence, HistoricalMean)):
            probs = [forecaster.edge_probability_at(history, p) for p, _, _ in pairs]
            metrics[forecaster.name] = _pair_rows(probs, forecaster.features(history, scored), future, pairs, new)
        else:  # the GCN+GRU baseline and the oracle exist only on small graphs: dense forecasts, gathered
            metrics[forecaster.name] = _gathered_rows(forecaster.forecast(history, scored), future, pairs, new)
    if n <= FORECAST_MAX_NODES:  # the heuristics score all N x N pairs at once
        nan_x = torch.full((1, scored, n, history.num_features), math.nan)
        for heuristic in link_heuristics():
            scores = heuristic.scores(history)
            rows = _pair_rows([scores[p[0], p[1]].float() for p, _, _ in pairs], nan_x, future, pairs, new)
            metrics[heuristic.name] = rows if heuristic.probabilistic else [ranking_only(r) for r in rows]
    if "blocks" in history.truth:
        oracle = DSBMOracle(history).forecast(scored, total, seed=seed)
        metrics["oracle"] = _gathered_rows(oracle, future, pairs, new)
    counts = [int(p[1].numel()) for p in pairs]
    extra = {"edge_pairs": {"estimator": "all true edges at weight 1 and non-edges drawn uniformly with replacement "
                                         "at weight (#non-edges / #drawn): Brier, density error and log-likelihood "
                                         "Horvitz-Thompson (unbiased), AUC unbiased, AP and ECE ratio estimates",
                            "pairs_per_step": counts, "negatives": negatives},
             "sampler": fc.pop("sampler"),
             "notes": ["log_lik is not computed with --edges sparse (it needs every pair of every path)"]}
    return fc, metrics, extra


def _pair_rows(probs: Sequence[torch.Tensor], x: torch.Tensor, future: GraphSequence, pairs: list[tuple],
               new: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Score rows per step h of a forecast on the sampled pairs of :func:`sample_pairs`: edge probabilities
    ``probs[h]`` (P_h,) at ``pairs[h]`` (pairs, truth, weight), ``new[h]`` which pairs were non-edges at the
    origin, and feature draws ``x`` (S, H, N, F)."""
    return [{"h": h + 1, **pair_edge_scores(probs[h], pairs[h][1], new[h], pairs[h][2]),
             **feature_scores(x[:, h], future.x[h])} for h in range(len(pairs))]


def _gathered_rows(dense: dict[str, torch.Tensor], future: GraphSequence, pairs: list[tuple],
                   new: list[torch.Tensor]) -> list[dict[str, Any]]:
    """:func:`_pair_rows` of a dense forecast (``edge_prob`` (S, H, N, N) or (H, N, N)) at the sampled pairs."""
    prob = dense["edge_prob"].mean(0) if dense["edge_prob"].dim() == 4 else dense["edge_prob"]
    probs = [prob[h][p[0], p[1]] for h, (p, _, _) in enumerate(pairs)]
    return _pair_rows(probs, dense["X"], future, pairs, new)


def _why_no_baseline(run: GraphRun) -> str:
    if not run.kind.wants_baseline(run.config, run.history.num_nodes):
        return ("not trained (the run was trained with --baseline-steps 0)" if not run.config.baseline_steps else
                f"not trained: the graph has more than {FORECAST_MAX_NODES} nodes")
    return f"its training has not written {run.path / 'baseline' / 'checkpoint.pt'} yet"
