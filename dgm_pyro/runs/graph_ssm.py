"""The graph state-space model in run folders (``dgm-pyro train graph-ssm``, ``dgm-pyro forecast``): its
configuration, the data split and training (with the GCN+GRU baseline trained into ``baseline/``); its forecasts
are made and scored by :mod:`dgm_pyro.runs.graph_forecast` (P4).

A graph run folder holds ``config.json``, ``environment.json``, ``metrics.csv`` (one row per checkpoint
interval), ``checkpoint.pt``, ``baseline/`` (the GCN+GRU predictor's own run), ``plots/`` and, after
``forecast``, ``forecast.json`` and the NetCDF forecast.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence, Union

import pyro
import torch

from ..callbacks import ForecastValidation, ScheduledSampling
from ..config import ConfigBase, option
from ..data.graph_files import load_graph_dataset
from ..data.graphs import GraphSequence
from ..errors import DgmPyroError
from ..infer.scheduled_sampling import parse_teacher_forcing
from ..metrics import FORECAST_MAX_NODES
from ..models.gnn import GNN_LAYERS
from ..models.graph_baselines import GCNGRUForecaster
from ..models.graph_ssm import FEATURE_EMISSIONS, FINAL_STATES, GraphSSM
from ..plotting import plot_graph_training
from ..registry import register_model
from ..training import FullBatch, Trainer
from .base import ModelKind, load_weights, run_data, unfinished_training
from .graph_forecast import GraphRun, forecast_run

__all__ = ["GraphConfig", "GraphSSMKind", "load_graph_sequence", "training_history", "build_graph_model",
           "resolved_feature_emission"]

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
    edge_recency: bool = option(False, "With --edge-memory, edge logits also use log(1 + a second count of the "
                                "pair's past edges decayed by a faster learned rate): recency beyond the last "
                                "snapshot, for forecasts several steps ahead.", added=True)
    node_activity: bool = option(True, "Edge logits also use each endpoint's decayed and undecayed past degree "
                                 "(node-level propensities: how active a node was lately and over the history; off "
                                 "in runs made before this option).", added=True, before=False)
    final_state: str = option("transition", "How forecasts draw the last latent Z_T: transition (from p(Z_T | "
                              "Z_{T-1}), its exact posterior: no snapshot is emitted from Z_T) or guide (from the "
                              "guide's q(Z_T | Z_{T-1}, history); runs made before this option).",
                              choices=FINAL_STATES, added=True, before="guide")
    edge_proximity: bool = option(False, "Edge logits also use the pair's Katz proximity in the graph of all past "
                                  "edges (triadic closure: pairs with common neighbours or a few hops apart link "
                                  "more; dense likelihood only).", added=True)
    memory_activity: bool = option(False, "With --edge-memory and --node-activity, pairs with a past edge weigh "
                                   "their endpoints' past degrees by their own learned weights (a node's recent "
                                   "activity says less about a pair it has met before than about a new one).",
                                   added=True)
    guide_lookahead: bool = option(False, "The guide's q(Z_t | ...) also sees snapshot t + 1, the one Z_t emits (by "
                                   "default it is a filter: snapshots 1..t).", added=True)
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
        if self.edge_proximity and self.edge_likelihood == "sparse":
            raise DgmPyroError("--edge-proximity needs the dense edge likelihood (an N x N Katz index per snapshot); "
                               "leave out --edge-likelihood sparse")
        extensions = [f"--edge-{name}" for name in ("frequency", "recency") if getattr(self, f"edge_{name}")]
        if extensions and not self.edge_memory:  # they extend the pair memory; without it they were silently ignored
            verb = "extends" if len(extensions) == 1 else "extend"
            raise DgmPyroError(f"{' and '.join(extensions)} {verb} the pair memory of --edge-memory: leave out "
                               "--no-edge-memory")
        if self.memory_activity and not (self.edge_memory and self.node_activity):
            raise DgmPyroError("--memory-activity weighs the node-activity terms again for pairs with a past edge: it "
                               "needs --edge-memory and --node-activity")
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
    likelihood = config.resolved_edge_likelihood(history.num_nodes)
    if config.edge_proximity and likelihood == "sparse":
        raise DgmPyroError(f"--edge-proximity needs the dense edge likelihood, which --edge-likelihood auto uses up "
                           f"to {config.DENSE_MAX_NODES} nodes; this graph has {history.num_nodes}: pass "
                           "--edge-likelihood dense")
    shift, scale = _feature_standardisation(history, 1e-3)
    model = GraphSSM(history.num_nodes, history.num_features, latent_dim=config.latent_dim, hidden=config.hidden,
                    directed=history.directed, gnn=config.gnn,
                    edge_likelihood=likelihood,
                    negatives_per_edge=config.negatives_per_edge,
                    deterministic_features=config.deterministic_decoder, feature_shift=shift, feature_scale=scale,
                    edge_memory=config.edge_memory, static=static_features(config, history),
                    edge_frequency=config.edge_frequency, edge_recency=config.edge_recency,
                    feature_emission=resolved_feature_emission(config, history),
                    node_activity=config.node_activity, final_state=config.final_state,
                    edge_proximity=config.edge_proximity, guide_lookahead=config.guide_lookahead,
                    memory_activity=config.memory_activity)
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
        """See :func:`dgm_pyro.runs.graph_forecast.forecast_run`."""
        return forecast_run(run, **options)
