"""An autoregressive decoder strong enough to model x without z (seed P3.4): a MADE-style masked network
(Germain et al. 2015) over the pixels in raster order, conditioned on a context (z and y) that reaches
every output.

    p(x | c) = prod_i p(x_i | x_<i, c)                         c = [z, y]

One pass of the masked network gives every conditional at once for an observed x (teacher forcing), so
``log_prob`` costs one forward pass; ``sample`` draws the pixels one after another (x_dim passes).

Weakening the decoder (seed P3.5, the image analogue of Bowman et al.'s word dropout): with
``input_dropout = r`` each pixel of the autoregressive input x_<i is replaced by 0 with probability r
during training, so the decoder cannot rely on its neighbours alone and has a reason to read z.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch import nn
from torch.distributions import constraints

from .nn import make_likelihood

__all__ = ["MaskedLinear", "MADE", "AutoregressiveLikelihood"]


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 mask of shape (out_features, in_features)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked network from [x (x_dim), context (context_dim)] to ``out_per_dim`` outputs per dimension of x,
    where the outputs of dimension i depend on x_<i and the whole context only.

    Degrees: input pixel k has degree k + 1, context units degree 0, hidden units degrees cycling over
    0 .. x_dim - 1; a connection exists where the receiving degree is >= the sending degree (hidden) or
    > it (outputs), which makes the network autoregressive.

    Args:
        x_dim: dimension of x.
        context_dim: dimension of the context (z and y).
        hidden_dims: hidden widths.
        out_per_dim: outputs per dimension of x (1 for Bernoulli logits, ``levels`` for categorical).
    Returns (forward): tensor of shape (..., x_dim * out_per_dim), pixel-major.
    """

    def __init__(self, x_dim: int, context_dim: int, hidden_dims: Sequence[int], out_per_dim: int):
        super().__init__()
        self.x_dim, self.context_dim, self.out_per_dim = x_dim, context_dim, out_per_dim
        deg_in = torch.cat([torch.arange(1, x_dim + 1), torch.zeros(context_dim, dtype=torch.long)])
        layers: list[nn.Module] = []
        prev = deg_in
        for h in hidden_dims:
            deg = torch.arange(h) % max(x_dim, 1)  # 0 .. x_dim - 1: a unit of degree k sees x_1..x_k
            layers += [MaskedLinear(deg[:, None] >= prev[None, :]), nn.ReLU()]
            prev = deg
        deg_out = torch.arange(1, x_dim + 1).repeat_interleave(out_per_dim)
        layers.append(MaskedLinear(deg_out[:, None] > prev[None, :]))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
        inp = torch.cat([x.expand(*batch, x.shape[-1]), context.expand(*batch, context.shape[-1])], dim=-1)
        return self.net(inp)


class AutoregressiveLikelihood(TorchDistribution):
    """p(x | c) = prod_i p(x_i | x_<i, c) as one distribution with event shape (x_dim,).

    ``log_prob(x)`` runs ``logits_fn(x)`` once (teacher forcing); ``sample()`` fills x pixel by pixel.

    Args:
        logits_fn: maps x of shape (..., x_dim) (raw values) to network outputs (..., x_dim * out_per_dim);
            it must be autoregressive (outputs of pixel i independent of x_>=i).
        likelihood: ``"categorical"`` or ``"bernoulli"``.
        x_dim, levels: dimension of x; grey levels for the categorical likelihood.
        batch_shape: the batch shape of the context.
        x_shift, x_scale: passed to :func:`~dgm_pyro.models.nn.make_likelihood`.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, logits_fn: Callable[[torch.Tensor], torch.Tensor], likelihood: str, x_dim: int,
                 levels: Optional[int], batch_shape: torch.Size, x_shift: torch.Tensor, x_scale: torch.Tensor,
                 validate_args: Optional[bool] = None):
        if likelihood not in ("categorical", "bernoulli"):
            raise ValueError(f"the autoregressive decoder supports categorical and bernoulli likelihoods, "
                             f"not '{likelihood}'")
        self.logits_fn, self.likelihood, self.x_dim, self.levels = logits_fn, likelihood, x_dim, levels
        self.x_shift, self.x_scale = x_shift, x_scale
        super().__init__(torch.Size(batch_shape), torch.Size([x_dim]), validate_args=validate_args)

    @property
    def support(self):
        if self.likelihood == "bernoulli":
            return constraints.independent(constraints.boolean, 1)
        return constraints.independent(constraints.integer_interval(0, self.levels - 1), 1)

    def conditionals(self, x: torch.Tensor) -> dist.Distribution:
        """The factorised distribution of p(x_i | x_<i, c) for every i at this x (event (x_dim,))."""
        return make_likelihood(self.likelihood, self.logits_fn(x), self.x_dim, self.levels, self.x_shift,
                               self.x_scale)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        lp = self.conditionals(x).log_prob(x)
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(AutoregressiveLikelihood, _instance)
        new.logits_fn, new.likelihood, new.x_dim, new.levels = self.logits_fn, self.likelihood, self.x_dim, self.levels
        new.x_shift, new.x_scale = self.x_shift, self.x_scale
        super(AutoregressiveLikelihood, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        return new

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size = torch.Size(), mean: bool = False) -> torch.Tensor:
        """Ancestral sampling in raster order. With ``mean=True`` each pixel is set to its conditional
        mean given the pixels drawn so far (a smooth picture for display; not a sample)."""
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        x = torch.zeros(shape, device=self.x_shift.device)
        for i in range(self.x_dim):
            step = self.conditionals(x).base_dist
            if mean:
                if self.likelihood == "categorical":
                    value = (step.probs[..., i, :] * torch.arange(self.levels, dtype=x.dtype, device=x.device)).sum(-1)
                else:
                    value = step.probs[..., i]
            else:
                value = step.sample()[..., i].to(x.dtype)
            x[..., i] = value
        return x
