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


@pytest.fixture
def latent_pair():
    """``make(prior, proposal, noise)``: a model z ~ prior, x ~ N(z, noise^2 I) per row of x (plate ``obs``) and a
    guide z ~ proposal(x): the smallest pair on which an objective's latent term can be checked by hand."""
    def make(prior, proposal, noise=1.0):
        def model(x):
            with pyro.plate("obs", x.shape[0]):
                z = pyro.sample("z", prior)
                pyro.sample("x", dist.Normal(z, noise).to_event(1), obs=x)

        def guide(x):
            with pyro.plate("obs", x.shape[0]):
                pyro.sample("z", proposal(x))

        return model, guide

    return make


@pytest.fixture
def normal_pair():
    """``make(n, noise, a, b)``: z ~ N(0, 1), x ~ N(z, noise^2) for n datapoints (plate ``data``, data by keyword
    ``x``), and the guide z ~ N(a x, b^2); log p(x) = N(x; 0, 1 + noise^2) exactly."""
    def make(n, noise=1.0, a=0.5, b=0.8):
        def model(x=None):
            with pyro.plate("data", n):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.sample("x", dist.Normal(z, noise), obs=x)

        def guide(x=None):
            with pyro.plate("data", n):
                pyro.sample("z", dist.Normal(a * x, b))

        return model, guide

    return make


@pytest.fixture
def grid_pair():
    """A model and guide over a 2 x 3 grid of datapoints v (plates ``rows``, dim -2, outside ``cols``, dim -1: the
    names' alphabetical order is not the plates' order): z ~ N(0, 1), v ~ N(z, 1), guide z ~ N(v / 2, 0.8^2)."""
    def model(v):
        with pyro.plate("cols", 3, dim=-1), pyro.plate("rows", 2, dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("v", dist.Normal(z, 1.0), obs=v)

    def guide(v):
        with pyro.plate("cols", 3, dim=-1), pyro.plate("rows", 2, dim=-2):
            pyro.sample("z", dist.Normal(0.5 * v, 0.8))

    return model, guide
