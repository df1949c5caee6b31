"""Posterior-collapse diagnostics on constructed cases with known answers (seed P3.1, P3.3)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from dgm_pyro.diagnostics import (
    active_units,
    aggregate_kl,
    collapse_report,
    kl_per_dimension,
    mutual_information,
    mutual_information_minibatch,
)

D = torch.float64


def diag(loc, scale):
    return Independent(Normal(loc, scale), 1)


def test_encoder_that_returns_the_prior_has_no_information():
    n, d = 50, 3
    q = diag(torch.zeros(n, d, dtype=D), torch.ones(n, d, dtype=D))
    prior = diag(torch.zeros(d, dtype=D), torch.ones(d, dtype=D))
    # zero up to the rounding of log-sum-exp over identical terms
    assert mutual_information(q, num_samples=20) == pytest.approx(0.0, abs=1e-12)
    assert mutual_information_minibatch(q, batch_size=10) == pytest.approx(0.0, abs=1e-12)
    assert aggregate_kl(q, prior, num_samples=20) == pytest.approx(0.0, abs=1e-12)
    assert active_units(q)[0] == 0
    assert torch.all(kl_per_dimension(q, prior) == 0)


def test_narrow_far_apart_posteriors_carry_log_n():
    n, d = 64, 2
    q = diag(10.0 * torch.arange(n, dtype=D)[:, None].expand(n, d), torch.full((n, d), 0.01, dtype=D))
    assert mutual_information(q, num_samples=5) == pytest.approx(math.log(n), abs=1e-6)
    assert active_units(q)[0] == d
    # the minibatch estimator saturates at log B, never above
    for b in (1, 8, 64):
        assert mutual_information_minibatch(q, batch_size=b) == pytest.approx(math.log(b), abs=1e-6)
    # with labels, the information left given y is log(group size)
    groups = torch.arange(n) % 4
    assert mutual_information(q, num_samples=5, groups=groups) == pytest.approx(math.log(n // 4), abs=1e-6)


def _random_posteriors(n=300, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(n, d, generator=g, dtype=D) * torch.tensor([1.5, 0.5, 0.05], dtype=D)
    scale = 0.3 + 0.7 * torch.rand(n, d, generator=g, dtype=D)
    return diag(loc, scale)


def _quadrature_mi_and_aggregate_kl(loc, scale, prior_scale=1.0):
    """Exact I(x; z) and KL(q(z) || p(z)) for 1-D posteriors N(loc_n, scale_n^2) and p = N(0, prior_scale^2), by
    numerical quadrature of the aggregate posterior q(z) = (1/N) sum_n q(z|x_n) on a fine grid."""
    grid = torch.linspace(-15, 15, 30_001, dtype=D)
    dz = grid[1] - grid[0]
    log_qn = Normal(loc[:, None], scale[:, None]).log_prob(grid)  # (N, G)
    log_agg = torch.logsumexp(log_qn, 0) - math.log(len(loc))
    mi = float(((log_qn - log_agg) * log_qn.exp()).sum(1).mean() * dz)
    agg = float(((log_agg - Normal(0.0, prior_scale).log_prob(grid)) * log_agg.exp()).sum() * dz)
    return mi, agg


def test_mutual_information_and_aggregate_kl_against_quadrature():
    """The estimators against the exact aggregate posterior (a mixture of the N posteriors), each with its own
    draws; and the P3.3 identity E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z)) between the exact values."""
    n = 300
    g = torch.Generator().manual_seed(0)
    loc, scale = 1.5 * torch.randn(n, generator=g, dtype=D), 0.3 + 0.7 * torch.rand(n, generator=g, dtype=D)
    q, prior = diag(loc[:, None], scale[:, None]), diag(torch.zeros(1, dtype=D), torch.ones(1, dtype=D))
    mi_exact, agg_exact = _quadrature_mi_and_aggregate_kl(loc, scale)
    expected_kl = float(kl_divergence(q, prior).mean())
    assert mi_exact + agg_exact == pytest.approx(expected_kl, abs=1e-6)  # P3.3, exactly
    assert 0.3 < mi_exact < math.log(n) and agg_exact > 0.05  # neither term is trivial here
    s = 400
    z = q.sample((s,))
    se = float((q.log_prob(z) - prior.log_prob(z)).std() / math.sqrt(s * n))  # a generous scale for both errors
    assert mutual_information(q, num_samples=s, seed=1) == pytest.approx(mi_exact, abs=4 * se)
    assert aggregate_kl(q, prior, num_samples=s, seed=2) == pytest.approx(agg_exact, abs=4 * se)
    assert float(kl_per_dimension(q, prior).sum()) == pytest.approx(expected_kl, rel=1e-12)


def test_conditional_decomposition_with_groups_and_a_conditional_prior():
    """E[KL(q(z|x,y) || p(z|y))] = I(x; z | y) + E_y KL(q(z|y) || p(z|y)) with one prior per class."""
    n, d = 300, 3
    q = _random_posteriors(n, d, seed=2)
    groups = torch.arange(n) % 3
    prior_loc = torch.tensor([[-1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [1.0, -0.5, 0.0]], dtype=D)[groups]
    prior = diag(prior_loc, torch.full((n, d), 0.8, dtype=D))
    s = 200
    # independent draws for the two terms, so that log q(z) does not cancel between them
    mi = mutual_information(q, num_samples=s, groups=groups, seed=3)
    agg = aggregate_kl(q, prior, num_samples=s, groups=groups, seed=4)
    z = q.sample((s,))
    se = float((q.log_prob(z) - prior.log_prob(z)).std() / math.sqrt(s * n))
    assert abs(mi + agg - float(kl_divergence(q, prior).mean())) < 6 * se
    assert mi < math.log(n // 3)


def test_active_units_threshold_and_conditional_prior():
    n = 1000
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(n, 2, generator=g, dtype=D) * torch.tensor([0.05, 0.2], dtype=D)  # Var 0.0025, 0.04
    q = diag(loc, torch.ones(n, 2, dtype=D))
    count, activity = active_units(q)
    assert count == 1 and activity[0] < 0.01 < activity[1]
    # posterior means that only follow the conditional prior's means are not active
    prior = diag(loc - 0.001, torch.ones(n, 2, dtype=D))
    assert active_units(q, prior=prior)[0] == 0
    assert active_units(q, threshold=0.001)[0] == 2


def test_bad_shapes():
    with pytest.raises(ValueError, match="batch shape"):
        mutual_information(Normal(torch.zeros(5), 1.0))
    q = _random_posteriors(10)
    with pytest.raises(ValueError, match="groups"):
        mutual_information(q, groups=torch.zeros(3))
    mvn = dist.MultivariateNormal(torch.zeros(10, 3), torch.eye(3))
    with pytest.raises(ValueError, match="not factorised"):
        kl_per_dimension(mvn, mvn)


def test_collapse_report_on_a_user_model():
    n, d = 200, 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, 0.0]])  # only the first latent dimension matters

    def model(x):
        with pyro.plate("obs", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T, 0.5).to_event(1), obs=x)

    def guide(x):
        # the exact posterior of the first dimension (precision 1 + 1.25/0.25 = 6), the prior for the second
        loc = torch.stack([(x @ w[:, 0]) / 0.25 / 6.0, torch.zeros(x.shape[0])], -1)
        scale = torch.tensor([6.0**-0.5, 1.0]).expand(x.shape[0], d)
        with pyro.plate("obs", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    report = collapse_report(model, guide, x, particles=200, num_samples=20)
    assert report.active_units == 1 and report.latent_dim == 2
    assert report.kl_per_dimension[1] == pytest.approx(0.0, abs=1e-7) and report.kl_per_dimension[0] > 0.5
    assert report.mutual_information <= math.log(n) and report.mutual_information_minibatch <= math.log(100)
    # the exact-posterior guide makes every importance weight equal to p(x): NLL = -mean log p(x)
    cov = w @ w.T + 0.25 * torch.eye(3)
    exact = -float(dist.MultivariateNormal(torch.zeros(3), cov).log_prob(x).mean())
    assert report.nll == pytest.approx(exact, abs=1e-3)
    assert report.to_dict()["active_units"] == 1 and "active units" in str(report)


def test_errors_name_the_latent_sites_and_how_to_fix_the_layout():
    """A wrong site name lists the latent sites and their shapes; a latent laid out with a nested plate gets the
    .to_event hint (the collapse measures need one plate over the datapoints and a vector event)."""
    x = torch.randn(5, 3)

    def model(x):
        with pyro.plate("obs", 5, dim=-2), pyro.plate("dims", 2, dim=-1):
            z = pyro.sample("zz", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(2), obs=x)

    def guide(x):
        with pyro.plate("obs", 5, dim=-2), pyro.plate("dims", 2, dim=-1):
            pyro.sample("zz", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"no latent site 'z'.*'zz' \(batch \(5, 2\), event \(\)\) \(guide\)"):
        collapse_report(model, guide, x, particles=0)
    with pytest.raises(ValueError, match=r"batch shape \(5, 2\).*to_event\(1\) inside the data plate only"):
        collapse_report(model, guide, x, site="zz", particles=0)
