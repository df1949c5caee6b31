"""Graph-forecasting run folders: train a :class:`~dgm_pyro.models.GraphSSM` on the history of a graph
sequence, then forecast the held-out snapshots with it, its baselines and (on the dynamic SBM) the oracle.

A graph run folder holds ``config.json`` (a :class:`~dgm_pyro.config.GraphConfig`), ``environment.json``,
``metrics.csv`` (one row per checkpoint interval), ``checkpoint.pt``, ``baseline.pt`` (the GCN+GRU
predictor), ``plots/`` and, after ``forecast``, ``forecast.json`` and the NetCDF forecast.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pyro
import torch

from .checkpoint import load_checkpoint, read_json, save_checkpoint, write_json
from .config import GraphConfig
from .data.graphs import DSBMOracle, GraphSequence, load_graph_dataset
from .errors import DgmPyroError
from .metrics import forecast_scores
from .models.graph_baselines import GCNGRUForecaster, HistoricalMean, Persistence
from .models.graph_ssm import GraphSSM
from .plotting import save_figure
from .training import deterministic_algorithms, environment, fit_sequence, read_metrics

__all__ = ["GraphRun", "load_graph_sequence", "build_graph_model", "train_graph_run", "load_graph_run",
           "forecast_run", "backtest", "stationarity_check", "to_inference_data", "FORECAST_MAX_NODES"]

#: forecasts are dense (S x H x N x N edge probabilities): larger graphs are trained but not forecast
FORECAST_MAX_NODES = 2000


@dataclass
class GraphRun:
    """A loaded graph run: configuration, history, held-out future, trained model and baseline."""

    path: Path
    config: GraphConfig
    history: GraphSequence
    future: GraphSequence
    module: GraphSSM
    baseline: Optional[GCNGRUForecaster] = None


def load_graph_sequence(config: GraphConfig) -> tuple[GraphSequence, GraphSequence]:
    """(history, held-out future) of the configured dataset."""
    seq = load_graph_dataset(config.dataset, snapshot_width=config.snapshot_width, directed=config.directed,
                             seed=config.seed)
    return seq.split(config.test_steps)


def build_graph_model(config: GraphConfig, history: GraphSequence) -> GraphSSM:
    """The configured :class:`GraphSSM`, sized for the data, with feature scaling from the history."""
    x = history.x
    shift = x.mean((0, 1)) if x.shape[-1] else None
    scale = x.std((0, 1)).clamp_min(1e-3) if x.shape[-1] else None
    return GraphSSM(history.num_nodes, history.num_features, latent_dim=config.latent_dim, hidden=config.hidden,
                    directed=history.directed, gnn=config.gnn,
                    edge_likelihood=config.resolved_edge_likelihood(history.num_nodes),
                    negatives_per_edge=config.negatives_per_edge,
                    deterministic_features=config.deterministic_decoder, feature_shift=shift, feature_scale=scale,
                    edge_memory=config.edge_memory)


def _baseline_possible(history: GraphSequence) -> bool:
    return history.num_nodes <= FORECAST_MAX_NODES


def train_graph_run(config: GraphConfig, run_dir: str | Path, resume: bool = False, progress: bool = False,
                    on_start: Optional[Callable[[Path], None]] = None) -> dict[str, Any]:
    """Train the configured GraphSSM (and the GCN+GRU baseline) on the history into ``run_dir``.

    With ``resume=True`` the configuration comes from ``run_dir/config.json`` and training continues from
    the last checkpoint (a run killed before its first checkpoint starts again in place).
    """
    run_dir = Path(run_dir)
    restart = False
    if resume:
        from .runs import restart_in_place

        config = _read_graph_config(run_dir)
        restart = restart_in_place(run_dir)
    config.validate()
    history, _ = load_graph_sequence(config)
    pyro.set_rng_seed(config.seed)
    module = build_graph_model(config, history)
    if not resume:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise DgmPyroError(f"{run_dir}: exists and is not empty; choose another --out or use --resume")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config.to_dict())
        write_json(run_dir / "environment.json", {**environment(), "seed": config.seed,
                                                  "torch_threads": torch.get_num_threads(),
                                                  "data": history.summary()})
    if on_start is not None:
        on_start(run_dir)
    summary = fit_sequence(module, (history.x, history.edges), config, run_dir, resume=resume and not restart,
                           progress=progress, normaliser=history.num_steps)
    summary["edge_likelihood"] = module.edge_likelihood
    summary["data"] = history.summary()
    if config.baseline_steps and _baseline_possible(history) and not (run_dir / "baseline.pt").is_file():
        baseline = GCNGRUForecaster(history.num_nodes, history.num_features, hidden=config.hidden,
                                    directed=history.directed)
        with deterministic_algorithms():
            baseline.fit(history, steps=config.baseline_steps, seed=config.seed)
        save_checkpoint({"model_state": baseline.state_dict(), "versions": environment()}, run_dir / "baseline.pt")
    _plot_graph_training(run_dir)
    return summary


def _read_graph_config(path: Path) -> GraphConfig:
    from .runs import require_run_dir

    require_run_dir(path)
    raw = read_json(path / "config.json")
    if not isinstance(raw, dict) or raw.get("model") != "graph-ssm":
        kind = raw.get("model", "unknown") if isinstance(raw, dict) else "unknown"
        raise DgmPyroError(f"{path}: a '{kind}' run, not a graph-ssm run; forecast needs a run made with "
                           "'dgm-pyro train graph-ssm'")
    return GraphConfig.from_dict(raw, source=str(path / "config.json")).validate()


def load_graph_run(path: str | Path) -> GraphRun:
    """Load a graph run folder (weights only) with its data split."""
    path = Path(path)
    config = _read_graph_config(path)
    history, future = load_graph_sequence(config)
    pyro.clear_param_store()
    module = build_graph_model(config, history)
    ckpt = load_checkpoint(path / "checkpoint.pt")
    try:
        module.load_state_dict(ckpt["model_state"])
    except RuntimeError:
        raise DgmPyroError(f"{path / 'checkpoint.pt'}: weights do not fit the model described by config.json") \
            from None
    baseline = None
    if (path / "baseline.pt").is_file():
        baseline = GCNGRUForecaster(history.num_nodes, history.num_features, hidden=config.hidden,
                                    directed=history.directed)
        try:
            baseline.load_state_dict(load_checkpoint(path / "baseline.pt")["model_state"])
        except RuntimeError:
            raise DgmPyroError(f"{path / 'baseline.pt'}: weights do not fit the baseline") from None
    return GraphRun(path, config, history, future, module.eval(), baseline)


# --------------------------------------------------------------------------------------------------
# forecasting


def to_inference_data(forecast: dict[str, torch.Tensor], chains: int, history: GraphSequence,
                      future: Optional[GraphSequence] = None):
    """An arviz ``InferenceData``: ``posterior_predictive`` ``X`` (chain, draw, horizon, node, feature),
    ``A`` and ``edge_prob`` (chain, draw, horizon, node, node_to); ``observed_data`` the history
    (``X_history``, time, node, feature) and, where held out, the truth ``X`` and ``A`` over the horizon."""
    import arviz as az

    s, h, n, f = forecast["X"].shape
    draws = s // chains

    def split(t: torch.Tensor, dtype: Any) -> np.ndarray:
        return t.reshape(chains, draws, *t.shape[1:]).numpy().astype(dtype)

    node_ids = [str(v) for v in history.node_ids]
    coords = {"horizon": list(range(1, h + 1)), "node": node_ids, "node_to": node_ids, "feature": list(range(f)),
              "time": list(range(1, history.num_steps + 1))}
    dims = {"X": ["horizon", "node", "feature"], "A": ["horizon", "node", "node_to"],
            "edge_prob": ["horizon", "node", "node_to"], "X_history": ["time", "node", "feature"]}
    observed: dict[str, np.ndarray] = {"X_history": history.x.numpy()}
    if future is not None:
        k = min(h, future.num_steps)
        if k == h:
            observed["X"] = future.x[:h].numpy()
            observed["A"] = torch.stack([future.adjacency(t) for t in range(h)]).numpy().astype(np.int8)
    return az.from_dict(posterior_predictive={"X": split(forecast["X"], np.float32),
                                              "A": split(forecast["A"], np.int8),
                                              "edge_prob": split(forecast["edge_prob"], np.float32)},
                        observed_data=observed, coords=coords, dims=dims,
                        attrs={"model": "dgm_pyro.models.GraphSSM", "directed": int(history.directed)})


def _write_netcdf(idata: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        idata.to_netcdf(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def stationarity_check(module: GraphSSM, history: GraphSequence, chains: int = 4, steps: int = 200,
                       seed: int = 0) -> dict[str, Any]:
    """Long-run behaviour of the rollout (seed P4.4): ``chains`` independent paths of ``steps`` steps from the
    filtered state; on their second halves, arviz's R-hat and bulk ESS of two summary statistics per step
    (the expected edge density and the mean node feature). R-hat near 1 (< 1.05) says the chains forget
    where they started and agree on one stationary distribution."""
    import arviz as az

    if chains < 2 or steps < 20:
        raise DgmPyroError("--stationarity needs at least 2 chains and 20 steps")
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


def forecast_run(run: GraphRun, horizon: int, num_samples: int = 100, chains: int = 1, seed: int = 0,
                 out: Optional[str | Path] = None, plots: bool = True,
                 stationarity_steps: int = 0) -> dict[str, Any]:
    """Forecast ``horizon`` snapshots after the history (P4.4) and score them where the truth is held out.

    Writes the NetCDF ``InferenceData`` (default ``RUN/forecast.nc``), ``RUN/forecast.json`` and, with
    ``plots``, ``RUN/plots/forecast_*.png``. Returns the JSON dict: ``metrics`` maps each forecaster
    (model, baselines, oracle where known) to one row per scored horizon step.
    """
    if horizon < 1:
        raise DgmPyroError(f"--horizon must be >= 1, got {horizon}")
    if num_samples < 1 or chains < 1:
        raise DgmPyroError("--samples and --chains must be >= 1")
    history, future = run.history, run.future
    if history.num_nodes > FORECAST_MAX_NODES:
        raise DgmPyroError(f"the graph has {history.num_nodes} nodes; forecasts are dense (N^2 edge probabilities "
                           f"per draw and step), available up to {FORECAST_MAX_NODES} nodes")
    out_path = Path(out) if out is not None else run.path / "forecast.nc"
    if out_path.suffix != ".nc":
        raise DgmPyroError(f"--out must end in .nc (NetCDF); got '{out_path.name}'")
    if not out_path.parent.is_dir():
        raise DgmPyroError(f"{out_path.parent}: no such directory for --out")
    total = num_samples * chains
    pyro.set_rng_seed(seed)
    with deterministic_algorithms():
        fc = run.module.forecast(history.x, history.edges, horizon=horizon, num_samples=total,
                                 future=(future.x, future.edges))
    scored = min(horizon, future.num_steps)
    metrics: dict[str, list[dict[str, Any]]] = {"GraphSSM": forecast_scores(fc, future, history, scored)}
    for h in range(scored):
        metrics["GraphSSM"][h]["log_lik"] = float(fc["log_lik"][h])
    others: list[Any] = [Persistence(), HistoricalMean()] + ([run.baseline] if run.baseline is not None else [])
    for forecaster in others:
        metrics[forecaster.name] = forecast_scores(forecaster.forecast(history, scored), future, history, scored)
    if "blocks" in history.truth:
        oracle = DSBMOracle(history).forecast(scored, total, seed=seed)
        metrics["oracle"] = forecast_scores(oracle, future, history, scored)
    idata = to_inference_data(fc, chains, history, future if future.num_steps >= horizon else None)
    _write_netcdf(idata, out_path)
    result: dict[str, Any] = {"run": str(run.path), "out": str(out_path), "horizon": horizon, "samples": num_samples,
                              "chains": chains, "seed": seed, "scored_steps": scored, "metrics": metrics}
    if stationarity_steps:
        result["stationarity"] = stationarity_check(run.module, history, chains=max(chains, 4),
                                                    steps=stationarity_steps, seed=seed)
    if plots and scored:
        result["plots"] = [str(p) for p in _plot_forecast(run, fc, metrics, scored)]
    write_json(run.path / "forecast.json", _finite(result))
    return result


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def backtest(module: GraphSSM, sequence: GraphSequence, origins: list[int], horizon: int, num_samples: int = 100,
             seed: int = 0) -> list[dict[str, Any]]:
    """Rolling-origin evaluation without refitting (in the spirit of ``pyro.contrib.forecast.backtest``): for
    each origin T0 the model filters snapshots 1..T0 and forecasts T0+1..T0+H. Returns one dict per
    window: ``{"origin", "metrics": [one row per horizon step]}``."""
    rows = []
    for t0 in origins:
        if not 1 <= t0 <= sequence.num_steps - horizon:
            raise DgmPyroError(f"origin {t0} leaves no {horizon} snapshots to score in {sequence.num_steps}")
        pyro.set_rng_seed(seed)
        hist, fut = sequence.slice(0, t0), sequence.slice(t0, t0 + horizon)
        fc = module.forecast(hist.x, hist.edges, horizon=horizon, num_samples=num_samples)
        rows.append({"origin": t0, "metrics": forecast_scores(fc, fut, hist, horizon)})
    return rows


# --------------------------------------------------------------------------------------------------
# plots


def _plot_graph_training(run_dir: Path) -> Optional[Path]:
    rows = read_metrics(run_dir / "metrics.csv")
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["train_loss"] for r in rows], label="negative ELBO per snapshot")
    ax.set_xlabel("step")
    ax.set_ylabel("nats")
    twin = ax.twinx()
    twin.plot([r["step"] for r in rows], [r["teacher_forcing"] for r in rows], color="C1", ls="--")
    twin.set_ylabel("teacher forcing eps", color="C1")
    twin.set_ylim(-0.05, 1.05)
    fig.tight_layout()
    return save_figure(fig, run_dir / "plots" / "training.png")


def _plot_forecast(run: GraphRun, fc: dict[str, torch.Tensor], metrics: dict[str, list[dict[str, Any]]],
                   scored: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history, future = run.history, run.future
    paths = []
    if history.num_features:
        nodes = list(range(min(4, history.num_nodes)))
        fig, axes = plt.subplots(1, len(nodes), figsize=(3.2 * len(nodes), 2.8), squeeze=False)
        t_hist = np.arange(1, history.num_steps + 1)
        t_fc = np.arange(history.num_steps + 1, history.num_steps + 1 + fc["X"].shape[1])
        for ax, v in zip(axes[0], nodes):
            draws = fc["X"][:, :, v, 0].numpy()
            for lo, hi, alpha in ((5, 95, 0.2), (25, 75, 0.35)):
                ax.fill_between(t_fc, np.percentile(draws, lo, 0), np.percentile(draws, hi, 0), color="C0",
                                alpha=alpha, lw=0)
            ax.plot(t_fc, np.median(draws, 0), color="C0", label="median, 50% and 90% bands")
            ax.plot(t_hist, history.x[:, v, 0].numpy(), color="k", lw=1, label="history")
            ax.plot(t_fc[:scored], future.x[:scored, v, 0].numpy(), "o", color="C3", ms=3, label="truth")
            ax.set_title(f"node {history.node_ids[v]}, feature 0", fontsize=9)
            ax.set_xlabel("snapshot")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        paths.append(save_figure(fig, run.path / "plots" / "forecast_features.png"))
    # edge probability maps, nodes in a spectral order of the history so that communities show as blocks
    order = _node_order(history)
    steps = sorted({0, scored - 1})
    fig, axes = plt.subplots(len(steps), 2, figsize=(6.4, 3.2 * len(steps)), squeeze=False)
    prob = fc["edge_prob"].mean(0)
    for row, h in zip(axes, steps):
        row[0].imshow(prob[h][order][:, order].numpy(), cmap="viridis", vmin=0, vmax=float(prob.max()))
        row[0].set_title(f"forecast edge probability, h={h + 1}", fontsize=9)
        row[1].imshow(future.adjacency(h)[order][:, order].numpy(), cmap="Greys")
        row[1].set_title(f"observed edges, h={h + 1}", fontsize=9)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    paths.append(save_figure(fig, run.path / "plots" / "forecast_edges.png"))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for name, rows in metrics.items():
        hs = [r["h"] for r in rows]
        axes[0].plot(hs, [r["auc"] for r in rows], marker="o", label=name)
        axes[1].plot(hs, [r["crps"] for r in rows], marker="o", label=name)
    axes[0].set_ylabel("edge ROC-AUC")
    axes[1].set_ylabel("node-feature CRPS")
    for ax in axes:
        ax.set_xlabel("horizon h")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(save_figure(fig, run.path / "plots" / "forecast_metrics.png"))
    return paths


def _node_order(history: GraphSequence) -> np.ndarray:
    """Nodes ordered by the leading non-trivial eigenvector of the summed adjacency, so blocks show as squares."""
    a = sum(history.adjacency(t) for t in range(history.num_steps)).double()
    a = a + a.T if history.directed else a
    deg = a.sum(1).clamp_min(1e-9)
    norm = a / deg.sqrt()[:, None] / deg.sqrt()[None, :]
    _, vecs = torch.linalg.eigh(norm)
    return np.lexsort((vecs[:, -3].numpy(), vecs[:, -2].numpy()))
