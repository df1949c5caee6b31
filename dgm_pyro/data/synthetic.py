"""Synthetic datasets whose generating process, and so the true evidence, is known."""

from __future__ import annotations

import torch

from ..models.linear_gaussian import LinearGaussianCVAE
from .dataset import ConditionalDataset

__all__ = ["load_linear_gaussian", "LINEAR_GAUSSIAN_SPLIT"]

LINEAR_GAUSSIAN_SPLIT = (1000, 500, 500)


def load_linear_gaussian(seed: int = 0) -> ConditionalDataset:
    """Draw (x, y) from :class:`~dgm_pyro.models.LinearGaussianCVAE` (x 8-D, y 3-D, z 2-D).

    ``y ~ N(0, I)``; the dataset carries ``true_log_likelihood``, the exact log p(x|y) of the generator,
    so a trained model's importance-sampled evidence can be compared with the best achievable.
    """
    truth = LinearGaussianCVAE(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    n = sum(LINEAR_GAUSSIAN_SPLIT)
    y = torch.randn(n, truth.y_dim, generator=g)
    x = truth.sample(y, generator=g)
    a, b, _ = LINEAR_GAUSSIAN_SPLIT
    bounds = {"train": (0, a), "valid": (a, a + b), "test": (a + b, n)}
    return ConditionalDataset(
        name="linear-gaussian",
        splits={k: (x[i:j], y[i:j]) for k, (i, j) in bounds.items()},
        likelihood="gaussian",
        condition="vector",
        true_log_likelihood=truth.log_marginal,
        description="synthetic linear-Gaussian CVAE (x 8-D, y 3-D, z 2-D) with exact log p(x|y)",
        extra={"truth": truth},
    )
