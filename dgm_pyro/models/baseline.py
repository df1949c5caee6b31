"""Deterministic neural-network baseline for structured output prediction (Sohn et al. 2015, Sec. 4.2).

A network maps the condition y straight to the parameters of p(x|y); there is no latent variable, so
its log-likelihood is exact. As a Pyro program its guide is empty, so the same training loop and the
same evidence estimator apply (every importance weight equals p(x|y)).
"""

from __future__ import annotations

from typing import Optional, Sequence

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from .nn import MLP, likelihood_mean, likelihood_out_features, make_likelihood, register_module

__all__ = ["NNBaseline", "BaselineGuess"]


class NNBaseline(PyroModule):
    """p(x|y) = Likelihood(f(y)) with an MLP f; the "NN baseline" of conditional generation papers."""

    def __init__(self, x_dim: int, y_dim: int, hidden_dims: Sequence[int] = (256, 256),
                 likelihood: str = "bernoulli", levels: Optional[int] = None,
                 x_shift: torch.Tensor | float = 0.0, x_scale: torch.Tensor | float = 1.0, name: str = "nn_baseline"):
        super().__init__(name)
        self.x_dim, self.y_dim, self.likelihood, self.levels = x_dim, y_dim, likelihood, levels
        self.register_buffer("x_shift", torch.as_tensor(x_shift, dtype=torch.float32).expand(x_dim).clone())
        self.register_buffer("x_scale", torch.as_tensor(x_scale, dtype=torch.float32).expand(x_dim).clone())
        self.net = MLP(y_dim, hidden_dims, likelihood_out_features(likelihood, x_dim, levels))

    def decode(self, y: torch.Tensor):
        return make_likelihood(self.likelihood, self.net(y), self.x_dim, self.levels, self.x_shift, self.x_scale)

    def model(self, x: Optional[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        register_module(self._pyro_name, self)
        if self.likelihood == "categorical" and x is not None:
            x = x.long()
        with pyro.plate("data", y.shape[0]):
            return pyro.sample("x", self.decode(y), obs=x)

    def guide(self, x: Optional[torch.Tensor], y: torch.Tensor) -> None:
        """No latent variables: the empty guide."""

    @torch.no_grad()
    def sample(self, y: torch.Tensor, mean: bool = True) -> torch.Tensor:
        d = self.decode(y)
        return likelihood_mean(d, self.likelihood) if mean else d.sample().to(torch.float32)


class BaselineGuess(nn.Module):
    """Condition features c = [y, E[x | y]] with E[x | y] the guess of a trained :class:`NNBaseline`, for a CVAE's
    ``condition_net``: Sohn et al. 2015 (and Pyro's CVAE tutorial) feed the baseline's prediction to the prior
    network, so the CVAE models what the deterministic guess misses. The baseline is frozen: it is trained before
    the CVAE, and no gradient reaches it (its guess is computed without one).

    Shapes: y (N, y_dim) -> c (N, y_dim + x_dim).
    """

    def __init__(self, baseline: NNBaseline):
        super().__init__()
        self.baseline = baseline

    @property
    def dim(self) -> int:
        return self.baseline.y_dim + self.baseline.x_dim

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([y, self.baseline.sample(y, mean=True).to(y.dtype)], -1)
