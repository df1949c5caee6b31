"""Annealed importance sampling against the exact evidence of the linear-Gaussian CVAE."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from dgm_pyro.errors import DgmPyroError
from dgm_pyro.infer import log_evidence
from dgm_pyro.infer.ais import sigmoid_schedule
from dgm_pyro.models import LinearGaussianCVAE


@pytest.fixture
def lg():
    truth = LinearGaussianCVAE(dtype=torch.float64)
    y = torch.randn(20, truth.y_dim, dtype=torch.float64)
    return truth, truth.sample(y), y


def _bad_guide(truth):
    """Posterior mean shifted by 1 and scales of 0.1: importance sampling with it is far off."""
    def guide(x, y):
        post = truth.posterior(x, y)
        with pyro.plate("data", y.shape[0]):
            pyro.sample("z", dist.Normal(post.loc + 1.0, 0.1 * torch.ones_like(post.loc)).to_event(1))

    return guide


def test_ais_recovers_the_exact_evidence_where_importance_sampling_fails(lg):
    truth, x, y = lg
    exact = truth.log_marginal(x, y)
    guide = _bad_guide(truth)
    is_ = log_evidence(truth.model, guide, x, y, num_particles=64, warn=False)
    ais = log_evidence(truth.model, guide, x, y, num_particles=64, method="ais", num_steps=300, warn=False)
    assert ais.log_evidence.shape == (20,) and ais.num_particles == 64
    n = exact.numel()
    mean_se = float(ais.stderr.pow(2).sum().sqrt() / n)
    assert abs(float(ais.log_evidence.mean() - exact.mean())) < 3 * mean_se + 0.02, (ais.log_evidence.mean(), exact.mean())
    assert float((exact - is_.log_evidence).mean()) > 5.0  # importance sampling is far below
    assert bool((ais.log_evidence > is_.log_evidence).all())  # AIS is the tighter estimate on every datapoint


def test_ais_with_the_exact_posterior_is_exact_for_any_schedule(lg):
    """From the exact posterior every intermediate density is proportional to it: all weights equal p(x)."""
    truth, x, y = lg
    res = log_evidence(truth.model, truth.exact_guide, x, y, num_particles=8, method="ais", num_steps=5)
    assert torch.allclose(res.log_evidence, truth.log_marginal(x, y), atol=1e-6)


def test_schedule_and_refusals(discrete_pair):
    b = sigmoid_schedule(10)
    assert float(b[0]) == 0.0 and float(b[-1]) == 1.0 and bool((b[1:] > b[:-1]).all())

    model, guide = discrete_pair

    with pytest.raises(DgmPyroError, match="continuous latents"):
        log_evidence(model, guide, torch.zeros(3), num_particles=4, method="ais", num_steps=3)
    with pytest.raises(DgmPyroError, match="method must be"):
        log_evidence(model, guide, torch.zeros(3), num_particles=4, method="hmc")
    assert math.isfinite(float(sigmoid_schedule(1)[1]))
