"""FreeBitsELBO: the floor of lam nats per group, zero gradient below it, the ELBO at lam = 0."""

import contextlib
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from dgm_pyro.divergences import kl_divergence
from dgm_pyro.infer import FreeBitsELBO

B, D = 6, 3


def latent_only_model(x):
    with pyro.plate("data", B):
        pyro.sample("z", dist.Normal(torch.zeros(D, dtype=torch.float64), 1.0).to_event(1))


def make_guide(loc, scale):
    def guide(x):
        with pyro.plate("data", B):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return guide


def _params():
    # dimension 0: posteriors near the prior (KL about 0.01 nats); 1 and 2: far from it (KL of several nats)
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(B, D, generator=g, dtype=torch.float64) * torch.tensor([0.1, 3.0, 2.0], dtype=torch.float64)
    scale = torch.tensor([0.95, 0.2, 0.4], dtype=torch.float64).expand(B, D).clone()
    return loc, scale


@pytest.mark.parametrize("per,groups", [("dim", D), ("site", 1)])
def test_regulariser_is_at_least_groups_times_lam(per, groups):
    loc, scale = _params()
    for lam in (0.0, 0.5, 2.0, 100.0):
        reg = FreeBitsELBO(lam=lam, per=per).components(latent_only_model, make_guide(loc, scale), None)["regulariser"]
        assert reg / B >= groups * lam - 1e-9
        kl = kl_divergence(dist.Normal(loc, scale), dist.Normal(0.0, 1.0)).double()  # (B, D)
        group_kl = kl.mean(0) if per == "dim" else kl.sum(1).mean(0, keepdim=True)
        assert reg / B == pytest.approx(float(group_kl.clamp(min=lam).sum()), rel=1e-9)
    # a floor above every group's KL makes the regulariser exactly groups x lam
    reg = FreeBitsELBO(lam=100.0, per=per).components(latent_only_model, make_guide(loc, scale), None)["regulariser"]
    assert reg / B == pytest.approx(groups * 100.0)


def test_group_below_lam_gets_zero_gradient():
    loc, scale = _params()
    loc.requires_grad_()
    loss = FreeBitsELBO(lam=0.5, per="dim").differentiable_loss(latent_only_model, make_guide(loc, scale), None)
    (grad,) = torch.autograd.grad(loss, loc)
    assert torch.all(grad[:, 0] == 0)  # mean KL of dimension 0 is below 0.5 nats
    # above the floor the gradient is the KL's: d/d loc of sum_i KL_i = loc (standard normal prior)
    torch.testing.assert_close(grad[:, 1:], loc.detach()[:, 1:])


def test_lam_zero_is_the_closed_form_elbo():
    loc, scale = _params()
    x = torch.randn(B, 2, dtype=torch.float64)

    def model(x):
        with pyro.plate("data", B):
            z = pyro.sample("z", dist.Normal(torch.zeros(D, dtype=torch.float64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z[:, :2], 1.0).to_event(1), obs=x)

    values = []
    for loss in (FreeBitsELBO(lam=0.0), TraceMeanField_ELBO()):
        pyro.set_rng_seed(5)
        values.append(loss.loss(model, make_guide(loc, scale), x))
    assert values[0] == pytest.approx(values[1], rel=1e-12)


def test_per_dim_needs_a_factorised_site_and_bad_arguments():
    def mvn_model(x):
        with pyro.plate("data", B):
            pyro.sample("z", dist.MultivariateNormal(torch.zeros(D), torch.eye(D)))

    def mvn_guide(x):
        with pyro.plate("data", B):
            pyro.sample("z", dist.MultivariateNormal(torch.ones(D), torch.eye(D)))

    with pytest.raises(ValueError, match="not factorised"):
        FreeBitsELBO(lam=0.1, per="dim").loss(mvn_model, mvn_guide, None)
    # per site works for any pair with a KL: here KL = D/2 = 1.5 nats per datapoint
    reg = FreeBitsELBO(lam=0.1, per="site").components(mvn_model, mvn_guide, None)["regulariser"]
    assert reg == pytest.approx(B * 1.5, rel=1e-6)
    with pytest.raises(ValueError, match="lam"):
        FreeBitsELBO(lam=-0.1)
    with pytest.raises(ValueError, match="per"):
        FreeBitsELBO(per="layer")
    assert "max(0.5, E_batch KL_g" in repr(FreeBitsELBO(lam=0.5))


def test_python_bool_mask_and_tensor_mask():
    """poutine.mask(mask=False) removes the site's term (it used to crash); a tensor mask keeps the rows it marks:
    the regulariser is then the masked rows' KL, averaged over them, times their count."""
    from pyro import poutine

    loc, scale = _params()
    kl = kl_divergence(dist.Normal(loc, scale), dist.Normal(torch.zeros(D, dtype=torch.float64), 1.0))  # (B, D)

    def masked(model_or_guide, mask):
        def fn(x):
            with poutine.mask(mask=mask):
                model_or_guide(x)
        return fn

    reg = FreeBitsELBO(lam=0.0, per="dim").components(masked(latent_only_model, False),
                                                      masked(make_guide(loc, scale), False), None)["regulariser"]
    assert reg == 0.0
    rows = torch.tensor([True, False, True, True, False, False])
    reg = FreeBitsELBO(lam=0.0, per="dim").components(masked(latent_only_model, rows),
                                                      masked(make_guide(loc, scale), rows), None)["regulariser"]
    assert reg == pytest.approx(float(kl[rows].sum()), rel=1e-9)


def test_sites_without_closed_form_need_mc_samples_and_match_quadrature():
    """q = Normal, p = StudentT(3) (no registered KL): refused by default; with 200 000 draws the Monte Carlo KL
    matches numerical quadrature to 0.01 nats (above the floor, so the clamp does not bias it)."""
    def model(x):
        with pyro.plate("data", 2):
            pyro.sample("z", dist.StudentT(3.0, torch.zeros(1, dtype=torch.float64), 1.0).to_event(1))

    loc, scale = torch.tensor([[2.0], [-1.0]], dtype=torch.float64), torch.tensor([[0.5], [0.3]], dtype=torch.float64)

    def guide(x):
        with pyro.plate("data", 2):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    with pytest.raises(NotImplementedError, match="site 'z'.*mc_samples"):
        FreeBitsELBO(lam=0.1).components(model, guide, None)
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    q = dist.Normal(loc, scale)  # (2, 1)
    dens = q.log_prob(grid).exp()
    exact = ((q.log_prob(grid) - dist.StudentT(3.0, 0.0, 1.0).log_prob(grid)) * dens).sum(-1) * (grid[1] - grid[0])
    pyro.set_rng_seed(0)
    reg = FreeBitsELBO(lam=0.1, mc_samples=200_000).components(model, guide, None)["regulariser"]
    assert reg == pytest.approx(float(exact.sum()), abs=0.01)


def test_settings_reach_pyros_elbo_and_the_refusals_name_their_values():
    import re

    loss = FreeBitsELBO(lam=0.25, per="site", num_particles=3, vectorize_particles=True, max_plate_nesting=2,
                        mc_samples=1)
    from pyro.infer import Trace_ELBO

    pyros = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=2)
    assert (loss.num_particles, loss.vectorize_particles, loss.max_plate_nesting, loss.mc_samples) == (
        pyros.num_particles, pyros.vectorize_particles, pyros.max_plate_nesting, 1)
    assert FreeBitsELBO(max_plate_nesting=2).max_plate_nesting == 2
    default = FreeBitsELBO()
    assert (default.lam, default.per, default.num_particles, default.vectorize_particles, default.mc_samples) == (
        0.5, "dim", 1, False, None)
    assert repr(default) == ("FreeBitsELBO(lam=0.5, per='dim', num_particles=1): E_q[log p(x|z)] - sum_g max(0.5, "
                             "E_batch KL_g(q(z|x) || p(z))), g over latent dimensions")
    assert repr(loss).endswith("g over latent sites") and "num_particles=3" in repr(loss)
    for kwargs, message in [({"lam": -0.1}, "FreeBitsELBO: lam must be >= 0, got -0.1"),
                            ({"per": "group"}, "FreeBitsELBO: per must be 'dim' or 'site', got 'group'"),
                            ({"mc_samples": 0}, "FreeBitsELBO: mc_samples must be >= 1, got 0")]:
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            FreeBitsELBO(**kwargs)


def test_a_site_not_factorised_per_dimension_is_named_with_both_distributions():
    import re

    def model():
        pyro.sample("z", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))

    def guide():
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    with pytest.raises(ValueError, match="^" + re.escape(
            "FreeBitsELBO(per='dim'): site 'z' is not factorised over its dimensions (Independent vs "
            "MultivariateNormal); use per='site' (command line: --free-bits-per site)") + "$"):
        FreeBitsELBO(lam=0.1).loss(model, guide)


def test_monte_carlo_kl_per_dimension_against_a_long_run_and_without_reparameterised_draws():
    """A Normal against a logistic (no closed-form KL in torch or Pyro): per dimension, the KL estimate from mc_samples draws
    is each dimension's own (dimension 0 is far from the prior, dimension 1 close, so the clamp at lam acts on one
    only); and a guide without rsample (a Bernoulli against a Binomial) is estimated from sample()."""
    q = dist.Normal(torch.zeros(3, 2), torch.tensor([0.05, 1.2])).to_event(1)
    p = dist.Logistic(torch.zeros(3, 2), 1.0).to_event(1)
    with pytest.raises(NotImplementedError):
        torch.distributions.kl_divergence(q.base_dist, p.base_dist)
    torch.manual_seed(0)
    kl = FreeBitsELBO(lam=0.3, mc_samples=20000)._elementwise_kl("z", q, p, None)
    assert kl.shape == (3, 2)
    torch.manual_seed(1)
    z = q.base_dist.sample((200000,))
    exact = (q.base_dist.log_prob(z) - p.base_dist.log_prob(z)).mean(0)  # (3, 2): the long run
    assert torch.allclose(kl, exact, atol=0.03) and float(kl[0, 0] - kl[0, 1]) > 1.0
    qb, pb = dist.Bernoulli(torch.tensor([0.3, 0.8])), dist.Binomial(1, torch.tensor([0.6, 0.6]))
    torch.manual_seed(0)
    got = FreeBitsELBO(lam=0.0, per="site", mc_samples=50000)._elementwise_kl("b", qb, pb, None)
    want = torch.tensor([0.3 * math.log(0.3 / 0.6) + 0.7 * math.log(0.7 / 0.4),
                         0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.4)])
    assert torch.allclose(got, want, atol=0.02)
    with pytest.raises(NotImplementedError, match=r"^FreeBitsELBO: no closed-form KL for site 'b' \(Bernoulli vs "
                                                  r"Binomial\); pass mc_samples=N \(command line: --kl-samples N\) "
                                                  r"for a Monte Carlo estimate$"):
        FreeBitsELBO(lam=0.0, per="site")._elementwise_kl("b", qb, pb, None)


def _one_site(n, scale=None):
    loc = torch.linspace(-1.0, 1.0, n).unsqueeze(-1).expand(n, 2) * torch.tensor([1.0, 0.1])

    def model():
        with pyro.plate("data", n):
            with (pyro.poutine.scale(scale=scale) if scale is not None else contextlib.nullcontext()):
                pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

    def guide():
        with pyro.plate("data", n):
            with (pyro.poutine.scale(scale=scale) if scale is not None else contextlib.nullcontext()):
                pyro.sample("z", dist.Normal(loc, 0.5).to_event(1))

    kl = torch.distributions.kl_divergence(dist.Normal(loc, 0.5), dist.Normal(0.0, 1.0))  # (n, 2)
    return model, guide, kl


def test_regulariser_with_one_datapoint_and_with_a_tensor_scale_by_hand():
    """R = scale x count x sum_g max(lam, mean_batch KL_g): one datapoint (the mean is its own KL), and a per-datapoint
    tensor scale entering through its mean over the batch."""
    lam = 0.2
    model, guide, kl = _one_site(1)
    got = FreeBitsELBO(lam=lam).components(model, guide)["regulariser"]
    assert got == pytest.approx(float(kl[0].clamp(min=lam).sum()), rel=1e-6)
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0])
    model, guide, kl = _one_site(4, scale)
    got = FreeBitsELBO(lam=lam).components(model, guide)["regulariser"]
    assert got == pytest.approx(float(scale.mean() * 4 * kl.mean(0).clamp(min=lam).sum()), rel=1e-6)


def test_components_average_the_particles(normal_pair):
    """With 2 particles drawn one after the other, each term is the mean of the two one-particle terms on the same
    random stream."""
    model, guide = normal_pair(3, noise=0.5, a=0.3)
    x = torch.tensor([0.5, -1.0, 2.0])
    pyro.set_rng_seed(4)
    two = FreeBitsELBO(lam=0.1, per="site", num_particles=2).components(model, guide, x)
    pyro.set_rng_seed(4)
    ones = [FreeBitsELBO(lam=0.1, per="site").components(model, guide, x) for _ in range(2)]
    for key in ("reconstruction", "regulariser"):
        assert two[key] == pytest.approx((ones[0][key] + ones[1][key]) / 2, rel=1e-6)
    assert ones[0]["reconstruction"] != ones[1]["reconstruction"]


def test_tensor_scale_under_a_mask_and_for_one_datapoint_and_a_site_outside_any_plate():
    """R = s x count x sum_g max(lam, mean KL_g), the scale s and the mean over the unmasked datapoints only (a
    masked datapoint's scale does not count); one datapoint with a tensor scale is its own mean; a global site
    (no plate) with per="dim" clamps each dimension's KL, not their sum."""
    lam = 0.2
    scale, rows = torch.tensor([0.5, 1.0, 2.0, 4.0]), torch.tensor([True, False, True, True])
    model, guide, kl = _one_site(4, scale)
    masked = [pyro.poutine.mask(f, mask=rows) for f in (model, guide)]
    got = FreeBitsELBO(lam=lam).components(*masked)["regulariser"]
    assert got == pytest.approx(float((0.5 + 2.0 + 4.0) / 3 * 3 * kl[rows].mean(0).clamp(min=lam).sum()), rel=1e-6)
    model, guide, kl = _one_site(1, torch.tensor([3.0]))
    got = FreeBitsELBO(lam=lam).components(model, guide)["regulariser"]
    assert got == pytest.approx(float(3.0 * kl[0].clamp(min=lam).sum()), rel=1e-6)

    def global_model():
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def global_guide():
        pyro.sample("z", dist.Normal(torch.tensor([0.1, 2.0]), 1.0).to_event(1))

    got = FreeBitsELBO(lam=0.5, per="dim").components(global_model, global_guide)["regulariser"]
    assert got == pytest.approx(0.5 + 2.0, rel=1e-6)  # KL per dimension: 0.005 (clamped to 0.5) and 2.0


def test_monte_carlo_kl_has_the_reparameterised_gradient():
    """KL(N(m, 1) || Logistic(0, 1)) = const + 2 E log cosh(z / 2) (no closed form in torch or Pyro): its derivative
    in m is E tanh(z / 2), z ~ N(m, 1), here by quadrature (0.282 at m = 0.7). The Monte Carlo estimate's gradient
    matches it within 0.02 (about 7 of its standard errors with 20 000 draws); from draws that are not
    reparameterised it would be about 0."""
    m = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    q, p = dist.Normal(m, 1.0), dist.Logistic(torch.zeros(1, dtype=torch.float64), 1.0)
    with pytest.raises(NotImplementedError):
        torch.distributions.kl_divergence(q, p)
    torch.manual_seed(0)
    kl = FreeBitsELBO(lam=0.0, per="site", mc_samples=20000)._elementwise_kl("z", q, p, None)
    (grad,) = torch.autograd.grad(kl.sum(), m)
    grid = torch.linspace(-10.0, 12.0, 20001, dtype=torch.float64)
    want = torch.trapezoid(torch.tanh(grid / 2) * dist.Normal(0.7, 1.0).log_prob(grid).exp(), grid)
    assert float(want) > 0.25 and float(grad) == pytest.approx(float(want), abs=0.02)  # 0.282
