"""CSELBO (seed P2.2) against analytic truth on z ~ N(0,1), x|z ~ N(z,1), finite differences, and SVI."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from dgm_pyro.divergences import cs_divergence, kl_divergence
from dgm_pyro.infer import CSELBO, FreeBitsELBO, log_evidence

X = torch.tensor([0.3, -1.2, 2.0, 0.8], dtype=torch.float64)
M = torch.tensor([0.1, -0.5, 1.0, 0.9], dtype=torch.float64)
S = torch.tensor([0.7, 0.9, 0.5, 1.3], dtype=torch.float64)
PRIOR = dist.Normal(torch.zeros_like(M), torch.ones_like(M))


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def make_guide(m, s):
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(m, s))

    return guide


def expected_reconstruction(x, m, s):
    """E_{N(z; m, s^2)}[log N(x; z, 1)] = -1/2 log 2 pi - ((x - m)^2 + s^2) / 2, exactly."""
    return -0.5 * math.log(2 * math.pi) - 0.5 * ((x - m) ** 2 + s**2)


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_matches_hand_computed_objective_and_p22_identity(lam):
    n = 40_000
    loss = CSELBO(lam=lam, num_particles=n, vectorize_particles=True)
    estimate = -loss.loss(model, make_guide(M, S), X)
    q, prior = dist.Normal(M, S), PRIOR
    exact = float((expected_reconstruction(X, M, S) - lam * cs_divergence(q, prior)).sum())
    # Monte Carlo error of the reconstruction term: its variance is sum_i Var[-(x_i - z)^2 / 2]
    var = ((X - M) ** 2 * S**2 + S**4 / 2).sum()
    assert abs(estimate - exact) < 5 * math.sqrt(var / n)
    # P2.2: L_CS = log p(x) - KL(q || p(z|x)) + KL(q || p(z)) - lam D_CS(q || p(z)); here p(x) = N(0, 2) and
    # p(z|x) = N(x/2, 1/2)
    log_px = dist.Normal(torch.zeros_like(X), math.sqrt(2.0)).log_prob(X)
    post = dist.Normal(X / 2, math.sqrt(0.5))
    identity = (log_px - kl_divergence(q, post) + kl_divergence(q, prior) - lam * cs_divergence(q, prior)).sum()
    assert float(identity) == pytest.approx(exact, rel=1e-12, abs=1e-12)


def test_is_not_a_lower_bound_for_small_lam():
    """With lam < 1 and D_CS <= KL (P2.1), L_CS exceeds the log evidence at the exact posterior."""
    post_m, post_s = X / 2, torch.full_like(X, math.sqrt(0.5))
    lcs = expected_reconstruction(X, post_m, post_s) - 0.5 * cs_divergence(dist.Normal(post_m, post_s), PRIOR)
    assert (lcs > dist.Normal(torch.zeros_like(X), math.sqrt(2.0)).log_prob(X)).all()


def test_gradients_match_finite_differences():
    def objective(m, log_s):
        pyro.set_rng_seed(11)  # common random numbers: the loss is a smooth deterministic function of (m, s)
        return CSELBO(lam=1.5, num_particles=5, vectorize_particles=True).differentiable_loss(
            model, make_guide(m, log_s.exp()), X)

    m, log_s = M.clone().requires_grad_(), S.log().requires_grad_()
    grads = torch.autograd.grad(objective(m, log_s), (m, log_s))
    h = 1e-6
    for which, g in enumerate(grads):
        for i in range(X.shape[0]):
            args_p = [M.clone(), S.log().clone()]
            args_m = [M.clone(), S.log().clone()]
            args_p[which][i] += h
            args_m[which][i] -= h
            fd = (objective(*args_p) - objective(*args_m)) / (2 * h)
            assert float(g[i]) == pytest.approx(float(fd), rel=1e-5, abs=1e-7)


def test_scale_and_mask_are_honoured():
    loss = CSELBO(lam=2.0)
    d = cs_divergence(dist.Normal(M, S), PRIOR)
    base = loss.components(model, make_guide(M, S), X)["regulariser"]
    assert base == pytest.approx(2.0 * float(d.sum()), rel=1e-9)
    scaled = loss.components(poutine.scale(model, scale=3.0), poutine.scale(make_guide(M, S), scale=3.0), X)
    assert scaled["regulariser"] == pytest.approx(3 * base, rel=1e-9)
    mask = torch.tensor([True, False, True, True])
    masked = loss.components(poutine.mask(model, mask=mask), poutine.mask(make_guide(M, S), mask=mask), X)
    assert masked["regulariser"] == pytest.approx(2.0 * float(d[mask].sum()), rel=1e-9)


def test_full_covariance_and_mixture_sites_use_closed_forms(latent_pair):
    loc = torch.tensor([[0.5, -0.2], [1.0, 0.3]], dtype=torch.float64)
    tril = torch.tensor([[[0.8, 0.0], [0.3, 0.5]], [[1.1, 0.0], [-0.4, 0.7]]], dtype=torch.float64)
    mix = dist.MixtureSameFamily(dist.Categorical(torch.tensor([0.3, 0.7], dtype=torch.float64)),
                                 dist.MultivariateNormal(torch.tensor([[-1.0, 0.0], [1.5, 0.5]], dtype=torch.float64),
                                                         scale_tril=0.6 * torch.eye(2, dtype=torch.float64)))

    mog_model, mvn_guide = latent_pair(mix, lambda x: dist.MultivariateNormal(loc, scale_tril=tril))

    got = CSELBO(lam=0.7).components(mog_model, mvn_guide, torch.zeros(2, 2, dtype=torch.float64))["regulariser"]
    want = 0.7 * float(cs_divergence(dist.MultivariateNormal(loc, scale_tril=tril), mix).sum())
    assert got == pytest.approx(want, rel=1e-9)


def test_markov_prior_pairs_sites_at_the_guide_sample():
    """z1 ~ N(0,1), z2 ~ N(z1, 1): the z2 term is D_CS(q(z2) || N(z1, 1)) at the guide's z1."""

    def chain(x):
        z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
        z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
        pyro.sample("x", dist.Normal(z2, 1.0), obs=x)

    def guide(x):
        pyro.sample("z1", dist.Normal(0.7, 1e-5))  # practically a point at 0.7
        pyro.sample("z2", dist.Normal(-0.4, 0.6))

    got = CSELBO().components(chain, guide, torch.tensor(0.0))["regulariser"]
    want = cs_divergence(dist.Normal(0.7, 1e-5), dist.Normal(0.0, 1.0)) + cs_divergence(
        dist.Normal(-0.4, 0.6), dist.Normal(0.7, 1.0))
    assert got == pytest.approx(float(want), abs=1e-4)


def test_no_closed_form_raises_unless_monte_carlo_is_asked_for():
    def laplace_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Laplace(torch.zeros_like(x), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    guide = make_guide(M, S)
    with pytest.raises(NotImplementedError, match="mc_samples"):
        CSELBO().loss(laplace_model, guide, X)
    pyro.set_rng_seed(0)
    got = CSELBO(mc_samples=200_000).components(laplace_model, guide, X)["regulariser"]
    # the same divergence by quadrature on a fine grid
    grid = torch.linspace(-30, 30, 600_001, dtype=torch.float64)[:, None]
    lq, lp = dist.Normal(M, S).log_prob(grid), dist.Laplace(0.0, 1.0).log_prob(grid)
    dx = float(grid[1] - grid[0])

    def log_int(t):
        return torch.logsumexp(t, 0) + math.log(dx)

    want = (-log_int(lq + lp) + 0.5 * log_int(2 * lq) + 0.5 * log_int(2 * lp)).sum()
    assert got == pytest.approx(float(want), rel=2e-2)


def test_repr_and_bad_arguments():
    assert repr(CSELBO(lam=2.0)) == ("CSELBO(lam=2, num_particles=1): E_q[log p(x|z)] - 2 * D_CS(q(z|x) || p(z))")
    with pytest.raises(ValueError, match="lam"):
        CSELBO(lam=-1.0)
    with pytest.raises(ValueError, match="mc_samples"):
        CSELBO(mc_samples=0)


def test_svi_trains_the_cvae_end_to_end():
    from dgm_pyro.data import load_digits
    from dgm_pyro.runs import TrainConfig, build_model

    ds = load_digits()
    cvae = build_model(TrainConfig(hidden_dims=[64], latent_dim=4), ds)
    x, y = ds.splits["train"]
    xt, yt = ds.splits["test"]

    def test_ll():
        with torch.no_grad():
            return float(log_evidence(cvae.model, cvae.guide, xt, yt, num_particles=20, warn=False)
                         .log_evidence.mean())

    before = test_ll()
    svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": 3e-3}), loss=CSELBO(lam=1.0))
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        for idx in torch.randperm(x.shape[0], generator=gen).split(100):
            svi.step(x[idx], y[idx])
    after = test_ll()
    # untrained: about -180 nats; 8 epochs of CS-ELBO bring the test log-likelihood near -110
    assert before < -150 and after > -125, (before, after)
    # the objective it optimised sits above the ELBO of the same model (lam = 1, D_CS <= KL for Gaussians)
    cvae.eval()
    pyro.set_rng_seed(1)
    cs_value = -CSELBO(lam=1.0, num_particles=50, vectorize_particles=True).loss(cvae.model, cvae.guide, xt, yt)
    pyro.set_rng_seed(1)
    elbo = -Trace_ELBO(num_particles=50, vectorize_particles=True).loss(cvae.model, cvae.guide, xt, yt)
    assert cs_value > elbo


# ---------------------------------------------------------------- the shared walk over sites (RegularisedELBO)


def _masked_pair(model_mask=None, guide_mask=None):
    loc = torch.tensor([[0.5], [-1.0], [2.0]])

    import contextlib

    def masked(mask):
        return poutine.mask(mask=mask) if mask is not None else contextlib.nullcontext()

    def model():
        with pyro.plate("data", 3), masked(model_mask):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))

    def guide():
        with pyro.plate("data", 3), masked(guide_mask):
            pyro.sample("z", dist.Normal(loc, 0.5).to_event(1))

    d = cs_divergence(dist.Normal(loc, 0.5).to_event(1), dist.Normal(0.0, 1.0).expand([3, 1]).to_event(1))
    return model, guide, d


def test_masks_of_model_and_guide_combine_as_and():
    """Model mask only, guide mask only, both (their intersection), neither."""
    a, b = torch.tensor([True, False, True]), torch.tensor([True, True, False])
    for model_mask, guide_mask, keep in [(a, None, a), (None, b, b), (a, b, a & b), (None, None, torch.ones(3, dtype=bool))]:
        model, guide, d = _masked_pair(model_mask, guide_mask)
        got = CSELBO(lam=1.0).components(model, guide)["regulariser"]
        assert got == pytest.approx(float(d[keep].sum()), rel=1e-6), (model_mask, guide_mask)


def test_terms_take_every_site_and_refuse_unpaired_ones_by_name():
    import re

    def model(x):
        pyro.sample("x0", dist.Normal(0.0, 1.0), obs=x)  # an observed site first: the latents after it still count
        z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
        pyro.sample("z2", dist.Normal(z1, 1.0))

    def guide(x):
        pyro.sample("z1", dist.Normal(0.3, 0.5))
        pyro.sample("z2", dist.Normal(0.1, 0.7))

    x = torch.tensor(0.4)
    pyro.set_rng_seed(0)
    comp = CSELBO(lam=1.0).components(model, guide, x)
    pyro.set_rng_seed(0)
    tr = poutine.trace(guide).get_trace(x)
    d1 = float(cs_divergence(dist.Normal(0.3, 0.5), dist.Normal(0.0, 1.0)))
    d2 = float(cs_divergence(dist.Normal(0.1, 0.7), dist.Normal(tr.nodes["z1"]["value"], 1.0)))
    assert comp["regulariser"] == pytest.approx(d1 + d2, rel=1e-5)
    assert comp["reconstruction"] == pytest.approx(float(dist.Normal(0.0, 1.0).log_prob(x)), rel=1e-6)
    pyro.set_rng_seed(0)
    assert CSELBO(lam=1.0).loss(model, guide, x) == pytest.approx(comp["regulariser"] - comp["reconstruction"],
                                                                    rel=1e-5)

    def no_guide_for_z2(x):
        pyro.sample("z1", dist.Normal(0.3, 0.5))

    def extra_guide_site(x):
        guide(x)
        pyro.sample("aux", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="^" + re.escape("CSELBO: latent site 'z2' of the model has no guide site") + "$"):
        CSELBO().loss(model, no_guide_for_z2, x)
    with pytest.raises(ValueError, match="^" + re.escape("CSELBO: guide site 'aux' has no model site (auxiliary guide "
                                                         "variables are not supported)") + "$"):
        CSELBO().loss(model, extra_guide_site, x)


def test_loss_averages_particles_and_settings_reach_pyro():
    import re

    from pyro.infer import Trace_ELBO

    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.2))

    def guide():
        pyro.sample("z", dist.Normal(0.4, 0.6))

    pyro.set_rng_seed(1)
    two = CSELBO(num_particles=2).loss(model, guide)
    pyro.set_rng_seed(1)
    ones = [CSELBO().loss(model, guide) for _ in range(2)]
    assert two == pytest.approx(sum(ones) / 2, rel=1e-6)  # x does not depend on z: every particle is the same value
    default = CSELBO()
    assert (default.num_particles, default.vectorize_particles, default.mc_samples, default.lam) == (1, False, None, 1.0)
    pyros = Trace_ELBO(max_plate_nesting=2)
    assert CSELBO(max_plate_nesting=2).max_plate_nesting == pyros.max_plate_nesting
    assert CSELBO(lam=0.0).lam == 0.0 and CSELBO(mc_samples=1).mc_samples == 1
    for kwargs, message in [({"lam": -1.0}, "CSELBO: lam must be >= 0, got -1.0"),
                            ({"mc_samples": 0}, "CSELBO: mc_samples must be >= 1, got 0")]:
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            CSELBO(**kwargs)


def test_monte_carlo_fallback_uses_the_given_draws_and_the_refusal_names_both_sides():
    """A Normal guide against a Laplace prior: D_CS has no closed form; with mc_samples it is cs_divergence_mc with
    that many draws (the same value on the same random stream), without it a one-line refusal."""
    import re

    from dgm_pyro.divergences import cs_divergence_mc

    def model():
        pyro.sample("z", dist.Laplace(0.0, 1.0))

    def guide():
        pyro.sample("z", dist.Normal(0.5, 0.7))

    pyro.set_rng_seed(2)
    got = CSELBO(lam=1.0, mc_samples=7).components(model, guide)["regulariser"]
    pyro.set_rng_seed(2)
    poutine.trace(guide).get_trace()  # the same draw of z the objective makes first
    want = float(cs_divergence_mc(dist.Normal(0.5, 0.7), dist.Laplace(0.0, 1.0), 7))
    assert got == pytest.approx(want, rel=1e-6)
    with pytest.raises(NotImplementedError, match="^" + re.escape(
            "CSELBO: no closed-form D_CS for site 'z' (Normal vs Laplace); pass mc_samples=N (command line: "
            "--kl-samples N) for a Monte Carlo estimate") + "$"):
        CSELBO().loss(model, guide)


@pytest.mark.parametrize("objective", [CSELBO(lam=1.0), FreeBitsELBO(lam=0.1)])
def test_a_nan_loss_is_reported_as_pyros_elbos_do(normal_pair, objective):
    """Pyro's ELBOs warn "Encountered NaN: loss" when the loss is NaN; so do the regularised ones."""
    model, guide = normal_pair(2)
    with pyro.validation_enabled(False), pytest.warns(UserWarning, match="^Encountered NaN: loss$"):
        assert math.isnan(objective.loss(model, guide, x=torch.tensor([0.3, float("nan")])))
