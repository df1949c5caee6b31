"""FreeBitsELBO: the floor of lam nats per group, zero gradient below it, the ELBO at lam = 0."""

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
