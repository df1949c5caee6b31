"""Building blocks shared by the models: MLPs and the observation likelihoods p(x | ...)."""

from __future__ import annotations

from typing import Sequence

import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["MLP", "likelihood_out_features", "make_likelihood", "likelihood_mean", "cat_broadcast"]


class MLP(nn.Sequential):
    """Fully connected network ``in_features -> hidden_dims... -> out_features`` with ReLU between layers."""

    def __init__(self, in_features: int, hidden_dims: Sequence[int], out_features: int):
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden_dims:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)


def cat_broadcast(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate on the last dimension after broadcasting the leading (batch, particle) dimensions."""
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*batch, t.shape[-1]) for t in tensors], dim=-1)


def likelihood_out_features(likelihood: str, x_dim: int, levels: int | None) -> int:
    """Number of network outputs that parameterise the likelihood of an ``x_dim``-vector."""
    if likelihood == "bernoulli":
        return x_dim
    if likelihood == "gaussian":
        return 2 * x_dim
    if likelihood == "categorical":
        if not levels or levels < 2:
            raise ValueError("the categorical likelihood needs levels >= 2")
        return x_dim * levels
    raise ValueError(f"unknown likelihood '{likelihood}'")


def make_likelihood(likelihood: str, out: torch.Tensor, x_dim: int, levels: int | None,
                    x_shift: torch.Tensor, x_scale: torch.Tensor, min_scale: float = 1e-3) -> dist.Distribution:
    """The distribution of x given network outputs ``out`` of shape ``(..., likelihood_out_features)``.

    Bernoulli (logits), Gaussian with a learned per-pixel variance (loc and scale predicted in
    standardised units, then mapped back by ``x_shift`` and ``x_scale``), or categorical over
    ``levels`` grey levels (seed P1.8: the decoder outputs the parameters of the distribution for x).
    Returns a distribution with batch shape ``out.shape[:-1]`` and event shape ``(x_dim,)``.
    """
    if likelihood == "bernoulli":
        return dist.Bernoulli(logits=out).to_event(1)
    if likelihood == "gaussian":
        loc, raw_scale = out.chunk(2, dim=-1)
        scale = (nn.functional.softplus(raw_scale) + min_scale) * x_scale
        return dist.Normal(loc * x_scale + x_shift, scale).to_event(1)
    logits = out.reshape(*out.shape[:-1], x_dim, levels)
    return dist.Categorical(logits=logits).to_event(1)


def likelihood_mean(d: dist.Distribution, likelihood: str) -> torch.Tensor:
    """E[x] under a likelihood made by :func:`make_likelihood`; for categorical, the mean grey level."""
    base = d.base_dist
    if likelihood == "categorical":
        levels = torch.arange(base.probs.shape[-1], dtype=base.probs.dtype, device=base.probs.device)
        return (base.probs * levels).sum(-1)
    return base.mean
