import pyro
import pyro.distributions as dist
import pytest


@pytest.fixture
def discrete_pair():
    """A model and guide with a discrete latent c ~ Bernoulli(0.5), x ~ N(c, 1): for the refusals of
    estimators that need continuous, reparameterisable latents."""
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.5))

    return model, guide
