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


def test_ais_recovers_the_exact_evidence_where_importance_sampling_fails():
    """100 datapoints, a guide shifted by 1 with scales 0.1 (importance sampling is 5+ nats low): AIS's mean error is at or
    below 0 within 2 standard errors (about 0.06 nats; log of an unbiased estimate is low on average, so a mean
    above the exact value is a bias) and less than 0.2 nats below it, and it beats importance sampling on every
    datapoint. Weight increments taken after the HMC move instead of before it give +0.18 to +0.22 here."""
    truth = LinearGaussianCVAE(dtype=torch.float64)
    pyro.set_rng_seed(0)
    y = torch.randn(100, truth.y_dim, dtype=torch.float64)
    x = truth.sample(y)
    exact = truth.log_marginal(x, y)
    guide = _bad_guide(truth)
    is_ = log_evidence(truth.model, guide, x, y, num_particles=64, warn=False)
    ais = log_evidence(truth.model, guide, x, y, num_particles=64, method="ais", num_steps=300, warn=False)
    assert ais.log_evidence.shape == (100,) and ais.num_particles == 64
    error = ais.log_evidence - exact
    mean, se = float(error.mean()), float(error.std() / 10)
    assert -0.2 < mean <= 2 * se, (mean, se)
    assert se < 0.05
    assert float((exact - is_.log_evidence).mean()) > 5.0  # importance sampling is far below
    assert bool((ais.log_evidence > is_.log_evidence).all())  # AIS is the tighter estimate on every datapoint


def test_hmc_transition_leaves_the_annealed_density_invariant(lg):
    """For the linear-Gaussian model and a Gaussian guide q that is not the posterior, the intermediate density
    f_b = q^(1 - b) p(x, z)^b is Gaussian with precision (1 - b) L_q + b L_post. Chains started from f_b are
    still distributed as f_b after 8 transitions: every datapoint's and coordinate's mean and variance over
    500 chains match f_b's (z-scores). With step size 1.5 the Metropolis test rejects (acceptance 0.4-0.9);
    without it, or with an uncorrected random walk, the variances are far off."""
    from dgm_pyro.infer.ais import JointDensities, hmc_transition

    truth, x, y = lg
    post = truth.posterior(x, y)
    q_loc = post.loc + 0.5
    q_sd = 0.7 * post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()

    def guide(x, y):
        with pyro.plate("data", y.shape[0]):
            pyro.sample("z", dist.Normal(q_loc, q_sd).to_event(1))

    b, chains = 0.7, 500
    prec = (1 - b) * torch.diag_embed(q_sd ** -2) + b * post.precision_matrix
    cov = torch.linalg.inv(prec)
    loc = (cov @ ((1 - b) * q_loc / q_sd ** 2 + b * (post.precision_matrix @ post.loc.unsqueeze(-1)).squeeze(-1))
           .unsqueeze(-1)).squeeze(-1)
    f_b = dist.MultivariateNormal(loc, covariance_matrix=0.5 * (cov + cov.mT))
    pyro.set_rng_seed(0)
    z = {"z": f_b.sample((chains,))}  # (chains, N, 2)
    target = JointDensities(truth.model, guide, (x, y), {}, chains, {-1}, 1)
    sd = {"z": q_sd.expand_as(z["z"])}
    eps = torch.full((1, y.shape[0]), 1.5, dtype=torch.float64)
    rates = []
    for _ in range(8):
        z, log_accept = hmc_transition(target, z, sd, eps, b, 3, {"z": 1})
        rates.append(float(log_accept.exp().mean()))
    assert 0.4 < min(rates) and max(rates) < 0.9, rates
    var = f_b.covariance_matrix.diagonal(dim1=-2, dim2=-1)
    mean_z = (z["z"].mean(0) - loc) / (var / chains).sqrt()
    var_z = (z["z"].var(0) / var - 1) / (2 / (chains - 1)) ** 0.5
    for stat in (mean_z, var_z):
        assert float(stat.abs().max()) < 4.5, stat
        assert abs(float(stat.pow(2).mean()) - 1) < 5 * (2 / stat.numel()) ** 0.5, stat


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


def test_step_size_adapts_per_datapoint_from_the_acceptance_rate(monkeypatch, normal_pair):
    """The transitions are replaced by a script: every chain of datapoint 0 accepts, every chain of datapoint 1
    rejects. The step size starts at 0.5 for both, is multiplied by 1.1 after a step whose mean acceptance (over
    the chains of that datapoint) is above 0.65 and divided by 1.1 otherwise, within [1e-4, 10]; each transition
    gets the densities at the chains' current state."""
    from dgm_pyro.infer import ais

    model, guide = normal_pair(2, noise=1.0, a=0.5, b=0.9)

    seen = []

    def scripted(target, z, sd, eps, beta, steps, event_dims, densities):
        seen.append((eps.clone(), densities, steps))
        log_accept = torch.zeros_like(densities[0])
        log_accept[..., 1] = -math.inf
        return z, log_accept

    monkeypatch.setattr(ais, "hmc_transition", scripted)
    log_evidence(model, guide, x=torch.tensor([0.3, -0.2]), num_particles=4, method="ais", num_steps=100, warn=False)
    assert len(seen) == 100 and all(s[2] == 5 and s[1] is not None and len(s[1]) == 2 for s in seen)
    up, down = 0.5, 0.5
    for eps, _, _ in seen:
        assert eps.shape[0] == 1 and float(eps[..., 0]) == pytest.approx(up, rel=1e-5)  # float32 data
        assert float(eps[..., 1]) == pytest.approx(down, rel=1e-5)
        up, down = min(up * 1.1, 10.0), max(down / 1.1, 1e-4)
    assert float(seen[-1][0][..., 0]) == 10.0 and float(seen[-1][0][..., 1]) == pytest.approx(1e-4, rel=1e-6)


def test_ais_takes_keyword_data_and_refuses_what_it_cannot_move(normal_pair):
    """AIS with keyword data; a latent without a guide site and one without reparameterised draws (a von Mises
    angle) are refused by name; called directly, ais_log_weights defaults to 100 temperatures, 5 leapfrog steps
    and a step size of 0.5."""
    import re

    from dgm_pyro.infer.ais import ais_log_weights
    from dgm_pyro.infer.evidence import batch_plates

    model, guide = normal_pair(2, noise=1.0, a=0.5, b=0.9)

    x = torch.tensor([0.3, -0.2])
    res = log_evidence(model, guide, x=x, num_particles=64, method="ais", num_steps=20, warn=False)
    exact = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x)
    assert torch.allclose(res.log_evidence.float(), exact, atol=0.05)
    shared, nesting, _ = batch_plates(model, guide, (), {"x": x})
    keep = {d for _, d in shared}
    pyro.set_rng_seed(1)
    plain = ais_log_weights(model, guide, (), {"x": x}, 3, keep, nesting)
    pyro.set_rng_seed(1)
    explicit = ais_log_weights(model, guide, (), {"x": x}, 3, keep, nesting, num_steps=100, hmc_steps=5, step_size=0.5)
    assert torch.equal(plain, explicit)

    def two_latents(x=None):
        with pyro.plate("data", 2):
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            z = pyro.sample("z", dist.Normal(w, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(DgmPyroError, match="^" + re.escape("AIS needs a guide site for every model latent; 'w' have none")
                       + "$"):
        log_evidence(two_latents, guide, x=x, num_particles=4, method="ais", num_steps=2, warn=False)

    def angle_model(x=None):
        with pyro.plate("data", 2):
            a = pyro.sample("a", dist.VonMises(0.0, 1.0))
            pyro.sample("x", dist.Normal(a, 1.0), obs=x)

    def angle_guide(x=None):
        with pyro.plate("data", 2):
            pyro.sample("a", dist.VonMises(x, 2.0))

    assert not dist.VonMises(0.0, 1.0).has_rsample
    with pytest.raises(DgmPyroError, match="^" + re.escape("AIS needs continuous latents; 'a' is not") + "$"):
        log_evidence(angle_model, angle_guide, x=x, num_particles=4, method="ais", num_steps=2, warn=False)


def test_leapfrog_is_the_hand_computed_integrator(normal_pair):
    """z ~ N(0, 1), x ~ N(z, 1), guide N(a x, b^2), at temperature beta: the potential is
    U(z) = -(beta log p(x, z) + (1 - beta) log q(z)), dU/dz = beta (2 z - x) + (1 - beta) (z - a x) / b^2. In the
    guide's scale sd = b: a half step of momentum, then per step a full position step and a full momentum step,
    the last momentum step a half one; the potential returned is U at the end."""
    from dgm_pyro.infer.ais import JointDensities, _leapfrog

    a, b, beta, steps = 0.5, 0.8, 0.6, 3
    model, guide = normal_pair(2, noise=1.0, a=a, b=b)
    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    target = JointDensities(model, guide, (), {"x": x}, 4, {-1}, 1)
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    r0 = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    eps = torch.tensor([[0.3, 0.7]], dtype=torch.float64)

    def dU(z):
        return beta * (2 * z - x) + (1 - beta) * (z - a * x) / b ** 2

    def U(z):
        log_p = dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(x)
        return -(beta * log_p + (1 - beta) * dist.Normal(a * x, b).log_prob(z))

    z, r = z0.clone(), r0 - 0.5 * eps * b * dU(z0)
    for i in range(steps):
        z = z + eps * b * r
        r = r - (1.0 if i < steps - 1 else 0.5) * eps * b * dU(z)
    got_z, got_r, potential = _leapfrog(target, {"z": z0}, {"z": r0}, {"z": torch.full_like(z0, b)}, eps, beta, steps)
    torch.testing.assert_close(got_z["z"], z)
    torch.testing.assert_close(got_r["z"], r)
    torch.testing.assert_close(potential, U(z))


def test_a_proposal_with_an_undefined_density_is_rejected():
    """A target whose log density is NaN outside (-1, 1): from z = 0.9 a long step leaves it, so every chain's
    acceptance is 0 (log -inf) and the chains stay where they were (a NaN is no acceptance probability)."""
    from dgm_pyro.infer.ais import hmc_transition

    class Target:
        keep, nesting = {-1}, 1

        def log_densities(self, z):
            inside = -0.5 * z["z"] ** 2
            log_p = torch.where(z["z"].abs() < 1, inside, torch.full_like(inside, math.nan))
            return log_p, inside

    torch.manual_seed(0)
    z = {"z": torch.full((50, 3), 0.9)}
    new, log_accept = hmc_transition(Target(), z, {"z": torch.ones(50, 3)}, torch.full((1, 3), 10.0), 1.0, 2,
                                     {"z": 0})
    assert bool((log_accept == -math.inf).all()) and torch.equal(new["z"], z["z"])


def test_ais_names_every_latent_without_a_guide_site(normal_pair):
    _, guide = normal_pair(2)

    def model(x=None):
        with pyro.plate("data", 2):
            v = pyro.sample("v", dist.Normal(0.0, 1.0))
            w = pyro.sample("w", dist.Normal(v, 1.0))
            z = pyro.sample("z", dist.Normal(w, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(DgmPyroError, match="^AIS needs a guide site for every model latent; 'v', 'w' have none$"):
        log_evidence(model, guide, x=torch.tensor([0.3, -0.2]), num_particles=4, method="ais", num_steps=2, warn=False)
