"""Figures: sample grids, training curves, collapse plots and graph forecasts (matplotlib with the Agg
backend), each written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .data import ConditionalDataset
from .training import read_metrics

__all__ = ["save_sample_grid", "assemble_images", "save_figure", "plot_training_curves", "plot_collapse_over_training",
           "plot_kl_per_dimension", "plot_graph_training", "plot_forecast", "node_order"]


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    from .checkpoint import atomic_replace

    path = Path(path)
    atomic_replace(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    plt.close(fig)
    return path


def assemble_images(x: torch.Tensor, y: torch.Tensor, ds: ConditionalDataset) -> torch.Tensor:
    """Full images (..., H, W) in [0, 1]: for quadrant completion the given part y and generated part x together."""
    scale = float(ds.levels - 1) if ds.levels else 1.0
    if ds.condition == "quadrant":
        full = torch.zeros(*x.shape[:-1], ds.x_dim + ds.y_dim)
        full[..., ds.x_index] = x / scale
        full[..., ds.y_index] = y.unsqueeze(-2).expand(*x.shape[:-1], ds.y_dim)
    else:
        full = x / scale
    return full.reshape(*x.shape[:-1], *ds.image_shape).clamp(0, 1)


def save_sample_grid(x: torch.Tensor, y: torch.Tensor, ds: ConditionalDataset, path: str | Path,
                     truth: Optional[torch.Tensor] = None, titles: Optional[list[str]] = None) -> Path:
    """Write a PNG grid: one row per condition (C, S, x_dim), one column per sample; ``titles`` (one per
    row, as given: ``dgm-pyro sample`` passes a text model's prompts in quotes) are written above their rows. One
    condition with more than ten samples (an unconditional model's) is laid out as a square-ish grid, row after row.

    For quadrant completion the given part of every image is shaded red and, with ``truth`` (C, x_dim),
    the true completion comes first in each row, so the generated part can be compared with it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = assemble_images(x, y, ds)
    quadrant = ds.condition == "quadrant"
    if truth is not None:
        imgs = torch.cat([assemble_images(truth.unsqueeze(1).float(), y, ds), imgs], 1)
    wrapped = imgs.shape[0] == 1 and imgs.shape[1] > 10 and not quadrant and not titles
    if wrapped:
        per_row = math.ceil(math.sqrt(imgs.shape[1]))
        pad = -imgs.shape[1] % per_row  # blank cells after the last sample
        imgs = torch.cat([imgs[0], imgs.new_zeros(pad, *imgs.shape[2:])]).reshape(-1, per_row, *imgs.shape[2:])
    rows, cols = imgs.shape[0], imgs.shape[1]
    given = None
    if quadrant:
        given = torch.zeros(ds.x_dim + ds.y_dim)
        given[ds.y_index] = 1.0
        given = given.reshape(ds.image_shape).numpy()
    fig, axes = plt.subplots(rows, cols, figsize=(max(cols * 0.8, 3.0 if titles else 0) + 0.6,
                                                  rows * (1.0 if titles else 0.8) + (0.3 if quadrant else 0)),
                             squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(imgs[r, c].numpy(), cmap="gray_r", vmin=0, vmax=1)
            if given is not None:  # the given part shaded red, with its border
                ax.imshow(np.ma.masked_where(given == 0, given), cmap="Reds", alpha=0.3, vmin=0, vmax=1.5)
                ax.contour(given, levels=[0.5], colors="red", linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        if ds.condition == "label" and not (wrapped and r):  # a wrapped grid's one label on its first row
            axes[r][0].set_ylabel(str(int(y[0 if wrapped else r].argmax())), rotation=0, labelpad=12)
        if titles:  # above the row, outside the layout (it may be wider than one image)
            axes[r][0].text(0, 1.06, titles[r], transform=axes[r][0].transAxes, ha="left", va="bottom",
                            fontsize=8)
    if quadrant:
        axes[0][0].set_title("truth" if truth is not None else "sample 1", fontsize=8)
        if truth is not None and cols > 1:
            axes[0][1].set_title("samples", fontsize=8)
        fig.supxlabel("shaded red: given; the rest: generated", fontsize=7)
    if titles:  # the titles stand outside the axes: space the rows for them instead of a tight layout
        fig.subplots_adjust(left=0.3 / fig.get_figwidth(), right=1 - 0.3 / fig.get_figwidth(), bottom=0.05,
                            top=1 - 0.3 / fig.get_figheight(), hspace=0.4, wspace=0.1)
    else:
        fig.tight_layout(pad=0.2)
    return save_figure(fig, path, dpi=80)


def plot_training_curves(run_dir: str | Path) -> Optional[Path]:
    """Write ``plots/training.png``: training objective and validation ELBO / log-likelihood for every epoch
    (no epoch cut off; a symmetric-log axis when early epochs are far below the rest) and, for an annealed
    run, the KL weight beta on a second axis."""
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
    finite = sorted(v for r in rows for v in (r["valid_elbo"], -r["train_loss"]) if math.isfinite(v))
    if finite and finite[-1] - finite[0] > 10 * max(finite[-1] - finite[len(finite) // 10], 1.0):
        ax.set_yscale("symlog", linthresh=max(abs(finite[-1]), 1.0))  # every epoch visible, the end resolved
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    handles, labels = ax.get_legend_handles_labels()
    betas = [r.get("beta_mean", 1.0) for r in rows]
    if any(b != 1.0 for b in betas):
        twin = ax.twinx()
        twin.plot(ep, betas, color="C3", ls="--", label="KL weight beta (epoch mean)")
        twin.set_ylabel("beta", color="C3")
        twin.set_ylim(-0.05, max(1.05, max(betas) + 0.05))
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(run_dir) / "plots" / "training.png")


def plot_collapse_over_training(run_dir: Path, latent_dim: int) -> Optional[Path]:
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


def plot_kl_per_dimension(report: Any, path: Path) -> Optional[Path]:
    """The KL per latent dimension as bars (grey: inactive units); ``None`` when the report has no per-dimension
    KL (a prior that is not factorised)."""
    if not report.kl_per_dimension:
        return None
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


def plot_graph_training(run_dir: Path) -> Optional[Path]:
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


def plot_forecast(history: Any, future: Any, fc: dict[str, torch.Tensor], metrics: dict[str, list[dict[str, Any]]],
                  scored: int, out_dir: Path, prefix: str = "forecast") -> list[Path]:
    """``out_dir/<prefix>_features.png`` (fan charts of the first forecast (non-static) feature, by its name,
    for the first nodes), ``<prefix>_edges.png`` (forecast edge probabilities beside the observed edges,
    each with its colour bar, nodes ordered by community (:func:`node_order`)) and ``<prefix>_metrics.png``
    (AUC and CRPS per horizon step of every forecaster); no edge map for a sparse forecast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    dynamic = [i for i, st in enumerate(history.static) if not st]
    if dynamic:
        k, name = dynamic[0], history.feature_names[dynamic[0]]
        nodes = list(range(min(4, history.num_nodes)))
        fig, axes = plt.subplots(1, len(nodes), figsize=(3.2 * len(nodes), 2.8), squeeze=False)
        t_hist = np.arange(1, history.num_steps + 1)
        t_fc = np.arange(history.num_steps + 1, history.num_steps + 1 + fc["X"].shape[1])
        for ax, v in zip(axes[0], nodes):
            draws = fc["X"][:, :, v, k].numpy()
            for lo, hi, alpha in ((5, 95, 0.2), (25, 75, 0.35)):
                ax.fill_between(t_fc, np.percentile(draws, lo, 0), np.percentile(draws, hi, 0), color="C0",
                                alpha=alpha, lw=0)
            ax.plot(t_fc, np.median(draws, 0), color="C0", label="median, 50% and 90% bands")
            ax.plot(t_hist, history.x[:, v, k].numpy(), color="k", lw=1, label="history")
            ax.plot(t_fc[:scored], future.x[:scored, v, k].numpy(), "o", color="C3", ms=3, label="truth")
            ax.set_title(f"node {history.node_ids[v]}: {name}", fontsize=9)
            ax.set_xlabel("snapshot")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        paths.append(save_figure(fig, out_dir / f"{prefix}_features.png"))
    # edge probability maps, nodes in community order so that blocks show as squares in both panels
    if "edge_prob" in fc:  # dense forecasts only: a sparse one has no N x N map
        order = node_order(history)
        steps = sorted({0, scored - 1})
        fig, axes = plt.subplots(len(steps), 2, figsize=(7.6, 3.2 * len(steps)), squeeze=False)
        prob = fc["edge_prob"].mean(0)
        for row, h in zip(axes, steps):
            im = row[0].imshow(prob[h][order][:, order].numpy(), cmap="viridis", vmin=0, vmax=float(prob.max()))
            fig.colorbar(im, ax=row[0], fraction=0.046, pad=0.04, label="P(edge)")
            row[0].set_title(f"forecast edge probability, h={h + 1}", fontsize=9)
            im = row[1].imshow(future.adjacency(h)[order][:, order].numpy(), cmap="Greys", vmin=0, vmax=1)
            fig.colorbar(im, ax=row[1], fraction=0.046, pad=0.04, ticks=[0, 1], label="edge observed")
            row[1].set_title(f"observed edges, h={h + 1}", fontsize=9)
            for ax in row:
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_xlabel("nodes in community order", fontsize=7)
        fig.tight_layout()
        paths.append(save_figure(fig, out_dir / f"{prefix}_edges.png"))
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
    paths.append(save_figure(fig, out_dir / f"{prefix}_metrics.png"))
    return paths


def node_order(history: Any) -> np.ndarray:
    """Nodes ordered by community so that blocks show as squares: by the true community at the last history
    step where the data has one (the dynamic SBM), else by the two leading non-trivial eigenvectors of the
    normalised summed adjacency (spectral clustering's embedding)."""
    a = sum(history.adjacency(t) for t in range(history.num_steps)).double()
    a = a + a.T if history.directed else a
    deg = a.sum(1).clamp_min(1e-9)
    norm = a / deg.sqrt()[:, None] / deg.sqrt()[None, :]
    _, vecs = torch.linalg.eigh(norm)
    keys = [vecs[:, -3].numpy(), vecs[:, -2].numpy()]
    if "communities" in history.truth:
        keys.append(np.asarray(history.truth["communities"][-1]))
    return np.lexsort(keys)
