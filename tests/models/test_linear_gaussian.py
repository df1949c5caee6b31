"""The ground-truth model itself against numerical quadrature."""

import math

import torch

from dgm_pyro.models import LinearGaussianCVAE


def test_closed_form_evidence_matches_quadrature_over_z():
    truth = LinearGaussianCVAE(dtype=torch.float64)
    y = torch.randn(3, truth.y_dim, dtype=torch.float64)
    x = truth.sample(y)
    grid = torch.linspace(-9, 9, 601, dtype=torch.float64)
    dz = float(grid[1] - grid[0])
    z = torch.cartesian_prod(grid, grid)  # (G, 2)
    for i in range(3):
        post = truth.posterior(x[i : i + 1], y[i : i + 1])
        zi = z + post.loc  # centre the grid on the posterior
        log_prior = torch.distributions.Normal(truth.prior_loc(y[i]), truth.s).log_prob(zi).sum(-1)
        loc = zi @ truth.W.T + y[i] @ truth.V.T + truth.c
        log_lik = torch.distributions.Normal(loc, truth.sigma).log_prob(x[i]).sum(-1)
        quad = torch.logsumexp(log_prior + log_lik, 0) + 2 * math.log(dz)
        assert abs(float(quad) - float(truth.log_marginal(x[i : i + 1], y[i : i + 1]))) < 1e-6


def test_posterior_is_bayes_rule():
    """log p(z|x,y) = log p(x|y,z) + log p(z|y) - log p(x|y) at random points (seed P1.5)."""
    truth = LinearGaussianCVAE(dtype=torch.float64)
    y = torch.randn(5, truth.y_dim, dtype=torch.float64)
    x = truth.sample(y)
    z = torch.randn(5, truth.z_dim, dtype=torch.float64)
    lhs = truth.posterior(x, y).log_prob(z)
    log_prior = torch.distributions.Normal(truth.prior_loc(y), truth.s).log_prob(z).sum(-1)
    log_lik = torch.distributions.Normal(z @ truth.W.T + y @ truth.V.T + truth.c, truth.sigma).log_prob(x).sum(-1)
    assert torch.allclose(lhs, log_lik + log_prior - truth.log_marginal(x, y), atol=1e-10)
