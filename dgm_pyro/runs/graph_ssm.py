"""The graph state-space model in run folders (``dgm-pyro train graph-ssm``, ``dgm-pyro forecast``): its
configuration, the data split, training (with the GCN+GRU baseline trained into ``baseline/``) and
forecasts scored against the held-out snapshots, the baselines and, on the dynamic SBM, the oracle (P4).

A graph run folder holds ``config.json``, ``environment.json``, ``metrics.csv`` (one row per checkpoint
interval), ``checkpoint.pt``, ``baseline/`` (the GCN+GRU predictor's own run), ``plots/`` and, after
``forecast``, ``forecast.json`` and the NetCDF forecast.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence, Union

import numpy as np
import pyro
import torch

from ..callbacks import ForecastValidation, ScheduledSampling
from ..checkpoint import write_json
from ..config import ConfigBase, option
from ..data.graphs import GraphSequence, load_graph_dataset
from ..errors import DgmPyroError
from ..infer.scheduled_sampling import parse_teacher_forcing
from ..metrics import (FORECAST_MAX_NODES, feature_scores, forecast_scores, pair_edge_scores, sample_pairs,
                       stationarity_check)
from ..models.gnn import GNN_LAYERS
from ..models.graph_baselines import DSBMOracle, GCNGRUForecaster, HistoricalMean, Persistence
from ..models.graph_sparse import sparse_forecast
from ..models.graph_ssm import FEATURE_EMISSIONS, FINAL_STATES, GraphSSM
from ..plotting import plot_forecast, plot_graph_training
from ..registry import register_model
from ..training import FullBatch, Trainer, deterministic_algorithms
from .base import ModelKind, Run, load_weights, run_data, unfinished_training

__all__ = ["GraphConfig", "GraphSSMKind", "GraphRun", "load_graph_sequence", "training_history", "build_graph_model",
           "resolved_feature_emission",
           "forecast_run",
           "to_inference_data"]

log = logging.getLogger("dgm_pyro.runs")


@dataclass
class GraphConfig(ConfigBase):
    """Everything that determines a :class:`~dgm_pyro.models.GraphSSM` run.

    The last ``test_steps`` snapshots are held out for ``dgm-pyro forecast``. ``edge_likelihood`` ``auto``
    is exact (dense) up to ``DENSE_MAX_NODES`` nodes and the sparse estimate above.
    """

    DENSE_MAX_NODES: ClassVar[int] = 1000
    LENGTH: ClassVar[str] = "steps"

    model: str = option("graph-ssm", "registered model name", cli=False)
    dataset: str = option("dsbm", "dsbm, collegemsg, highschool, csv:DIR or pt:FILE (see 'dgm-pyro datasets').")
    test_steps: int = option(5, "Hold out the last K snapshots for forecasting.", min=1)
    snapshot_width: Optional[float] = option(None, "Bin event times into snapshots of this width (csv: default 1; "
                                             "collegemsg: days, default 7; highschool: hours, default 1).",
                                             min=0, min_open=True)
    directed: bool = option(False, "Edges are ordered pairs (csv:/pt: data).")
    latent_dim: int = option(8, "Per-node latent width d.", min=1)
    hidden: int = option(64, "Width of every hidden layer and of the GNN/GRU summaries.", min=1)
    gnn: str = option("gcn", "torch-geometric layer of the guide's snapshot encoder.", choices=GNN_LAYERS)
    edge_likelihood: str = option("auto", "Exact over all pairs, or edges plus reweighted sampled non-edges "
                                  "(auto: dense up to 1000 nodes).", choices=("auto", "dense", "sparse"))
    negatives_per_edge: float = option(5.0, "Sampled non-edges per edge in sparse mode.", min=0, min_open=True)
    scheduled_sampling: str = option("none", "Teacher-forcing probability per step: none, linear:STEPS[:END], "
                                     "exponential:RATE[:FLOOR], inverse-sigmoid:K (seed P4.5).", metavar="SCHEDULE")
    deterministic_decoder: bool = option(False, "Fix the feature covariance at 0.01^2 I (P4.3; shows what it "
                                         "breaks).")
    edge_memory: bool = option(True, "Edge logits also use the pair's last edge and decayed past edge count.")
    feature_emission: str = option("auto", "Node-feature emission: gaussian (full covariance), hurdle (each "
                                   "feature 0, or log-normal above it; for count-like features >= 0 with many zeros), "
                                   "negbin (each feature negative binomial; for integer counts), a comma-separated "
                                   "list of these with one per modelled feature, or auto (see --auto-emission).",
                                   metavar="auto|gaussian|hurdle|negbin|LIST", added=True, before="gaussian")
    auto_emission: str = option("per-feature", "How --feature-emission auto chooses: per-feature (hurdle for each "
                                "modelled feature >= 0 with at least 20% zeros, gaussian for the others) or joint "
                                "(hurdle for all when every one is such, else gaussian for all; runs made before "
                                "this option).", choices=("per-feature", "joint"), added=True, before="joint")
    edge_frequency: bool = option(False, "With --edge-memory, edge logits also use log(1 + the pair's undecayed past "
                                  "edge count), its long-run frequency.", added=True)
    node_activity: bool = option(True, "Edge logits also use each endpoint's decayed and undecayed past degree "
                                 "(node-level propensities: how active a node was lately and over the history; off "
                                 "in runs made before this option).", added=True, before=False)
    final_state: str = option("transition", "How forecasts draw the last latent Z_T: transition (from p(Z_T | "
                              "Z_{T-1}), its exact posterior: no snapshot is emitted from Z_T) or guide (from the "
                              "guide's q(Z_T | Z_{T-1}, history); runs made before this option).",
                              choices=FINAL_STATES, added=True, before="guide")
    static_features: str = option("auto", "Node features conditioned on instead of forecast: auto (those nodes.csv "
                                  "gives without a time column), none, or comma-separated feature names.",
                                  metavar="auto|none|NAMES")
    steps: int = option(300, "Full-sequence SVI steps (at most, with --valid-steps).", min=1)
    valid_steps: int = option(0, "Hold out the last V history snapshots for early stopping: train on the snapshots "
                              "before them, score their predictive log-likelihood after every interval, keep the "
                              "best interval (best.pt) and stop after --patience intervals without improvement "
                              "(0: train every step on the whole history).", min=0, metavar="V", added=True)
    patience: int = option(4, "Intervals without improvement before early stopping (with --valid-steps).", min=1,
                           added=True)
    lr: float = option(1e-2, "Adam learning rate.", min=0, min_open=True)
    clip_norm: float = option(10.0, "Gradient-norm clip.", min=0, min_open=True)
    checkpoint_every: int = option(25, "Steps between checkpoints and metrics rows.", min=1)
    baseline_steps: int = option(300, "Training steps of the GCN+GRU baseline (0 skips it).", min=0)
    seed: int = option(0, "Seed of the data (dsbm), the weights and every draw.", min=0)
    skip_bad_steps: int = option(0, "Skip up to N optimisation steps whose loss or gradient is NaN/inf before "
                                 "stopping.", min=0, metavar="N")

    def validate(self) -> "GraphConfig":
        self.check_fields()
        parse_teacher_forcing(self.scheduled_sampling)
        kinds = self.feature_emission.split(",")
        allowed = FEATURE_EMISSIONS + (("auto",) if len(kinds) == 1 else ())
        if any(k not in allowed for k in kinds):
            raise DgmPyroError(f"bad --feature-emission {self.feature_emission!r}: use auto, one of "
                               f"{', '.join(FEATURE_EMISSIONS)}, or a comma-separated list of them, one per modelled "
                               "feature")
        return self

    def resolved_edge_likelihood(self, num_nodes: int) -> str:
        if self.edge_likelihood != "auto":
            return self.edge_likelihood
        return "dense" if num_nodes <= self.DENSE_MAX_NODES else "sparse"


@dataclass
class GraphRun(Run):
    """A loaded graph run: adds the history and the held-out future (the baseline is the GCN+GRU predictor)."""

    history: Optional[GraphSequence] = None
    future: Optional[GraphSequence] = None


def load_graph_sequence(config: GraphConfig) -> tuple[GraphSequence, GraphSequence]:
    """(history, held-out future) of the configured dataset."""
    seq = load_graph_dataset(config.dataset, snapshot_width=config.snapshot_width, directed=config.directed,
                             seed=config.seed)
    return seq.split(config.test_steps)


def _feature_standardisation(history: GraphSequence, eps: float) -> tuple[Optional[torch.Tensor], ...]:
    x = history.x
    return (x.mean((0, 1)), x.std((0, 1)).clamp_min(eps)) if x.shape[-1] else (None, None)


def static_features(config: GraphConfig, history: GraphSequence) -> list[bool]:
    """Which features are static: the data's own declaration (``auto``), none, or the named ones, each of
    which must be constant over the history for every node."""
    spec = config.static_features.strip()
    if spec == "auto":
        return list(history.static)
    if spec == "none":
        return [False] * history.num_features
    names = [n.strip() for n in spec.split(",")]
    unknown = [n for n in names if n not in history.feature_names]
    if unknown:
        raise DgmPyroError(f"static_features: no feature named '{unknown[0]}'; the features are "
                           f"{', '.join(history.feature_names) or 'none'}")
    mask = [name in names for name in history.feature_names]
    for i in (i for i, static in enumerate(mask) if static):
        name, changing = history.feature_names[i], int((history.x[:, :, i] != history.x[:1, :, i]).any(0).sum())
        if changing:
            raise DgmPyroError(f"static_features: feature '{name}' changes over time for {changing} node(s); only "
                               "constant features can be static")
    return mask


def training_history(config: GraphConfig, history: GraphSequence) -> tuple[GraphSequence, Optional[GraphSequence]]:
    """(the snapshots the model trains on, the ``valid_steps`` held out for early stopping or None)."""
    if not config.valid_steps:
        return history, None
    return history.split(config.valid_steps)


def dynamic_features(config: GraphConfig, history: GraphSequence) -> list[int]:
    """Indices of the modelled (non-static) features."""
    return [i for i, st in enumerate(static_features(config, history)) if not st]


#: ``feature_emission auto`` takes the hurdle for a modelled feature >= 0 with at least this share of zeros
HURDLE_MIN_ZEROS = 0.2


def resolved_feature_emission(config: GraphConfig, history: GraphSequence) -> Union[str, tuple[str, ...]]:
    """The emission of the modelled features: one name for all, or a tuple with one per modelled feature (as
    :class:`GraphSSM` takes ``feature_emission``). ``auto`` takes the hurdle for features >= 0 that are exactly 0
    in at least ``HURDLE_MIN_ZEROS`` of node-snapshots and the Gaussian for the others, per feature, or with
    ``auto_emission="joint"`` for all features at once (the hurdle only when every one qualifies)."""
    dynamic = dynamic_features(config, history)
    kinds = config.feature_emission.split(",")
    if len(kinds) > 1:
        if len(kinds) != len(dynamic):
            names = ", ".join(history.feature_names[i] for i in dynamic) or "none"
            raise DgmPyroError(f"--feature-emission lists {len(kinds)} emissions for {len(dynamic)} modelled "
                               f"feature(s) ({names})")
        return kinds[0] if len(set(kinds)) == 1 else tuple(kinds)
    if config.feature_emission != "auto":
        return config.feature_emission
    if config.deterministic_decoder or not dynamic:
        return "gaussian"
    x = history.x
    count_like = [bool((x[..., i] >= 0).all()) and float((x[..., i] == 0).float().mean()) >= HURDLE_MIN_ZEROS
                  for i in dynamic]
    if config.auto_emission == "joint":
        return "hurdle" if all(count_like) else "gaussian"
    kinds = tuple("hurdle" if c else "gaussian" for c in count_like)
    return kinds[0] if len(set(kinds)) == 1 else kinds


def build_graph_model(config: GraphConfig, history: GraphSequence) -> GraphSSM:
    """The configured :class:`GraphSSM`, sized for the data, with feature scaling from the snapshots it trains
    on (the history before the ``valid_steps`` held out)."""
    history = training_history(config, history)[0]
    shift, scale = _feature_standardisation(history, 1e-3)
    model = GraphSSM(history.num_nodes, history.num_features, latent_dim=config.latent_dim, hidden=config.hidden,
                    directed=history.directed, gnn=config.gnn,
                    edge_likelihood=config.resolved_edge_likelihood(history.num_nodes),
                    negatives_per_edge=config.negatives_per_edge,
                    deterministic_features=config.deterministic_decoder, feature_shift=shift, feature_scale=scale,
                    edge_memory=config.edge_memory, static=static_features(config, history),
                    edge_frequency=config.edge_frequency,
                    feature_emission=resolved_feature_emission(config, history),
                    node_activity=config.node_activity, final_state=config.final_state)
    if model.edge_likelihood == "sparse":
        # large sparse graphs: start the edge bias at the logit of the observed density; the default -3 expects
        # tens of times too many edges there, and the sampled-negative likelihood takes hundreds of steps to undo it
        density = min(max(sum(e.shape[1] for e in history.edges) / (history.num_steps * model.num_pairs), 1e-9), 0.5)
        with torch.no_grad():
            model.edge_bias.fill_(math.log(density) - math.log1p(-density))
    return model


def build_graph_baseline(config: GraphConfig, history: GraphSequence) -> GCNGRUForecaster:
    """The GCN+GRU predictor with the model's hidden width and the history's feature scaling."""
    shift, scale = _feature_standardisation(history, 1e-6)
    return GCNGRUForecaster(history.num_nodes, history.num_features, hidden=config.hidden, directed=history.directed,
                            feature_shift=shift, feature_scale=scale)


def sequence_on(device: torch.device, seq: GraphSequence) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A sequence's features (T, N, F) and edge indices on ``device``: the ``(x, edges)`` models take."""
    return seq.x.to(device), [e.to(device) for e in seq.edges]


@register_model
class GraphSSMKind(ModelKind):
    """Markov latent state-space model over graph sequences (seed P4), trained full-batch on the history."""

    name: ClassVar[str] = "graph-ssm"
    config_class: ClassVar[type] = GraphConfig
    description: ClassVar[str] = "graph state-space model over snapshot sequences: dsbm, collegemsg, highschool, csv:, pt:"
    commands: ClassVar[tuple[str, ...]] = ("forecast",)

    def load_data(self, config: GraphConfig) -> tuple[GraphSequence, GraphSequence]:
        return load_graph_sequence(config)

    def check(self, config: GraphConfig, data: tuple[GraphSequence, GraphSequence]) -> None:
        static_features(config, data[0])
        dynamic = dynamic_features(config, data[0])
        emission = resolved_feature_emission(config, data[0])
        kinds = (emission,) * len(dynamic) if isinstance(emission, str) else emission
        if config.deterministic_decoder and any(k != "gaussian" for k in kinds):
            raise DgmPyroError("--deterministic-decoder fixes a Gaussian covariance; it does not apply to "
                               f"--feature-emission {config.feature_emission}")
        x, names = data[0].x, data[0].feature_names
        for i, kind in zip(dynamic, kinds):
            if kind in ("hurdle", "negbin") and bool((x[..., i] < 0).any()):
                raise DgmPyroError(f"--feature-emission {kind} needs features >= 0; '{names[i]}' has negative "
                                   "values")
            if kind == "negbin" and not bool((x[..., i] == x[..., i].round()).all()):
                raise DgmPyroError(f"--feature-emission negbin needs integer counts; '{names[i]}' has non-integer "
                                   "values")
        if config.valid_steps and config.valid_steps > data[0].num_steps - 2:
            raise DgmPyroError(f"--valid-steps {config.valid_steps} leaves fewer than 2 of the {data[0].num_steps} "
                               "history snapshots to train on")

    def weights(self, config: GraphConfig) -> str:
        return "best.pt" if config.valid_steps else "checkpoint.pt"

    def build(self, config: GraphConfig, data: tuple[GraphSequence, GraphSequence]) -> GraphSSM:
        return build_graph_model(config, data[0])

    def data_summary(self, data: tuple[GraphSequence, GraphSequence]) -> dict[str, Any]:
        return data[0].summary()

    def describe_data(self, data: tuple[GraphSequence, GraphSequence]) -> str:
        d, held = data[0].summary(), data[1].num_steps
        names = ", ".join(n + (" (static)" if st else "") for n, st in zip(data[0].feature_names, data[0].static))
        return (f"{d['name']}, {d['snapshots']} history snapshots (+{held} held out) of {d['nodes']} nodes, "
                f"{d['features']} feature(s){': ' + names if names else ''}, {d['edges_mean']:.0f} edges on average")

    def wants_baseline(self, config: GraphConfig, num_nodes: int) -> bool:
        return bool(config.baseline_steps) and num_nodes <= FORECAST_MAX_NODES

    def unfinished(self, config: GraphConfig, run_dir: Path) -> list[str]:
        parts = super().unfinished(config, run_dir)
        if self.wants_baseline(config, int(run_data(run_dir).get("nodes", 0))):
            part = unfinished_training(Path(run_dir) / "baseline", config, "the GCN+GRU baseline",
                                       total=config.baseline_steps)
            parts += [part] if part else []
        return parts

    def _trainer(self, config: GraphConfig, module: torch.nn.Module, args: tuple, run_dir: Path, steps: int,
                 lr: float, callbacks: list[Any], progress: bool, normaliser: float = 1.0,
                 label: str = "train") -> Trainer:
        return Trainer(module, FullBatch(args, steps, config.checkpoint_every, normaliser), Path(run_dir), lr=lr,
                       clip_norm=config.clip_norm, seed=config.seed, skip_bad_steps=config.skip_bad_steps,
                       callbacks=callbacks, config_digest=config.digest(), deterministic=True, progress=progress,
                       label=label)

    def fit(self, config: GraphConfig, args: tuple, module: torch.nn.Module, run_dir: str | Path,
            resume: bool = False, progress: bool = False, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        """Full-batch SVI of ``module`` on one sequence ``args = (x, edges)`` into ``run_dir``, with scheduled
        sampling (P4.5) and ``callbacks``; the loss is reported per snapshot. Returns the training summary."""
        schedule = ScheduledSampling(parse_teacher_forcing(config.scheduled_sampling))
        trainer = self._trainer(config, module, args, run_dir, config.steps, config.lr, [schedule, *callbacks],
                                progress, normaliser=len(args[1]))
        return trainer.fit(resume=resume)

    def fit_baseline(self, config: GraphConfig, args: tuple, baseline: torch.nn.Module, run_dir: str | Path,
                     steps: int, resume: bool = False, progress: bool = False) -> dict[str, Any]:
        """Train the GCN+GRU baseline for ``steps`` steps into ``run_dir``, at its own fixed learning rate (that
        of its published numbers) with the model's clip and intervals. Returns the training summary."""
        return self._trainer(config, baseline, args, Path(run_dir), steps, 1e-2, [], progress,
                             label="baseline").fit(resume=resume)

    def train(self, config: GraphConfig, data: tuple[GraphSequence, GraphSequence], module: torch.nn.Module,
              run_dir: Path, resume: bool, progress: bool, callbacks: list[Any], device: torch.device) -> dict[str, Any]:
        history = data[0]
        train_part, held_out = training_history(config, history)
        if config.feature_emission == "auto":
            names = [history.feature_names[i] for i in dynamic_features(config, history)]
            log.info("feature emission auto (%s): %s", config.auto_emission,
                     ", ".join(f"{n} {k}" for n, k in zip(names, module.feature_emissions)) or "no modelled features")
        args = sequence_on(device, train_part)
        if held_out is not None:
            log.info("early stopping on the predictive log-likelihood of the last %d history snapshot(s), patience "
                     "%d intervals of %d steps", held_out.num_steps, config.patience, config.checkpoint_every)
            callbacks = [ForecastValidation(args, sequence_on(device, held_out), config.patience, seed=config.seed),
                         *callbacks]
        summary = self.fit(config, args, module, run_dir, resume=resume, progress=progress, callbacks=callbacks)
        summary["edge_likelihood"] = module.edge_likelihood
        if self.wants_baseline(config, history.num_nodes):
            base_dir = run_dir / "baseline"
            log.info("training the GCN+GRU baseline: %d steps into %s", config.baseline_steps, base_dir)
            pyro.set_rng_seed(config.seed)
            baseline = build_graph_baseline(config, history).to(device)
            summary["baseline"] = self.fit_baseline(config, args, baseline, base_dir, config.baseline_steps,
                                                    resume=resume and (base_dir / "checkpoint.pt").is_file(),
                                                    progress=progress)
        plot_graph_training(run_dir)
        return summary

    def make_run(self, path: Path, config: GraphConfig, data: tuple[GraphSequence, GraphSequence],
                 module: torch.nn.Module, device: torch.device) -> GraphRun:
        history, future = data
        baseline = None
        if (path / "baseline" / "checkpoint.pt").is_file():
            baseline = build_graph_baseline(config, history)
            load_weights(baseline, path / "baseline" / "checkpoint.pt")
            baseline = baseline.eval()
        return GraphRun(path, config, module, self, device, baseline, history=history, future=future)

    def forecast(self, run: GraphRun, **options: Any) -> dict[str, Any]:
        """See :func:`forecast_run`."""
        return forecast_run(run, **options)


# --------------------------------------------------------------------------------------------------
# forecasting


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
                 negatives: int = 100_000) -> dict[str, Any]:
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
        fc, metrics = _dense_forecast(run, horizon, total, seed, scored)
        extra = {}
    idata = to_inference_data(fc, chains, history, future if future.num_steps >= horizon else None,
                              static=run.module.static_mask.tolist())
    _write_netcdf(idata, out_path)
    notes = [] if total >= 10 else [f"coverage is NaN: intervals need at least 10 draws, this forecast has {total} "
                                    "(raise --samples)"]
    point = [name for name, rows in metrics.items()
             if rows and all(not math.isfinite(r.get("coverage_50", math.nan)) for r in rows) and name != "GraphSSM"]
    if total >= 10 and point:
        notes.append(f"coverage (cov50, cov90, PIT50, PIT90) is NaN for {', '.join(point)}: point forecasts have no "
                     "predictive interval")
    not_scored = {} if run.baseline is not None else {"GCN+GRU": _why_no_baseline(run)}
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
                    ) -> tuple[dict[str, torch.Tensor], dict[str, list[dict[str, Any]]]]:
    history, future = run.history, run.future
    pyro.set_rng_seed(seed)
    device = run.device
    with deterministic_algorithms():
        fc = run.module.forecast(history.x.to(device), [e.to(device) for e in history.edges], horizon=horizon,
                                 num_samples=total, future=(future.x.to(device), [e.to(device) for e in future.edges]))
    fc = {k: v.cpu() for k, v in fc.items()}
    metrics: dict[str, list[dict[str, Any]]] = {"GraphSSM": forecast_scores(fc, future, history, scored)}
    for h in range(scored):
        metrics["GraphSSM"][h]["log_lik"] = float(fc["log_lik"][h])
    for forecaster in _baselines(run):
        metrics[forecaster.name] = forecast_scores(forecaster.forecast(history, scored), future, history, scored)
    if "blocks" in history.truth:
        oracle = DSBMOracle(history).forecast(scored, total, seed=seed)
        metrics["oracle"] = forecast_scores(oracle, future, history, scored)
    return fc, metrics


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
