"""IWELBO against the exact evidence of the linear-Gaussian CVAE, and DReG against the IWAE gradient."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from dgm_pyro.errors import DgmPyroError
from dgm_pyro.infer import IWELBO
from dgm_pyro.models import LinearGaussianCVAE


@pytest.fixture
def lg():
    truth = LinearGaussianCVAE(dtype=torch.float64)
    y = torch.randn(30, truth.y_dim, dtype=torch.float64)
    return truth, truth.sample(y), y


def _guide(truth, shift, log_scale):
    """A guide with learnable (here: given) errors: posterior mean + shift, scales exp(log_scale)."""
    def guide(x, y):
        post = truth.posterior(x, y)
        with pyro.plate("data", y.shape[0]):
            pyro.sample("z", dist.Normal(post.loc + shift, log_scale.exp()).to_event(1))

    return guide


def test_bound_rises_to_the_exact_log_likelihood(lg):
    """L_1 is the ELBO, L_K increases with K, and at K = 2000 it is within 3 Monte Carlo standard errors of the
    exact log p(x|y) (the standard error measured over 20 repeats)."""
    truth, x, y = lg
    exact = float(truth.log_marginal(x, y).sum())
    guide = _guide(truth, torch.tensor([0.4, -0.3], dtype=torch.float64), torch.tensor([-0.7, -0.9], dtype=torch.float64))
    means = {}
    for K in (1, 10, 100, 2000):
        values = torch.tensor([-IWELBO(K, estimator="iwae").loss(truth.model, guide, x, y) for _ in range(20)])
        means[K], se = float(values.mean()), float(values.std() / math.sqrt(20))
        assert means[K] <= exact + 3 * se
    assert means[1] < means[10] < means[100] < means[2000]
    assert exact - means[2000] < 3 * se + 0.02
    assert exact - means[1] > 1.0  # the ELBO is clearly below: the comparison is not trivial


def _guide_gradients(estimator, truth, x, y, K, reps):
    shift = torch.tensor([0.4, -0.3], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor([-0.7, -0.9], dtype=torch.float64, requires_grad=True)
    guide, loss = _guide(truth, shift, log_scale), IWELBO(K, estimator=estimator)
    grads = []
    for _ in range(reps):
        g = torch.autograd.grad(loss.differentiable_loss(truth.model, guide, x, y), (shift, log_scale))
        grads.append(torch.cat(g))
    return torch.stack(grads)


def test_dreg_is_unbiased_for_the_iwae_gradient_with_lower_variance(lg):
    """Over 1500 replications of the gradient with respect to the guide's parameters (K = 20, 5 datapoints),
    the DReG and IWAE means agree within 4 standard errors, and DReG's variance is lower in every coordinate."""
    truth, x, y = lg
    x, y = x[:5], y[:5]
    pyro.set_rng_seed(1)
    iwae = _guide_gradients("iwae", truth, x, y, 20, 1500)
    dreg = _guide_gradients("dreg", truth, x, y, 20, 1500)
    se = (iwae.var(0) / len(iwae) + dreg.var(0) / len(dreg)).sqrt()
    assert bool(((iwae.mean(0) - dreg.mean(0)).abs() < 4 * se).all()), (iwae.mean(0), dreg.mean(0), se)
    assert bool((dreg.var(0) < iwae.var(0)).all()), (dreg.var(0), iwae.var(0))
    assert float(iwae.mean(0).abs().max()) > 10 * float(se.max())  # the gradient is not zero: a real comparison


def test_model_gradient_is_the_same_for_both_estimators(lg):
    """For the model's parameters both estimators are sum_k v_k grad log p: equal on the same draws."""
    truth, x, y = lg
    loc = truth.posterior(x, y).loc  # the guide is fixed before c becomes a parameter of the model alone

    def guide(x, y):
        with pyro.plate("data", y.shape[0]):
            pyro.sample("z", dist.Normal(loc, 0.6).to_event(1))

    c = truth.c.clone().requires_grad_(True)
    truth.c = c
    grads = {}
    for est in ("iwae", "dreg"):
        pyro.set_rng_seed(3)
        (grads[est],) = torch.autograd.grad(IWELBO(7, estimator=est).differentiable_loss(truth.model, guide, x, y), c)
    assert torch.allclose(grads["iwae"], grads["dreg"], atol=1e-10)


def test_trains_a_cvae_with_svi_and_pyro_optim():
    from dgm_pyro.data import load_dataset
    from dgm_pyro.models import CVAE

    ds = load_dataset("linear-gaussian")
    x, y = ds.splits["train"]
    cvae = CVAE(ds.x_dim, ds.y_dim, latent_dim=2, hidden_dims=[16], likelihood="gaussian")
    svi = pyro.infer.SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": 1e-2}), IWELBO(5))
    losses = [svi.step(x[:200], y[:200]) for _ in range(60)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < sum(losses[:10])
    assert len(pyro.get_param_store()) == len(list(cvae.parameters()))


def test_bad_arguments_and_non_reparameterisable_guides(discrete_pair):
    with pytest.raises(DgmPyroError, match="num_particles"):
        IWELBO(0)
    with pytest.raises(DgmPyroError, match="estimator"):
        IWELBO(3, estimator="vimco")

    model, guide = discrete_pair

    with pytest.raises(DgmPyroError, match="reparameterisable"):
        IWELBO(3).differentiable_loss(model, guide, torch.zeros(4))


def test_one_particle_is_the_elbo_and_two_particles_the_hand_computed_bound(lg):
    """L_1 is Trace_ELBO's value on the same draw (the same random numbers give the same z), and
    L_2 = log (w_1 + w_2) / 2 per datapoint with w_k = p(x, z_k) / q(z_k | x) computed here from the densities of
    the model and the guide."""
    truth, x, y = lg
    loc, scale = truth.posterior(x, y).loc + 0.3, torch.full((y.shape[0], truth.z_dim), 0.4, dtype=torch.float64)

    def guide(x, y):
        with pyro.plate("data", y.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    iwelbo1, iwelbo2, trace_elbo = IWELBO(1, estimator="iwae"), IWELBO(2, estimator="iwae"), pyro.infer.Trace_ELBO()
    for loss in (iwelbo1, iwelbo2, trace_elbo):  # a first call finds the plates (a trace that draws): done before
        loss.loss(truth.model, guide, x, y)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        l1 = iwelbo1.loss(truth.model, guide, x, y)
        pyro.set_rng_seed(seed)
        elbo = trace_elbo.loss(truth.model, guide, x, y)
        assert l1 == pytest.approx(elbo, rel=1e-12, abs=1e-9)

    pyro.set_rng_seed(7)
    loss = iwelbo2.loss(truth.model, guide, x, y)
    pyro.set_rng_seed(7)
    z = dist.Normal(loc, scale).rsample((2,))  # the draws the guide makes: (2, N, z_dim)
    log_prior = dist.Normal(truth.prior_loc(y), truth.s).log_prob(z).sum(-1)
    log_lik = dist.Normal(z @ truth.W.T + y @ truth.V.T + truth.c, truth.sigma).log_prob(x).sum(-1)
    log_w = log_prior + log_lik - dist.Normal(loc, scale).log_prob(z).sum(-1)
    want = torch.log((log_w[0].exp() + log_w[1].exp()) / 2).sum()
    assert -loss == pytest.approx(float(want), rel=1e-12)
    # the two draws differ, so L_2 is not the ELBO of either: the test sees the normaliser
    assert float((log_w[0] - log_w[1]).abs().min()) > 1e-3


def test_keyword_data_reach_the_gradient_step_and_the_single_trace_api_is_refused():
    import re

    from dgm_pyro.infer import IWELBO

    def model(x=None):
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x=None):
        w = pyro.param("w", torch.tensor(0.5))
        with pyro.plate("data", 2):
            pyro.sample("z", dist.Normal(w * x, 0.9))

    x = torch.tensor([0.4, -0.3])
    loss = IWELBO(num_particles=4)
    loss.loss(model, guide, x=x)  # the first call finds the batch plates (drawing a trace), later ones do not
    pyro.set_rng_seed(0)
    value = loss.loss_and_grads(model, guide, x=x)
    pyro.set_rng_seed(0)
    assert value == pytest.approx(loss.loss(model, guide, x=x), rel=1e-6)
    assert repr(loss) == ("IWELBO(num_particles=4, estimator='dreg'): log (1/K) sum_k p(x, z_k) / q(z_k|x) per "
                          "datapoint")
    with pytest.raises(NotImplementedError, match="^" + re.escape(
            "IWELBO draws its particles in one vectorised trace; see differentiable_loss") + "$"):
        loss._get_trace(model, guide, (), {"x": x})


def test_dreg_has_the_iwae_value_and_each_model_its_own_plates(lg, grid_pair):
    """The doubly-reparameterised objective changes the gradient, not the value: the same bound as iwae on the same
    draws. The plates found for one model are not used for another (one IWELBO, two models whose batch plates
    differ in name and size)."""
    import re

    truth, x, y = lg
    iwae, dreg = IWELBO(4, estimator="iwae"), IWELBO(4, estimator="dreg")
    for loss in (iwae, dreg):
        loss.loss(truth.model, truth.exact_guide, x, y)
    pyro.set_rng_seed(11)
    a = iwae.loss(truth.model, truth.exact_guide, x, y)
    pyro.set_rng_seed(11)
    b = dreg.loss(truth.model, truth.exact_guide, x, y)
    assert a == pytest.approx(b, rel=1e-12)
    assert (IWELBO().num_particles, IWELBO().estimator) == (10, "dreg")
    with pytest.raises(DgmPyroError, match="^" + re.escape("estimator must be one of iwae, dreg, got 'reinforce'") + "$"):
        IWELBO(estimator="reinforce")

    grid_model, grid_guide = grid_pair
    v = torch.tensor([[0.1, -0.5, 1.0], [0.3, 0.2, -1.0]])
    shared = IWELBO(3, estimator="iwae")
    shared.loss(truth.model, truth.exact_guide, x, y)
    shared.loss(grid_model, grid_guide, v)  # finds this model's plates (a trace that draws)
    pyro.set_rng_seed(2)
    value = shared.loss(grid_model, grid_guide, v)
    fresh = IWELBO(3, estimator="iwae")
    fresh.loss(grid_model, grid_guide, v)
    pyro.set_rng_seed(2)
    assert value == pytest.approx(fresh.loss(grid_model, grid_guide, v), rel=1e-12)  # its own plates, not the first's
    assert shared._batch(grid_model, grid_guide, (v,), {}) != shared._batch(truth.model, truth.exact_guide, (x, y), {})
