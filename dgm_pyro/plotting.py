"""Figures: sample grids, training curves and collapse plots (matplotlib with the Agg backend), each
written atomically."""

from __future__ import annotations

from pathlib import Path

import torch

from .data import ConditionalDataset

__all__ = ["save_sample_grid", "assemble_images", "save_figure"]


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    from .checkpoint import _atomic_replace

    path = Path(path)
    _atomic_replace(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
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


def save_sample_grid(x: torch.Tensor, y: torch.Tensor, ds: ConditionalDataset, path: str | Path) -> Path:
    """Write a PNG grid: one row per condition (C, S, x_dim), one column per sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = assemble_images(x, y, ds)
    rows, cols = imgs.shape[0], imgs.shape[1]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8 + 0.6, rows * 0.8), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(imgs[r, c].numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        if ds.condition == "label":
            axes[r][0].set_ylabel(str(int(y[r].argmax())), rotation=0, labelpad=12)
    fig.tight_layout(pad=0.2)
    return save_figure(fig, path, dpi=80)
