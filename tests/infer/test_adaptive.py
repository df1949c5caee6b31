"""Adaptive importance sampling against exact evidence: the linear-Gaussian CVAE, a correlated posterior, and
a conjugate Gamma-Poisson model with a positive latent (the change of variables)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from dgm_pyro.errors import DgmPyroError
from dgm_pyro.infer import log_evidence
from dgm_pyro.infer.adaptive import _SiteFit
from dgm_pyro.models import LinearGaussianCVAE


def _mean_within(res, exact, sigmas=3.0):
    """The batch mean within `sigmas` standard errors of the exact mean (independent datapoints), and every
    datapoint within 5 of its own (the standard error is itself estimated from the weights)."""
    n = exact.numel()
    se = float(res.stderr.pow(2).sum().sqrt() / n)
    err = abs(float(res.log_evidence.mean() - exact.mean()))
    each = bool(((res.log_evidence - exact).abs() <= 5 * res.stderr + 1e-3).all())
    return err < sigmas * se + 1e-3 and each, err, se


def test_a_poor_diagonal_guide_becomes_reliable():
    """A correlated 2-D Gaussian posterior and a guide with the right centre but diagonal, too-broad scales:
    importance sampling with the guide alone is noisy, the adapted mixture learns the correlation (k-hat
    falls, ESS rises) and its estimate lies within 3 standard errors of the exact log-likelihood."""
    pyro.set_rng_seed(0)
    A = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64) * 3.0
    noise = 0.05
    n = 30

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ A.T, noise).to_event(1), obs=x)

    cov = A @ A.T + noise ** 2 * torch.eye(2, dtype=torch.float64)
    x = dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov).sample((n,))
    exact = dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov).log_prob(x)
    post_prec = torch.eye(2, dtype=torch.float64) + A.T @ A / noise ** 2
    post_mean = x @ (torch.linalg.inv(post_prec) @ A.T / noise ** 2).T

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(post_mean, 0.3 * torch.ones_like(post_mean)).to_event(1))

    is_ = log_evidence(model, guide, x, num_particles=500, warn=False)
    ada = log_evidence(model, guide, x, num_particles=500, method="adaptive", num_rounds=3, warn=False)
    assert ada.log_evidence.shape == (n,)
    ok, err, se = _mean_within(ada, exact)
    assert ok, (err, se)
    assert float(ada.stderr.mean()) < 0.5 * float(is_.stderr.mean())
    assert float(is_.ess.mean()) < 30 and float(ada.ess.mean()) > 120
    assert float((is_.khat > 0.7).double().mean()) > 0.5 and float((ada.khat > 0.7).double().mean()) == 0.0


def test_linear_gaussian_cvae_from_a_shifted_guide():
    pyro.set_rng_seed(1)
    truth = LinearGaussianCVAE(dtype=torch.float64)
    y = torch.randn(20, truth.y_dim, dtype=torch.float64)
    x = truth.sample(y)
    exact = truth.log_marginal(x, y)

    def guide(x, y):
        post = truth.posterior(x, y)
        with pyro.plate("data", y.shape[0]):
            pyro.sample("z", dist.Normal(post.loc + 0.3, 2.0 * post.variance.sqrt()).to_event(1))

    ada = log_evidence(truth.model, guide, x, y, num_particles=400, method="adaptive", warn=False)
    ok, err, se = _mean_within(ada, exact)
    assert ok, (err, se)
    assert float((ada.khat > 0.7).double().mean()) == 0.0


def test_positive_latent_gamma_poisson_is_exact_through_the_change_of_variables():
    """rate ~ Gamma(a, b), counts_j ~ Poisson(rate) (j = 1..m, a plate inside each datapoint); a LogNormal guide
    (support positive: the Gaussians are fitted to log rate). The exact evidence is a Gamma-Poisson closed form."""
    pyro.set_rng_seed(2)
    a, b, m, n = 3.0, 2.0, 5, 25
    rate = dist.Gamma(a, b).sample((n,))
    counts = dist.Poisson(rate[:, None].expand(n, m)).sample().double()

    def model(counts):
        with pyro.plate("data", counts.shape[0], dim=-2):
            r = pyro.sample("rate", dist.Gamma(torch.tensor(a, dtype=torch.float64), b))
            with pyro.plate("repeats", counts.shape[1], dim=-1):
                pyro.sample("counts", dist.Poisson(r), obs=counts)

    def guide(counts):
        with pyro.plate("data", counts.shape[0], dim=-2):
            pyro.sample("rate", dist.LogNormal(torch.zeros(counts.shape[0], 1, dtype=torch.float64), 1.0))

    s, mm = counts.sum(1), float(m)
    exact = (a * math.log(b) - torch.lgamma(torch.tensor(a, dtype=torch.float64)) + torch.lgamma(a + s)
             - (a + s) * torch.log(torch.tensor(b + mm, dtype=torch.float64)) - torch.lgamma(counts + 1).sum(1))
    ada = log_evidence(model, guide, counts, num_particles=400, method="adaptive", warn=False)
    assert ada.log_evidence.shape == (n,)
    ok, err, se = _mean_within(ada, exact)
    assert ok, (err, se)


def test_site_fit_density_is_a_normalised_density_on_the_support():
    """The fitted proposal for a positive site integrates to 1 over (0, inf) (quadrature), i.e. the
    log-Jacobian of the change of variables is right."""
    torch.manual_seed(0)
    fn = dist.LogNormal(torch.zeros(1, dtype=torch.float64), 1.0)
    z = fn.sample((200,))  # (200, 1): particles x one datapoint
    fit = _SiteFit(fn, z, torch.randn(200, 1, dtype=torch.float64))
    grid = torch.linspace(1e-6, 60.0, 400_001, dtype=torch.float64)[:, None]
    dens = fit.log_prob(grid).exp()[:, 0]
    assert abs(float(torch.trapezoid(dens, grid[:, 0])) - 1.0) < 1e-3


def test_refusals(discrete_pair):
    truth = LinearGaussianCVAE(dtype=torch.float64)
    y = torch.randn(4, truth.y_dim, dtype=torch.float64)
    x = truth.sample(y)
    with pytest.raises(DgmPyroError, match="num_rounds >= 1"):
        log_evidence(truth.model, truth.exact_guide, x, y, num_particles=10, method="adaptive", num_rounds=0)
    with pytest.raises(DgmPyroError, match=r"defensive share must lie in \(0, 1\]"):
        log_evidence(truth.model, truth.exact_guide, x, y, num_particles=10, method="adaptive", defensive=0.0)
    with pytest.raises(DgmPyroError, match="num_particles >= 2"):
        log_evidence(truth.model, truth.exact_guide, x, y, num_particles=1, method="adaptive")
    model, guide = discrete_pair
    with pytest.raises(DgmPyroError, match="continuous latents"):
        log_evidence(model, guide, torch.zeros(3), num_particles=10, method="adaptive")

    def empty_guide(x, y):
        pass

    with pytest.raises(DgmPyroError, match="'z' have none"):
        log_evidence(truth.model, empty_guide, x, y, num_particles=10, method="adaptive", warn=False)
    with pytest.raises(DgmPyroError, match="method must be one of 'is', 'adaptive', 'ais'"):
        log_evidence(truth.model, truth.exact_guide, x, y, num_particles=10, method="mcmc")


def test_exact_posterior_stays_exact():
    """From the exact posterior the fitted Gaussians approximate it too, and every weight p(x, z) / r(z) of
    the mixture is close to p(x): the estimate is exact within float and fit error."""
    pyro.set_rng_seed(3)
    truth = LinearGaussianCVAE(dtype=torch.float64)
    y = torch.randn(10, truth.y_dim, dtype=torch.float64)
    x = truth.sample(y)
    res = log_evidence(truth.model, truth.exact_guide, x, y, num_particles=300, method="adaptive", num_rounds=1)
    assert torch.allclose(res.log_evidence, truth.log_marginal(x, y), atol=0.02)


# ---------------------------------------------------------------- the fitted proposal, by hand


def _weighted_draws(k=6, b=2, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(k, b, d, generator=g, dtype=torch.float64)
    log_w = torch.randn(k, b, generator=g, dtype=torch.float64)
    return z, log_w


def _by_hand(z, log_w, spread, jitter=1e-6):
    """Weighted mean and the covariance shrunk by D / (ESS + D) towards diag(spread), per datapoint (numpy)."""
    import numpy as np

    zs, lw = z.numpy(), log_w.numpy()
    out = []
    for j in range(zs.shape[1]):
        w = np.exp(lw[:, j] - lw[:, j].max())
        w /= w.sum()
        ess, d = 1.0 / (w ** 2).sum(), zs.shape[2]
        mean = (w[:, None] * zs[:, j]).sum(0)
        c = zs[:, j] - mean
        cov = (w[:, None, None] * c[:, :, None] * c[:, None, :]).sum(0)
        lam = d / (ess + d)
        cov = (1 - lam) * cov + lam * np.diag(spread[j]) + jitter * np.eye(d)
        out.append((mean, cov, (1 - lam) * np.diag(cov - jitter * np.eye(d) - lam * np.diag(spread[j])) / (1 - lam)
                    + lam * spread[j]))
    return out


def test_site_fit_is_the_shrunk_weighted_gaussian_of_its_draws(monkeypatch):
    import numpy as np

    from dgm_pyro.infer import adaptive

    z, log_w = _weighted_draws()
    fn = dist.Normal(torch.zeros(2, 2, dtype=torch.float64), 1.0).to_event(1)
    fit = _SiteFit(fn, z, log_w)
    spread = (z.var(0) + 1e-6).numpy()
    for j, (mean, cov, _) in enumerate(_by_hand(z, log_w, spread)):
        np.testing.assert_allclose(fit.gauss.loc[j].numpy(), mean, atol=1e-12)
        np.testing.assert_allclose(fit.gauss.covariance_matrix[j].numpy(), cov, atol=1e-10)
    # a later round shrinks towards the previous round's variances, not the draws' spread
    later = _SiteFit(fn, z, log_w, previous=fit)
    for j, (mean, cov, _) in enumerate(_by_hand(z, log_w, (fit.variance + 1e-6).numpy())):
        np.testing.assert_allclose(later.gauss.covariance_matrix[j].numpy(), cov, atol=1e-10)
    # above FULL_COVARIANCE_MAX_DIM dimensions: the same variances, no correlations; at it: full covariance
    monkeypatch.setattr(adaptive, "FULL_COVARIANCE_MAX_DIM", 1)
    diag = _SiteFit(fn, z, log_w)
    assert isinstance(diag.gauss.base_dist, dist.Normal) and diag.log_prob(z).shape == (6, 2)
    for j, (mean, cov, _) in enumerate(_by_hand(z, log_w, spread)):
        np.testing.assert_allclose(diag.gauss.base_dist.loc[j].numpy(), mean, atol=1e-12)
        np.testing.assert_allclose(diag.gauss.base_dist.scale[j].numpy() ** 2, np.diag(cov) - 1e-6, atol=1e-10)
    monkeypatch.setattr(adaptive, "FULL_COVARIANCE_MAX_DIM", 2)
    assert isinstance(_SiteFit(fn, z, log_w).gauss, dist.MultivariateNormal)


def test_site_fit_of_a_positive_vector_site_in_float32():
    """A LogNormal vector site: the fit lives in log space, so log g(z) = N(log z; fit) - sum log z (the Jacobian
    of exp summed over the event), in the site's dtype; its draws are positive and in the site's shape."""
    z64, log_w = _weighted_draws(k=8, b=3, d=2, seed=1)
    z = z64.exp().float()
    fn = dist.LogNormal(torch.zeros(3, 2), 1.0).to_event(1)
    fit = _SiteFit(fn, z, log_w.float())
    got = fit.log_prob(z)
    want = fit.gauss.log_prob(z64) - z64.sum(-1)
    assert got.dtype == torch.float32 and got.shape == (8, 3)
    assert torch.allclose(got.double(), want, atol=1e-4)
    draws = fit.sample(5)
    assert draws.shape == (5, 3, 2) and draws.dtype == torch.float32 and bool((draws > 0).all())


def test_knobs_of_the_adaptive_rounds(monkeypatch, normal_pair):
    """Defaults (3 rounds, defensive 0.2), a defensive share of 1 (the guide alone: every weight is p/q), two
    particles, chunks, keyword data, and each round's fit shrinking towards the one before."""
    from dgm_pyro.infer import adaptive

    model, guide = normal_pair(2, noise=0.5, a=0.6, b=0.9)

    x = torch.tensor([0.7, -0.4])
    exact = dist.Normal(0.0, math.sqrt(1.25)).log_prob(x).double()
    fitted = []
    real = adaptive._SiteFit

    class Recording(real):
        def __init__(self, fn, z, log_w, previous=None, jitter=1e-6):
            fitted.append(previous)
            super().__init__(fn, z, log_w, previous, jitter)

    monkeypatch.setattr(adaptive, "_SiteFit", Recording)
    pyro.set_rng_seed(0)
    default = log_evidence(model, guide, x=x, num_particles=400, method="adaptive", warn=False)
    assert len(fitted) == 3 and fitted[0] is None and isinstance(fitted[1], real) and isinstance(fitted[2], real)
    assert torch.allclose(default.log_evidence, exact, atol=0.02)
    monkeypatch.setattr(adaptive, "_SiteFit", real)
    # defensive 1: the proposal is the guide alone, so log w = log p(x, z) - log q(z | x) exactly
    pyro.set_rng_seed(1)
    res = log_evidence(model, guide, x=x, num_particles=300, method="adaptive", defensive=1.0, warn=False,
                       keep_log_weights=True)
    assert torch.isfinite(res.log_weights).all() and torch.allclose(res.log_evidence, exact, atol=0.05)
    two = log_evidence(model, guide, x=x, num_particles=2, method="adaptive", warn=False)
    assert two.log_evidence.shape == (2,) and torch.isfinite(two.log_evidence).all()
    pyro.set_rng_seed(2)
    chunked = log_evidence(model, guide, x=x, num_particles=30, method="adaptive", chunk_size=7, warn=False,
                           keep_log_weights=True)
    assert chunked.log_weights.shape == (30, 2) and torch.allclose(chunked.log_evidence, exact, atol=0.1)
    # called directly, adaptive_log_weights defaults to 3 rounds and a defensive share of 0.2
    from dgm_pyro.infer.evidence import batch_plates

    shared, nesting, _ = batch_plates(model, guide, (), {"x": x})
    keep = {d for _, d in shared}
    pyro.set_rng_seed(5)
    plain = adaptive.adaptive_log_weights(model, guide, (), {"x": x}, 50, keep, nesting)
    pyro.set_rng_seed(5)
    explicit = adaptive.adaptive_log_weights(model, guide, (), {"x": x}, 50, keep, nesting, num_rounds=3,
                                             defensive=0.2)
    assert torch.equal(plain[0], explicit[0]) and torch.equal(plain[1], explicit[1])


def test_adaptive_refusals_word_for_word(discrete_pair):
    import re

    truth = LinearGaussianCVAE(dtype=torch.float64)
    y = torch.randn(4, truth.y_dim, dtype=torch.float64)
    x = truth.sample(y)

    def empty_guide(x, y):
        pass

    for kwargs, message in [
            ({"num_rounds": 0}, "adaptive importance sampling needs num_rounds >= 1, got 0"),
            ({"defensive": 1.5}, "the defensive share must lie in (0, 1], got 1.5"),
            ({"num_particles": 1}, "adaptive importance sampling needs num_particles >= 2 to fit a proposal, got 1")]:
        with pytest.raises(DgmPyroError, match="^" + re.escape(message) + "$"):
            log_evidence(truth.model, truth.exact_guide, x, y, **{"num_particles": 10, **kwargs}, method="adaptive")
    with pytest.raises(DgmPyroError, match="^" + re.escape(
            "adaptive importance sampling needs a guide site for every model latent; 'z' have none (use method='is')")
            + "$"):
        log_evidence(truth.model, empty_guide, x, y, num_particles=10, method="adaptive", warn=False)
    model, guide = discrete_pair
    with pytest.raises(DgmPyroError, match=r"^adaptive importance sampling needs continuous latents; '\w+' is discrete "
                                           r"\(use method='is'\)$"):
        log_evidence(model, guide, torch.zeros(3), num_particles=10, method="adaptive")


def test_site_fit_sums_an_elementwise_jacobian_over_the_sites_event():
    """A site whose support is declared elementwise (positive) while its event holds 2 numbers: the Jacobian of exp
    comes per element and is summed over the event, so log g(z) = N(log z; fit) - sum log z as for a vector site."""
    from types import SimpleNamespace

    from torch.distributions import constraints

    z64, log_w = _weighted_draws(k=8, b=3, d=2, seed=2)
    fit = _SiteFit(SimpleNamespace(support=constraints.positive, event_dim=1), z64.exp(), log_w)
    got = fit.log_prob(z64.exp())
    assert got.shape == (8, 3)
    assert torch.allclose(got, fit.gauss.log_prob(z64) - z64.sum(-1), atol=1e-10)


def test_adaptive_names_every_unguided_latent():
    import re

    def model(x=None):
        with pyro.plate("data", 2):
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
            w = pyro.sample("w", dist.Normal(u, 1.0))
            pyro.sample("x", dist.Normal(w, 1.0), obs=x)

    def guide(x=None):
        pass

    with pytest.raises(DgmPyroError, match="^" + re.escape("adaptive importance sampling needs a guide site for every "
                                                           "model latent; 'u', 'w' have none (use method='is')") + "$"):
        log_evidence(model, guide, x=torch.zeros(2), num_particles=4, method="adaptive", warn=False)


def test_a_full_covariance_fit_draws_from_its_own_gaussian():
    """The fit's draws (drawn as loc + L eps, without broadcasting L over the draws) have the fitted Gaussian's mean
    and covariance, per datapoint: here two datapoints with correlations of opposite signs (5 standard errors)."""
    from dgm_pyro.infer.adaptive import _SiteFit

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(400, 2, 2, generator=gen, dtype=torch.float64)
    z = torch.stack([base[:, 0] @ torch.tensor([[1.0, 0.8], [0.0, 0.6]], dtype=torch.float64),
                     base[:, 1] @ torch.tensor([[0.5, -0.9], [0.0, 0.3]], dtype=torch.float64) + 2.0], 1)
    fit = _SiteFit(dist.Normal(torch.zeros(2, 2), 1.0).to_event(1), z, torch.zeros(400, 2, dtype=torch.float64))
    torch.manual_seed(1)
    draws = fit.sample(20000)
    assert draws.shape == (20000, 2, 2)
    cov = fit.gauss.covariance_matrix
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    assert ((draws.mean(0) - fit.gauss.loc).abs() < 5 * sd / 20000 ** 0.5).all()
    centred = draws - draws.mean(0)
    emp = torch.einsum("kni,knj->nij", centred, centred) / 19999
    assert ((emp - cov).abs() < 5 * (sd[..., :, None] * sd[..., None, :]) * (2 / 20000) ** 0.5).all()
    assert float(cov[0, 0, 1]) > 0.3 and float(cov[1, 0, 1]) < -0.1  # the two correlations, of opposite signs
