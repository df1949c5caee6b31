"""log_evidence against analytic evidence (seed P1.3-P1.7)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from dgm_pyro.errors import DgmPyroError
from dgm_pyro.infer import log_evidence
from dgm_pyro.models import LinearGaussianCVAE


@pytest.fixture
def lg():
    truth = LinearGaussianCVAE(dtype=torch.float64)
    y = torch.randn(40, truth.y_dim, dtype=torch.float64)
    x = truth.sample(y)
    return truth, x, y


def shifted_guide(truth, shift, scale):
    """A deliberately wrong diagonal guide: posterior mean shifted, scales fixed."""

    def guide(x, y):
        post = truth.posterior(x, y)
        with pyro.plate("data", y.shape[0]):
            pyro.sample("z", dist.Normal(post.loc + shift, scale * torch.ones_like(post.loc)).to_event(1))

    return guide


@pytest.mark.parametrize("K", [1, 7, 100, 1000])
def test_exact_posterior_gives_exact_evidence_for_any_K(lg, K):
    truth, x, y = lg
    res = log_evidence(truth.model, truth.exact_guide, x, y, num_particles=K)
    exact = truth.log_marginal(x, y)
    assert res.log_evidence.shape == (40,)
    assert torch.allclose(res.log_evidence, exact, atol=1e-4, rtol=0)
    assert torch.allclose(res.elbo, exact, atol=1e-4, rtol=0)  # the bound is tight (P1.5)
    if K >= 100:
        assert bool((res.khat < 0.5).all())
        assert torch.allclose(res.ess, torch.full_like(res.ess, K))


def test_exact_in_float32_too():
    truth = LinearGaussianCVAE()
    y = torch.randn(20, 3)
    x = truth.sample(y)
    res = log_evidence(truth.model, truth.exact_guide, x, y, num_particles=50)
    assert torch.allclose(res.log_evidence.float(), truth.log_marginal(x, y), atol=1e-4, rtol=0)


def test_wrong_guide_ordering_and_gap_shrinks(lg):
    truth, x, y = lg
    exact = truth.log_marginal(x, y)
    guide = shifted_guide(truth, 0.3, 0.4)
    gaps = {}
    for K in (10, 100, 3000):
        res = log_evidence(truth.model, guide, x, y, num_particles=K, warn=False)
        # ELBO < IWAE estimate <= exact (within three standard errors), per datapoint on average
        assert float(res.elbo.mean()) < float(res.log_evidence.mean())
        assert float((res.log_evidence - exact).mean()) <= 3 * float(res.stderr.pow(2).mean().sqrt())
        gaps[K] = float((exact - res.log_evidence).mean())
    assert gaps[10] > gaps[100] > gaps[3000] - 0.02
    assert gaps[3000] < 0.05


def test_khat_flags_heavy_mismatch(lg):
    truth, x, y = lg
    too_narrow = shifted_guide(truth, 1.0, 0.05)
    with pytest.warns(RuntimeWarning, match="k-hat"):
        res = log_evidence(truth.model, too_narrow, x, y, num_particles=1000)
    assert float(res.khat.median()) > 0.7
    assert float(res.ess.median()) < 20


def test_scale_from_annealing_and_subsampling_does_not_leak(lg):
    truth, x, y = lg
    exact = truth.log_marginal(x, y)
    scaled_model = poutine.scale(truth.model, scale=0.1)
    scaled_guide = poutine.scale(truth.exact_guide, scale=0.1)
    res = log_evidence(scaled_model, scaled_guide, x, y, num_particles=5)
    assert torch.allclose(res.log_evidence, exact, atol=1e-4)

    idx = torch.arange(0, 40, 4)

    def sub_model(x, y):
        with pyro.plate("data", 40, subsample=idx):
            z = pyro.sample("z", dist.Normal(truth.prior_loc(y[idx]), truth.s).to_event(1))
            loc = z @ truth.W.T + y[idx] @ truth.V.T + truth.c
            pyro.sample("x", dist.Normal(loc, truth.sigma).to_event(1), obs=x[idx])

    def sub_guide(x, y):
        with pyro.plate("data", 40, subsample=idx):
            pyro.sample("z", truth.posterior(x[idx], y[idx]))

    res = log_evidence(sub_model, sub_guide, x, y, num_particles=5)
    assert torch.allclose(res.log_evidence, exact[idx], atol=1e-4)


def test_chunking_and_sequential_agree(lg):
    truth, x, y = lg
    guide = shifted_guide(truth, 0.2, 0.5)
    a = log_evidence(truth.model, guide, x[:5], y[:5], num_particles=5000, chunk_size=333, warn=False)
    b = log_evidence(truth.model, guide, x[:5], y[:5], num_particles=5000, warn=False)
    c = log_evidence(truth.model, guide, x[:5], y[:5], num_particles=300, vectorize=False, warn=False)
    tol = 4 * (a.stderr + b.stderr)
    assert bool(((a.log_evidence - b.log_evidence).abs() < tol).all())
    assert bool(((c.log_evidence - b.log_evidence).abs() < 4 * (c.stderr + b.stderr) + 0.05).all())
    assert c.log_evidence.shape == (5,)


def test_model_the_project_did_not_write():
    """A conjugate multivariate model with a plate named 'obs' and explicit dims."""
    torch.manual_seed(1)
    d_z, d_x, n = 3, 4, 25
    A = torch.randn(d_x, d_z, dtype=torch.float64)
    L0 = torch.tril(torch.randn(d_z, d_z, dtype=torch.float64), -1) + torch.diag(torch.rand(d_z, dtype=torch.float64) + 0.5)
    R = 0.3 * torch.eye(d_x, dtype=torch.float64)
    S0 = L0 @ L0.T
    x = dist.MultivariateNormal(torch.zeros(d_x, dtype=torch.float64), A @ S0 @ A.T + R).sample((n,))
    exact = dist.MultivariateNormal(torch.zeros(d_x, dtype=torch.float64), A @ S0 @ A.T + R).log_prob(x)

    def model(data):
        with pyro.plate("obs", data.shape[0], dim=-1):
            z = pyro.sample("latent", dist.MultivariateNormal(torch.zeros(d_z, dtype=torch.float64), scale_tril=L0))
            pyro.sample("data", dist.MultivariateNormal(z @ A.T, R), obs=data)

    post_cov = torch.linalg.inv(torch.linalg.inv(S0) + A.T @ torch.linalg.inv(R) @ A)
    post_mean = x @ torch.linalg.inv(R) @ A @ post_cov

    def exact_guide(data):
        with pyro.plate("obs", data.shape[0], dim=-1):
            pyro.sample("latent", dist.MultivariateNormal(post_mean, covariance_matrix=post_cov))

    def prior_guide(data):
        with pyro.plate("obs", data.shape[0], dim=-1):
            pyro.sample("latent", dist.MultivariateNormal(torch.zeros(d_z, dtype=torch.float64), scale_tril=L0))

    res = log_evidence(model, exact_guide, x, num_particles=3)
    assert res.plates == ("obs",)
    assert torch.allclose(res.log_evidence, exact, atol=1e-4)
    res = log_evidence(model, prior_guide, x, num_particles=20000, warn=False)
    assert float((res.log_evidence - exact).abs().mean()) < 0.05
    assert float(res.elbo.mean()) < float(exact.mean())


def test_global_latent_without_shared_plate_gives_one_joint_estimate():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        n = x.shape[0]
        pyro.sample("mu", dist.Normal(x.sum() / (n + 1), (1.0 / (n + 1)) ** 0.5))

    x = torch.randn(6, dtype=torch.float64)
    res = log_evidence(model, guide, x, num_particles=4)
    exact = dist.MultivariateNormal(torch.zeros(6, dtype=torch.float64), torch.eye(6, dtype=torch.float64) + 1).log_prob(x)
    assert res.log_evidence.shape == ()
    assert abs(float(res.log_evidence) - float(exact)) < 1e-4


def test_bad_arguments():
    truth = LinearGaussianCVAE()
    y = torch.randn(3, 3)
    with pytest.raises(DgmPyroError, match="num_particles"):
        log_evidence(truth.model, truth.exact_guide, truth.sample(y), y, num_particles=0)

    def empty(*a):
        pass

    with pytest.raises(DgmPyroError, match="no sample sites"):
        log_evidence(empty, empty, num_particles=3)


def test_summary_is_plain_floats(lg):
    truth, x, y = lg
    s = log_evidence(truth.model, truth.exact_guide, x, y, num_particles=200).summary()
    assert s["num_datapoints"] == 40 and s["num_particles"] == 200
    assert math.isclose(s["log_evidence"], float(truth.log_marginal(x, y).mean()), abs_tol=1e-4)
    assert s["khat_max"] is None  # constant weights: no tail (k-hat = -inf)
    assert s["khat_frac_above_0.7"] == 0.0
