"""MeanFieldELBO: Pyro's TraceMeanField_ELBO, with a warning where a KL is not closed-form."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from dgm_pyro.infer import MeanFieldELBO


def test_same_value_as_pyros_and_a_warning_once_where_the_kl_is_sampled(latent_pair):
    def _pair(prior):
        return (*latent_pair(prior, lambda x: dist.Normal(0.5 * x, 0.7).to_event(1), noise=0.5), torch.randn(20, 2))

    mix = dist.MixtureSameFamily(dist.Categorical(torch.tensor([0.4, 0.6])),
                                 dist.Normal(torch.tensor([[-1.0, 0.0], [1.0, 1.0]]), 1.0).to_event(1))
    model, guide, x = _pair(mix)
    loss = MeanFieldELBO()
    with pytest.warns(RuntimeWarning, match=r"latent site 'z' \(Independent against MixtureSameFamily\) has no closed "
                                            r"form; it is estimated by sampling"):
        pyro.set_rng_seed(0)
        got = loss.loss(model, guide, x)
    pyro.set_rng_seed(0)
    assert got == pytest.approx(TraceMeanField_ELBO().loss(model, guide, x), rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss.loss(model, guide, x)  # once per site
    # a Gaussian prior: closed form, no warning, Pyro's value
    model, guide, x = _pair(dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pyro.set_rng_seed(1)
        got = MeanFieldELBO().loss(model, guide, x)
    pyro.set_rng_seed(1)
    assert got == pytest.approx(TraceMeanField_ELBO().loss(model, guide, x), rel=1e-6)


def test_arguments_reach_pyros_elbo_and_a_site_after_an_observed_one_is_checked():
    """Positional and keyword arguments are Pyro's; a latent site that follows an observed site is still checked, and
    the warning says all of this, word for word."""
    assert MeanFieldELBO(3).num_particles == 3 and MeanFieldELBO(num_particles=2).num_particles == 2
    mix = dist.MixtureSameFamily(dist.Categorical(torch.tensor([0.5, 0.5])),
                                 dist.Normal(torch.tensor([[-1.0], [1.0]]), 1.0).to_event(1))

    def model(x):
        pyro.sample("w", dist.Normal(0.0, 1.0), obs=torch.tensor(0.3))
        pyro.sample("u", dist.Normal(0.0, 1.0))  # closed form: no warning for it
        pyro.sample("z", mix)

    def guide(x):
        pyro.sample("u", dist.Normal(0.1, 1.0))
        pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))

    with pytest.warns(RuntimeWarning) as record:
        MeanFieldELBO().loss(model, guide, None)
    assert [str(w.message) for w in record] == [
        "meanfield: the KL of latent site 'z' (Independent against MixtureSameFamily) has no closed form; it is "
        "estimated by sampling, as objective 'elbo' does"]


def test_a_model_latent_without_a_guide_site_is_refused_by_name():
    """Pyro's mean-field ELBO fails on it with a bare KeyError; ours names the site and the objective that can."""
    from dgm_pyro.errors import DgmPyroError

    def model(x):
        pyro.sample("u", dist.Normal(0.0, 1.0))
        pyro.sample("v", dist.Normal(0.0, 1.0))

    def guide(x):
        pyro.sample("u", dist.Normal(0.0, 1.0))

    with pytest.raises(DgmPyroError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pyro's own "Found vars in model but not guide"
        MeanFieldELBO().loss(model, guide, None)
    assert str(info.value) == ("meanfield: model latent site 'v' has no guide site; the mean-field ELBO needs one "
                               "for every latent (objective 'elbo' draws it from its prior)")


def _programs():
    """A model/guide pair with what Pyro's estimator handles: a subsampled plate (scale), a masked latent, a latent
    whose KL has no closed form, an observed site between latents, and an auxiliary guide site."""
    w_loc = torch.nn.Parameter(torch.tensor([0.3, -0.2]))
    enc = torch.nn.Linear(3, 4)
    mix = dist.MixtureSameFamily(dist.Categorical(torch.tensor([0.4, 0.6])),
                                 dist.Normal(torch.tensor([[-1.0], [1.0]]), 1.0).to_event(1))
    mask = torch.tensor([True, False, True, True, False, True, True, True, False, True])

    def model(x):
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", 10, subsample_size=x.shape[0]) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            with poutine.mask(mask=mask[idx]):
                u = pyro.sample("u", dist.Normal(z[..., :1], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(torch.cat([z, u], -1) + w.sum(), 0.5).to_event(1), obs=x)
            pyro.sample("m", mix)

    def guide(x):
        pyro.module("enc", enc)  # param sites: SVI's loss_and_grads differentiates only traces that have them
        pyro.sample("w", dist.Normal(pyro.param("w_loc", w_loc), 0.5).to_event(1))
        with pyro.plate("data", 10, subsample_size=x.shape[0]):
            h = enc(x)
            pyro.sample("z", dist.Normal(h[..., :2], torch.nn.functional.softplus(h[..., 2:]) + 0.1).to_event(1))
            pyro.sample("a", dist.Normal(h[..., :1], 1.0).to_event(1), infer={"is_auxiliary": True})
            pyro.sample("u", dist.Normal(h[..., 1:2], 0.8).to_event(1))
            pyro.sample("m", dist.Normal(h[..., 3:], 1.0).to_event(1))

    return model, guide, [w_loc, *enc.parameters()]


@pytest.mark.parametrize("validation", [False, True])
@pytest.mark.parametrize("particles,vectorize", [(1, False), (3, False), (3, True)])
def test_values_and_gradients_are_pyros_with_and_without_validation(validation, particles, vectorize):
    """The lean path (validation off) and Pyro's own (on) give TraceMeanField_ELBO's loss and, bit for bit, its
    gradients; ``loss`` and SVI's ``loss_and_grads`` are Pyro's too. Subsample scale, mask, a sampled KL and an
    auxiliary site all count."""
    from pyro.util import set_rng_seed

    model, guide, params = _programs()
    x = torch.randn(4, 3)
    got, want = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pyro.enable_validation(validation)
        try:
            for elbo, out in ((MeanFieldELBO(particles, vectorize_particles=vectorize), got),
                              (TraceMeanField_ELBO(particles, vectorize_particles=vectorize), want)):
                set_rng_seed(3)
                loss = elbo.differentiable_loss(model, guide, x)
                out["grads"] = torch.autograd.grad(loss, params)
                out["loss"] = float(loss)
                set_rng_seed(4)
                out["value"] = elbo.loss(model, guide, x)
                for p in params:  # SVI's path (pyro.optim): gradients accumulated in .grad
                    p.grad = None
                set_rng_seed(5)
                out["svi_loss"] = elbo.loss_and_grads(model, guide, x)
                out["svi_grads"] = [p.grad.clone() for p in params]
        finally:
            pyro.enable_validation(True)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert got["value"] == pytest.approx(want["value"], rel=1e-6)
    assert got["svi_loss"] == pytest.approx(want["svi_loss"], rel=1e-6)
    for a, b in zip([*got["grads"], *got["svi_grads"]], [*want["grads"], *want["svi_grads"]]):
        assert torch.equal(a, b)


def test_the_lean_path_skips_the_latent_log_densities_but_not_the_observed():
    """With validation off the model trace carries log p only for observed sites and latents without a closed-form
    KL, and the guide trace none: what the speed-up is made of."""
    model, guide, _ = _programs()
    elbo = MeanFieldELBO()
    pyro.enable_validation(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_trace, guide_trace = elbo._get_trace(model, guide, (torch.randn(4, 3),), {})
            elbo._elbo_particle(model_trace, guide_trace)
    finally:
        pyro.enable_validation(True)
    with_log_prob = {n for n, s in model_trace.nodes.items() if s["type"] == "sample" and "log_prob" in s}
    assert with_log_prob == {"x", "m"}
    assert "score_parts" in guide_trace.nodes["m"] and "score_parts" in guide_trace.nodes["a"]
