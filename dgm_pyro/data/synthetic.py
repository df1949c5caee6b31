"""Synthetic datasets whose generating process, and so the true evidence, is known.

The linear-Gaussian conditional VAE whose evidence and posterior are known in closed form.

Generative model (seed P1.2), for a condition y in R^{d_y}:

    z | y    ~ N(P y + b, diag(s^2))                   (conditional prior p(z|y))
    x | y, z ~ N(W z + V y + c, sigma^2 I)             (decoder p(x|y,z))

so that p(x|y) = N(W (P y + b) + V y + c, W diag(s^2) W^T + sigma^2 I) exactly, and the posterior
p(z|x,y) (seed P1.5, the guide that makes the ELBO tight) is Gaussian with precision
diag(s^-2) + W^T W / sigma^2. It is the ground truth for testing evidence estimators.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from .dataset import ConditionalDataset

__all__ = ["load_linear_gaussian", "LINEAR_GAUSSIAN_SPLIT", "LinearGaussianCVAE"]

LINEAR_GAUSSIAN_SPLIT = (1000, 500, 500)


class LinearGaussianCVAE:
    """Linear-Gaussian CVAE with fixed parameters drawn from ``seed``.

    Args:
        x_dim, y_dim, z_dim: dimensions of observation, condition and latent.
        noise_scale: the decoder's sigma.
        seed: seed for the parameters.
        dtype: tensor dtype (``torch.float64`` for exactness tests).
    """

    def __init__(self, x_dim: int = 8, y_dim: int = 3, z_dim: int = 2, noise_scale: float = 0.5,
                 seed: int = 0, dtype: torch.dtype = torch.float32):
        g = torch.Generator().manual_seed(seed)
        randn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
        self.P = randn(z_dim, y_dim).to(dtype)
        self.b = (0.5 * randn(z_dim)).to(dtype)
        self.s = (0.5 + torch.rand(z_dim, generator=g, dtype=torch.float64)).to(dtype)
        self.W = randn(x_dim, z_dim).to(dtype)
        self.V = (0.5 * randn(x_dim, y_dim)).to(dtype)
        self.c = (0.5 * randn(x_dim)).to(dtype)
        self.sigma = torch.tensor(noise_scale, dtype=dtype)
        self.x_dim, self.y_dim, self.z_dim = x_dim, y_dim, z_dim

    def prior_loc(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.P.T + self.b

    def model(self, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        """Pyro model with latent site ``z`` (N, z_dim) and observed site ``x`` (N, x_dim) in plate ``data``."""
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior_loc(y), self.s).to_event(1))
            loc = z @ self.W.T + y @ self.V.T + self.c
            return pyro.sample("x", dist.Normal(loc, self.sigma).to_event(1), obs=x)

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> dist.MultivariateNormal:
        """Exact p(z|x,y), batched over the N rows of x and y."""
        precision = torch.diag(self.s**-2) + self.W.T @ self.W / self.sigma**2
        cov = torch.linalg.inv(precision)
        cov = 0.5 * (cov + cov.T)
        rhs = self.prior_loc(y) / self.s**2 + (x - y @ self.V.T - self.c) @ self.W / self.sigma**2
        return dist.MultivariateNormal(rhs @ cov, covariance_matrix=cov)

    def exact_guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Guide equal to the true posterior: the ELBO is tight and every importance weight is p(x|y)."""
        with pyro.plate("data", y.shape[0]):
            pyro.sample("z", self.posterior(x, y))

    def marginal(self, y: torch.Tensor) -> dist.MultivariateNormal:
        """Exact p(x|y) (seed P1.2), batched over the N rows of y."""
        loc = self.prior_loc(y) @ self.W.T + y @ self.V.T + self.c
        cov = self.W @ torch.diag(self.s**2) @ self.W.T + self.sigma**2 * torch.eye(self.x_dim, dtype=self.W.dtype)
        return dist.MultivariateNormal(loc, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Exact log p(x|y), shape (N,)."""
        return self.marginal(y).log_prob(x)

    def sample(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw x ~ p(x|y) for each row of y."""
        m = self.marginal(y)
        eps = torch.randn(y.shape[0], self.x_dim, generator=generator, dtype=self.W.dtype)
        return m.loc + eps @ m.scale_tril[0].mT


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
