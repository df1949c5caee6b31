"""MeanFieldELBO: Pyro's TraceMeanField_ELBO, with a warning where a KL is not closed-form."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
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
