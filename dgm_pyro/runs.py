"""Run folders: train a configured model into ``runs/<model>-<timestamp>/``, load it back, evaluate it,
and generate from it. The CLI is a thin layer over these functions.

A run folder holds ``config.json`` (the resolved :class:`TrainConfig`), ``environment.json`` (versions,
seed), ``metrics.csv`` (one row per epoch), ``checkpoint.pt`` (latest, for resume), ``best.pt`` (best
validation ELBO), ``plots/`` and, after ``evaluate``, ``evaluation.json``. For quadrant completion the
NN baseline is trained with the same configuration into ``baseline/``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pyro
import torch

from . import distributed as D
from .checkpoint import load_checkpoint, read_json, write_json
from .config import TrainConfig
from .data import ConditionalDataset, load_dataset
from .diagnostics import CollapseReport, collapse_report
from .plotting import save_figure
from .errors import DgmPyroError
from .infer.evidence import log_evidence
from .models import CVAE, NNBaseline
from .training import build_annealing, environment, fit, read_metrics

__all__ = ["Run", "require_run_dir", "build_model", "build_baseline", "new_run_dir", "train_run", "load_run", "evaluate_run",
           "generate", "plot_training_curves"]


def _x_standardisation(ds: ConditionalDataset) -> tuple[Any, Any]:
    if ds.likelihood == "categorical":
        return 0.0, float(ds.levels - 1)
    if ds.likelihood == "gaussian":
        x = ds.splits["train"][0]
        return x.mean(0), x.std(0).clamp_min(1e-6)
    return 0.0, 1.0


def build_model(config: TrainConfig, ds: ConditionalDataset) -> CVAE:
    """The module a configuration describes, sized for the dataset."""
    shift, scale = _x_standardisation(ds)
    if config.decoder == "autoregressive" and ds.likelihood not in ("categorical", "bernoulli"):
        raise DgmPyroError(f"the autoregressive decoder needs categorical or binary data; dataset '{ds.name}' is "
                           f"{ds.likelihood}")
    return CVAE(ds.x_dim, ds.y_dim, latent_dim=config.latent_dim, hidden_dims=config.hidden_dims,
                likelihood=ds.likelihood, levels=ds.levels, prior=config.prior, x_shift=shift, x_scale=scale,
                decoder=config.decoder, decoder_dropout=config.decoder_dropout)


def build_baseline(config: TrainConfig, ds: ConditionalDataset) -> NNBaseline:
    shift, scale = _x_standardisation(ds)
    return NNBaseline(ds.x_dim, ds.y_dim, hidden_dims=config.hidden_dims, likelihood=ds.likelihood, levels=ds.levels,
                      x_shift=shift, x_scale=scale)


def new_run_dir(root: str | Path, model: str) -> Path:
    """``root/<model>-<YYYYmmdd-HHMMSS>``, with a numeric suffix if that exists already."""
    root = Path(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{model}-{stamp}"
    i = 1
    while path.exists():
        path = root / f"{model}-{stamp}-{i}"
        i += 1
    return path


@dataclass
class Run:
    """A loaded run folder: its configuration, dataset and trained module (best checkpoint)."""

    path: Path
    config: TrainConfig
    dataset: ConditionalDataset
    module: CVAE
    baseline: Optional[NNBaseline] = None


def _wants_baseline(config: TrainConfig, ds: ConditionalDataset) -> bool:
    return config.baseline and ds.condition == "quadrant"


def train_run(config: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = False,
              on_start: Optional[Callable[[Path], None]] = None,
              on_epoch: Optional[Callable[[dict[str, float]], None]] = None) -> dict[str, Any]:
    """Train the configured model (and, for quadrant completion, the NN baseline) into ``run_dir``.

    With ``resume=True`` the configuration is read from ``run_dir/config.json`` and training continues
    from the last checkpoint. ``on_start(run_dir)`` is called once the inputs are checked and the
    folder exists. Returns a summary dict.
    """
    run_dir = Path(run_dir)
    restart = False  # resume asked for a run killed before its first checkpoint: start it again in place
    if resume:
        require_run_dir(run_dir)
        config = TrainConfig.from_dict(read_json(run_dir / "config.json"), source=str(run_dir / "config.json"))
        restart = restart_in_place(run_dir)
    config.validate()
    ds = load_dataset(config.dataset, likelihood=config.likelihood)
    if config.batch_size > ds.sizes()["train"]:
        raise DgmPyroError(f"batch size {config.batch_size} exceeds the {ds.sizes()['train']} training rows")
    build_annealing(config, ds.sizes()["train"])  # checks the schedule against the run's step count
    pyro.set_rng_seed(config.seed)  # the initial weights depend on the seed only
    module = build_model(config, ds)  # also checks the model options against the data before a folder is made
    if not resume:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise DgmPyroError(f"{run_dir}: exists and is not empty; choose another --out or use --resume")
        D.barrier()  # every rank has checked before rank 0 makes the folder
        if D.rank() == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / "config.json", config.to_dict())
            write_json(run_dir / "environment.json", {**environment(), "seed": config.seed,
                                                      "torch_threads": torch.get_num_threads(),
                                                      "processes": D.world_size()})
        D.barrier()
    if on_start is not None and D.rank() == 0:
        on_start(run_dir)
    groups = ds.splits["valid"][1].argmax(1) if ds.condition == "label" else None
    summary = fit(module, ds.splits["train"], ds.splits["valid"], config, run_dir, resume=resume and not restart,
                  progress=progress,
                  on_epoch=on_epoch, collapse_groups=groups)
    if D.rank() == 0:
        plot_training_curves(run_dir)
    if _wants_baseline(config, ds):
        base_dir = run_dir / "baseline"
        base_resume = resume and (base_dir / "checkpoint.pt").is_file()
        pyro.set_rng_seed(config.seed)
        baseline = build_baseline(config, ds)
        # the baseline has no latent variable: the objective and annealing options do not apply to it
        base_config = dataclasses.replace(config, objective="elbo", lam=1.0, free_bits=0.0, anneal="none",
                                          aggressive=False, track_collapse=False)
        summary["baseline"] = fit(baseline, ds.splits["train"], ds.splits["valid"], base_config, base_dir,
                                  resume=base_resume, progress=progress)
    return summary


def restart_in_place(run_dir: Path) -> bool:
    """Whether a run to resume was killed before its first checkpoint (then it starts again in place).

    A kill between writing an interval's metrics row and its checkpoint leaves at most one row ahead, so
    more rows without a checkpoint mean the checkpoint was lost: refused."""
    if (run_dir / "checkpoint.pt").is_file():
        return False
    if len(read_metrics(run_dir / "metrics.csv")) > 1:
        raise DgmPyroError(f"{run_dir}: has rows in metrics.csv but no checkpoint.pt to resume from; "
                           "restore the checkpoint or start a new run")
    return True


def require_run_dir(path: Path) -> None:
    """One-line errors for a missing folder or one without ``config.json``."""
    if not path.is_dir():
        raise DgmPyroError(f"{path}: no such run folder")
    if not (path / "config.json").is_file():
        raise DgmPyroError(f"{path}: not a dgm-pyro run folder (no config.json)")


def load_run(path: str | Path, checkpoint: str = "best.pt") -> Run:
    """Load a run folder's configuration, dataset and module from its ``best.pt`` (weights only)."""
    path = Path(path)
    require_run_dir(path)
    raw = read_json(path / "config.json")
    if isinstance(raw, dict) and raw.get("model") == "graph-ssm":
        raise DgmPyroError(f"{path}: a graph-ssm run; use 'dgm-pyro forecast {path} --horizon H'")
    config = TrainConfig.from_dict(raw, source=str(path / "config.json")).validate()
    ds = load_dataset(config.dataset, likelihood=config.likelihood)
    pyro.clear_param_store()
    module = build_model(config, ds)
    _load_weights(module, path / checkpoint)
    baseline = None
    if _wants_baseline(config, ds) and (path / "baseline" / checkpoint).is_file():
        baseline = build_baseline(config, ds)
        _load_weights(baseline, path / "baseline" / checkpoint)
    return Run(path=path, config=config, dataset=ds, module=module.eval(), baseline=baseline)


def _load_weights(module: torch.nn.Module, ckpt_path: Path) -> None:
    ckpt = load_checkpoint(ckpt_path)
    try:
        module.load_state_dict(ckpt["model_state"])
    except RuntimeError:
        raise DgmPyroError(f"{ckpt_path}: weights do not fit the model described by config.json") from None


def evaluate_run(run: Run, particles: int = 1000, split: str = "test", seed: int = 0,
                 write: bool = True, progress: bool = False) -> dict[str, Any]:
    """Test ELBO and importance-sampled log-likelihood (K particles) with PSIS diagnostics.

    Adds the exact log-likelihood of the data-generating process where known (linear-Gaussian), and
    for quadrant completion the NN baseline's exact negative conditional log-likelihood. All values
    are nats per datapoint (sums over the dimensions of x). Writes ``evaluation.json`` when ``write``.
    """
    if particles < 1:
        raise DgmPyroError(f"--particles must be >= 1, got {particles}")
    pyro.set_rng_seed(seed)
    x, y = run.dataset.splits[split]
    res = log_evidence(run.module.model, run.module.guide, x, y, num_particles=particles, warn=False,
                       progress=progress)
    out: dict[str, Any] = {"run": str(run.path), "split": split, "dataset": run.config.dataset, "seed": seed,
                           **res.summary()}
    out["nll"] = -out["log_evidence"]
    if run.dataset.true_log_likelihood is not None:
        out["true_log_likelihood"] = float(run.dataset.true_log_likelihood(x, y).mean())
    if run.baseline is not None:
        base = log_evidence(run.baseline.model, run.baseline.guide, x, y, num_particles=1, diagnostics=False, warn=False)
        out["baseline_ncll"] = -float(base.log_evidence.mean())
        out["cvae_ncll"] = out["nll"]
        out["cvae_neg_elbo"] = -out["elbo"]
    if write:
        write_json(run.path / "evaluation.json", out)
    return out


def diagnose_run(run: Run, particles: int = 1000, split: str = "test", seed: int = 0, num_samples: int = 10,
                 minibatch_size: int = 100, write: bool = True) -> CollapseReport:
    """The posterior-collapse report (:func:`dgm_pyro.diagnostics.collapse_report`) of a trained run on a split.

    For label-conditioned data the measures are conditional on the label (the aggregate posterior is
    formed per class, so MI is I(x; z | y)); otherwise they are over the whole split. When ``write``,
    writes ``diagnostics.json``, ``plots/kl_per_dimension.png`` and, for a run that tracked collapse,
    ``plots/collapse_over_training.png``, and lists them in ``report.extra["files"]``.
    """
    if particles < 0:
        raise DgmPyroError(f"--particles must be >= 0, got {particles}")
    if num_samples < 1:
        raise DgmPyroError(f"--samples must be >= 1, got {num_samples}")
    x, y = run.dataset.splits[split]
    groups = y.argmax(1) if run.dataset.condition == "label" else None
    report = collapse_report(run.module.model, run.module.guide, x, y, groups=groups, num_samples=num_samples,
                             minibatch_size=minibatch_size, particles=particles, seed=seed)
    report.extra = {"run": str(run.path), "split": split, "seed": seed, "particles": particles,
                    "conditioned_on": "label" if groups is not None else "none"}
    if write:
        plots = [_plot_kl_per_dimension(report, run.path / "plots" / "kl_per_dimension.png"),
                 _plot_collapse_over_training(run.path, report.latent_dim)]
        report.extra["files"] = [str(run.path / "diagnostics.json")] + [str(p) for p in plots if p is not None]
        write_json(run.path / "diagnostics.json", report.to_dict())
    return report


def _plot_collapse_over_training(run_dir: Path, latent_dim: int) -> Optional[Path]:
    """``plots/collapse_over_training.png`` from the validation KL, MI and AU per epoch, when the run
    recorded them (``--track-collapse`` or ``--aggressive``)."""
    rows = [r for r in read_metrics(run_dir / "metrics.csv") if "valid_mi" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ep, [r["valid_kl"] for r in rows], label="KL (nats)")
    ax.plot(ep, [r["valid_mi"] for r in rows], label="MI (nats)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats (validation)")
    twin = ax.twinx()
    twin.step(ep, [r["valid_au"] for r in rows], where="mid", color="C2", label="active units")
    twin.set_ylabel("active units")
    twin.set_ylim(-0.2, latent_dim + 0.2)  # the whole range 0..d, so "0 active units" reads as 0
    twin.yaxis.get_major_locator().set_params(integer=True)
    ax.xaxis.get_major_locator().set_params(integer=True)
    aggressive = [e for e, r in zip(ep, rows) if r.get("aggressive")]
    if aggressive:
        ax.axvspan(min(aggressive) - 0.5, max(aggressive) + 0.5, color="C3", alpha=0.1, label="aggressive")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, run_dir / "plots" / "collapse_over_training.png")


def _plot_kl_per_dimension(report: CollapseReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * report.latent_dim + 2), 3.2))
    dims = range(report.latent_dim)
    ax.bar(dims, report.kl_per_dimension, color=["C0" if a > 0.01 else "C7" for a in report.activity])
    ax.set_xticks(list(dims))
    ax.set_xlabel("latent dimension (grey: inactive, Cov_x E[z_u] <= 0.01)")
    ax.set_ylabel("E_x KL(q(z_u|x) || p(z_u)) [nats]")
    ax.set_title(f"KL {report.kl:.2f} nats, MI {report.mutual_information:.2f}, AU {report.active_units}")
    fig.tight_layout()
    return save_figure(fig, path)


def generate(run: Run, label: Optional[int] = None, condition: Optional[torch.Tensor] = None, num: int = 8,
             mean: bool = True, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``num`` samples per condition (seed P1.8).

    For label-conditioned data, ``label=None`` gives ``num`` samples of every class. For quadrant
    completion, ``condition`` holds given quadrants (N, y_dim) in [0, 1]; ``None`` uses the first test
    images. Returns ``(x, y)`` with ``x`` of shape (C, num, x_dim) for C conditions.
    """
    if num < 1:
        raise DgmPyroError(f"--num must be >= 1, got {num}")
    ds = run.dataset
    pyro.set_rng_seed(seed)
    if condition is None:
        if ds.condition == "label":
            labels = range(ds.num_classes) if label is None else [label]
            if label is not None and not 0 <= label < ds.num_classes:
                raise DgmPyroError(f"--label must be between 0 and {ds.num_classes - 1}, got {label}")
            condition = torch.nn.functional.one_hot(torch.tensor(list(labels)), ds.num_classes).float()
        elif ds.condition == "none":
            condition = torch.zeros(1, 0)
        else:
            if label is not None:
                raise DgmPyroError(f"dataset '{ds.name}' is not label-conditioned; use --condition FILE")
            condition = ds.splits["test"][1][:8]
    elif label is not None:
        raise DgmPyroError("give either --label or --condition, not both")
    if condition.dim() != 2 or condition.shape[1] != ds.y_dim:
        raise DgmPyroError(f"condition must have shape (N, {ds.y_dim}); got {tuple(condition.shape)}")
    if not torch.isfinite(condition).all():
        raise DgmPyroError("condition contains NaN or infinite values")
    y = condition.repeat_interleave(num, 0)
    x = run.module.sample(y, mean=mean)
    return x.reshape(condition.shape[0], num, -1), condition


def plot_training_curves(run_dir: str | Path) -> Optional[Path]:
    """Write ``plots/training.png``: training loss and validation ELBO / log-likelihood per epoch."""
    rows = read_metrics(Path(run_dir) / "metrics.csv")
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ep, [-r["train_loss"] for r in rows], label="train objective (minibatch, at the epoch's beta)")
    ax.plot(ep, [r["valid_elbo"] for r in rows], label="valid ELBO")
    ax.plot(ep, [r["valid_log_likelihood"] for r in rows], label="valid log-likelihood (IWAE)")
    finite = [v for r in rows for v in (r["valid_elbo"], -r["train_loss"]) if math.isfinite(v)]
    if finite:
        lo = sorted(finite)[len(finite) // 10]
        ax.set_ylim(bottom=lo)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(run_dir) / "plots" / "training.png")
