"""Rolling-origin backtests of the graph state-space model, with warm-started refits (``dgm-pyro backtest``).

For origins T_1 < T_2 < ... the model is trained on snapshots [0, T_1) (``config.steps`` steps), forecasts
T_1 .. T_1 + H - 1 (seed P4.4), and is scored against them beside the baselines; at every later origin it
is refitted on [0, T_i) starting from the previous origin's weights (``refit_steps`` steps), or with
``refit=False`` reused as it is (then the model never sees the snapshots between the origins, as a model
deployed once). The rows have the shape of ``pyro.contrib.forecast.backtest``: one per origin, forecaster
and horizon step, with ``t0`` (start of training), ``t1`` (the origin: end of training, start of the
forecast), ``t2`` (end of the forecast window), the metrics, ``train_walltime`` and ``test_walltime``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import pyro
import torch

from ..checkpoint import write_json
from ..data.graph_files import load_graph_dataset
from ..errors import DgmPyroError
from ..metrics import FORECAST_MAX_NODES, forecast_scores, score_window
from ..models.graph_baselines import DSBMOracle, HistoricalMean, Persistence
from ..models.link_heuristics import link_heuristics
from ..training import deterministic_algorithms
from .graph_ssm import GraphConfig, GraphSSMKind, sequence_on, build_graph_baseline, build_graph_model, static_features

__all__ = ["backtest_graph"]

log = logging.getLogger("dgm_pyro.runs")


def _check_origins(origins: Sequence[int], horizon: int, num_steps: int) -> list[int]:
    if horizon < 1:
        raise DgmPyroError(f"horizon must be >= 1, got {horizon}")
    if not origins:
        raise DgmPyroError("give at least one origin")
    out = sorted(set(int(t) for t in origins))
    bad = [t for t in out if not 2 <= t <= num_steps - horizon]
    if bad:
        raise DgmPyroError(f"origin(s) {', '.join(map(str, bad))} out of range: an origin T trains on snapshots "
                           f"0..T-1 and scores T..T+{horizon - 1}, so 2 <= T <= {num_steps - horizon} for "
                           f"{num_steps} snapshots and horizon {horizon}")
    return out


def backtest_graph(config: GraphConfig, origins: Sequence[int], horizon: int, out_dir: str | Path,
                   refit: bool = True, refit_steps: int = 100, num_samples: int = 100, progress: bool = False,
                   device: str | torch.device = "cpu") -> dict[str, Any]:
    """Rolling-origin backtest of the configured GraphSSM on the configured dataset's whole sequence.

    Args:
        config: the model and data configuration (``test_steps`` and ``valid_steps`` do not apply: the
            origins split the sequence; ``steps`` is the first fit's length and ``baseline_steps`` the
            GCN+GRU baseline's, 0 to leave it out).
        origins: snapshot indices T at which forecasts start (2 <= T <= #snapshots - ``horizon``).
        horizon: H, snapshots forecast and scored per origin.
        out_dir: a new or empty folder: ``backtest.json`` (settings, rows, means over origins),
            ``backtest.csv`` (the rows) and one training folder per fit (``origin-T/``, ``origin-T/baseline/``).
        refit: refit at every origin after the first, warm-started, for ``refit_steps`` steps (the
            baseline for ``min(refit_steps, baseline_steps)``).
        num_samples: forecast paths per origin (draws from seed ``config.seed``).

    Returns:
        The dict written to ``backtest.json``: ``rows`` (one per origin, forecaster and h) and ``mean``
        (per forecaster and h, over origins).
    """
    if refit_steps < 1:
        raise DgmPyroError(f"refit_steps must be >= 1, got {refit_steps}")
    if num_samples < 1:
        raise DgmPyroError(f"num_samples must be >= 1, got {num_samples}")
    config = dataclasses.replace(config, valid_steps=0).validate()
    seq = load_graph_dataset(config.dataset, snapshot_width=config.snapshot_width, directed=config.directed,
                             seed=config.seed)
    origins = _check_origins(origins, horizon, seq.num_steps)
    if seq.num_nodes > FORECAST_MAX_NODES:
        raise DgmPyroError(f"the graph has {seq.num_nodes} nodes; backtests forecast dense graphs, available up to "
                           f"{FORECAST_MAX_NODES} nodes")
    static_features(config, seq)
    out_dir = Path(out_dir)
    if out_dir.is_file():
        raise DgmPyroError(f"{out_dir}: is a file; the backtest needs a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise DgmPyroError(f"{out_dir}: is not empty; give a new or empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    kind = GraphSSMKind()
    settings = {"origins": origins, "horizon": horizon, "refit": refit, "refit_steps": refit_steps,
                "samples": num_samples, "config": config.to_dict(), "snapshots": seq.num_steps}
    write_json(out_dir / "settings.json", settings)
    module = baseline = None
    rows: list[dict[str, Any]] = []
    for i, t1 in enumerate(origins):
        hist, fut = seq.slice(0, t1), seq.slice(t1, t1 + horizon)
        args = sequence_on(device, hist)
        fit = i == 0 or refit
        steps = base_steps = 0
        train_walltime = base_walltime = 0.0
        if fit:
            steps = config.steps if i == 0 else refit_steps
            base_steps = config.baseline_steps if i == 0 else min(refit_steps, config.baseline_steps)
            log.info("origin %d: %s on snapshots 0..%d, %d steps", t1, "training" if i == 0 else "refitting "
                     "(warm start)", t1 - 1, steps)
            pyro.set_rng_seed(config.seed)
            new = build_graph_model(config, hist).to(device)
            if module is not None:
                new.load_state_dict(module.state_dict())
            module = new
            start = time.perf_counter()
            kind.fit(dataclasses.replace(config, steps=steps), args, module, out_dir / f"origin-{t1}",
                     progress=progress)
            train_walltime = time.perf_counter() - start
            if base_steps:
                start = time.perf_counter()
                pyro.set_rng_seed(config.seed)
                new_base = build_graph_baseline(config, hist).to(device)
                if baseline is not None:
                    new_base.load_state_dict(baseline.state_dict())
                baseline = new_base
                kind.fit_baseline(config, args, baseline, out_dir / f"origin-{t1}" / "baseline", base_steps,
                                  progress=progress)
                base_walltime = time.perf_counter() - start
        start = time.perf_counter()
        module.eval()
        with deterministic_algorithms():
            scores = {"GraphSSM": score_window(module, hist, fut, horizon, num_samples, seed=config.seed)}
        test_walltime = time.perf_counter() - start
        others: list[Any] = [Persistence(), HistoricalMean()]
        if baseline is not None:
            baseline.eval()
            others.append(baseline.cpu())
        for f in others:
            scores[f.name] = forecast_scores(f.forecast(hist, horizon), fut, hist, horizon)
        for heuristic in link_heuristics():
            scores[heuristic.name] = forecast_scores(heuristic.forecast(hist, horizon), fut, hist, horizon,
                                                     probabilistic=heuristic.probabilistic)
        if baseline is not None:
            baseline.to(device)
        if "blocks" in hist.truth:
            scores["oracle"] = forecast_scores(DSBMOracle(hist).forecast(horizon, num_samples, seed=config.seed), fut,
                                               hist, horizon)
        trained = {"GraphSSM": (steps, train_walltime), "GCN+GRU": (base_steps, base_walltime)}
        for name, per_h in scores.items():
            n_steps, seconds = trained.get(name, (0, None))
            for row in per_h:
                rows.append({"t0": 0, "t1": t1, "t2": t1 + horizon, "forecaster": name, **row,
                             "refit": fit, "train_steps": n_steps, "train_walltime": seconds,
                             "test_walltime": test_walltime if name == "GraphSSM" else None})
    result = {**settings, "rows": rows, "mean": _means(rows)}
    write_json(out_dir / "backtest.json", result)
    _write_csv(out_dir / "backtest.csv", rows)
    # the fitted origins' run folders (checkpoints, metrics.csv, the baseline) come after the tables
    result["files"] = [str(out_dir / n) for n in ("settings.json", "backtest.json", "backtest.csv")] + sorted(
        str(p) for p in out_dir.glob("origin-*") if p.is_dir())
    return result


_NOT_METRICS = {"t0", "t1", "t2", "forecaster", "h", "refit", "train_steps", "train_walltime", "test_walltime"}


def _means(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per forecaster, one row per h: each metric's mean over the origins where it is a number."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in dict.fromkeys(r["forecaster"] for r in rows):
        mine = [r for r in rows if r["forecaster"] == name]
        per_h = []
        for h in sorted({r["h"] for r in mine}):
            at = [r for r in mine if r["h"] == h]
            row: dict[str, Any] = {"h": h, "origins": len(at)}
            for k in at[0]:
                vals = [r[k] for r in at if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                        and r[k] == r[k]]
                if k not in _NOT_METRICS and vals:
                    row[k] = sum(vals) / len(vals)
            per_h.append(row)
        out[name] = per_h
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def summary_table(result: dict[str, Any], metrics: Sequence[str] = ("auc", "ap", "ap_1to1", "crps", "coverage_90"),
                  max_h: Optional[int] = None) -> str:
    """A Markdown table of the mean over origins per forecaster and h (for the command line and docs)."""
    names = list(result["mean"])
    hs = sorted({r["h"] for rows in result["mean"].values() for r in rows})[:max_h]
    lines = ["| forecaster | h | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for name in names:
        for r in result["mean"][name]:
            if r["h"] in hs:
                cells = [f"{r[m]:.4f}" if isinstance(r.get(m), float) else "n/a" for m in metrics]
                lines.append(f"| {name} | {r['h']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
