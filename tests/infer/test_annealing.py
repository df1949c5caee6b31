"""KL annealing: the latent-only scale handler with Pyro's and our objectives, and the schedules."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from dgm_pyro.divergences import cs_divergence
from dgm_pyro.errors import DgmPyroError
from dgm_pyro.infer import (
    CSELBO,
    Annealing,
    Constant,
    Cyclical,
    FreeBitsELBO,
    Linear,
    Sigmoid,
    log_evidence,
    parse_schedule,
    scale_latents,
)

X = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
M = torch.tensor([0.1, -0.5, 1.0], dtype=torch.float64)
S = torch.tensor([0.7, 0.9, 0.5], dtype=torch.float64)


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(M, S))


def _loss(objective, beta, seed=3):
    pyro.set_rng_seed(seed)
    with scale_latents(scale=beta):
        return objective.loss(model, guide, X)


def _terms(seed=3):
    """log p(x|z), log p(z), log q(z) at the guide sample drawn with this seed."""
    pyro.set_rng_seed(seed)
    z = dist.Normal(M, S).sample()
    return (dist.Normal(z, 1.0).log_prob(X).sum(), dist.Normal(0.0, 1.0).log_prob(z).sum(),
            dist.Normal(M, S).log_prob(z).sum())


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_trace_elbo_is_annealed_on_latent_terms_only(beta):
    rec, lp, lq = _terms()
    assert _loss(Trace_ELBO(), beta) == pytest.approx(-float(rec + beta * (lp - lq)), rel=1e-10)


@pytest.mark.parametrize("make,divergence", [
    (TraceMeanField_ELBO, lambda: torch.distributions.kl_divergence(dist.Normal(M, S), dist.Normal(0.0, 1.0))),
    (lambda: CSELBO(lam=1.5), lambda: 1.5 * cs_divergence(dist.Normal(M, S),
                                                          dist.Normal(torch.zeros_like(M), torch.ones_like(M)))),
])
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_closed_form_objectives_are_annealed(make, divergence, beta):
    rec, _, _ = _terms()
    assert _loss(make(), beta) == pytest.approx(-float(rec - beta * divergence().sum()), rel=1e-6)


def test_beta_one_equals_the_plain_objective_and_zero_drops_the_latent_terms():
    for objective in (Trace_ELBO(), TraceMeanField_ELBO(), CSELBO(lam=2.0), FreeBitsELBO(lam=0.3)):
        pyro.set_rng_seed(3)
        plain = objective.loss(model, guide, X)
        assert _loss(objective, 1.0) == pytest.approx(plain, rel=1e-12), objective
    rec, _, _ = _terms()
    for objective in (Trace_ELBO(), TraceMeanField_ELBO(), CSELBO(lam=2.0), FreeBitsELBO(lam=0.3)):
        assert _loss(objective, 0.0) == pytest.approx(-float(rec), rel=1e-10), objective


def test_beta_zero_gives_the_encoder_no_regulariser_gradient():
    m = M.clone().requires_grad_()

    def g(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(m, S))

    def latent_only(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))

    with scale_latents(scale=0.0):
        loss = CSELBO().differentiable_loss(latent_only, g, X)
    assert float(loss.detach()) == 0.0
    (grad,) = torch.autograd.grad(loss, m, allow_unused=True, materialize_grads=True)
    assert torch.all(grad == 0)


def test_composes_with_subsampling_scale_and_never_reaches_the_evidence():
    rec, lp, lq = _terms()
    pyro.set_rng_seed(3)
    with scale_latents(scale=0.5):
        got = Trace_ELBO().loss(poutine.scale(model, scale=4.0), poutine.scale(guide, scale=4.0), X)
    assert got == pytest.approx(-4 * float(rec + 0.5 * (lp - lq)), rel=1e-10)
    pyro.set_rng_seed(0)
    plain = log_evidence(model, guide, X, num_particles=200, diagnostics=False).log_evidence
    pyro.set_rng_seed(0)
    with scale_latents(scale=0.1):
        annealed = log_evidence(model, guide, X, num_particles=200, diagnostics=False).log_evidence
    torch.testing.assert_close(plain, annealed)


def test_handler_wraps_programs_and_rejects_bad_beta():
    tr = poutine.trace(scale_latents(model, scale=0.25)).get_trace(X)
    assert tr.nodes["z"]["scale"] == 0.25 and tr.nodes["x"]["scale"] == 1.0
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError):
            scale_latents(scale=bad)


def test_cyclical_has_the_values_fu_et_al_define():
    # T = 100 iterations, M = 4 cycles, R = 0.5: each cycle of 25 iterations rises over its first 12.5
    c = Cyclical(total_steps=100, cycles=4, ratio=0.5)
    assert [c(t) for t in (0, 1, 12, 13, 24, 25, 26, 99)] == pytest.approx(
        [0.0, 0.08, 0.96, 1.0, 1.0, 0.0, 0.08, 1.0])
    # T not divisible by M (Fu et al.'s ceil): T = 10, M = 3, period 10/3, ceil 4
    c = Cyclical(total_steps=10, cycles=3, ratio=0.5)
    assert [c(t) for t in range(10)] == pytest.approx([0.0, 0.6, 1.0, 1.0, 0.0, 0.6, 1.0, 1.0, 0.0, 0.6])
    # the definition, literally: i = t + 1, tau = mod(i - 1, ceil(T / M)) / (T / M), beta = tau / R if tau <= R else 1
    T, M_, R = 37, 5, 0.3
    c = Cyclical(total_steps=T, cycles=M_, ratio=R)
    for i in range(1, T + 1):
        tau = ((i - 1) % math.ceil(T / M_)) / (T / M_)
        assert c(i - 1) == pytest.approx(tau / R if tau <= R else 1.0)
    assert Cyclical(total_steps=100, cycles=4, ratio=0.5).settled_step == 75 + 13


def test_linear_sigmoid_constant():
    lin = Linear(start=0.2, end=1.0, steps=10)
    assert [lin(t) for t in (0, 5, 10, 50)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    sig = Sigmoid(steps=100, steepness=10)
    values = [sig(t) for t in range(0, 101)]
    assert values[0] == pytest.approx(0.0, abs=1e-12) and values[100] == pytest.approx(1.0)
    assert values[50] == pytest.approx(0.5) and all(a < b for a, b in zip(values, values[1:]))
    assert sig(1000) == pytest.approx(1.0)
    assert Constant(0.5)(123) == 0.5 and Constant(0.5).settled_step == 0


def test_parse_schedule():
    assert parse_schedule("none", 100) is None
    assert repr(parse_schedule("constant:0.2", 100)) == "Constant(0.2)"
    assert repr(parse_schedule("linear:0:500", 100)) == "Linear(start=0, end=1, steps=500)"
    assert repr(parse_schedule("cyclical:4:0.5", 1000)) == "Cyclical(total_steps=1000, cycles=4, ratio=0.5)"
    assert repr(parse_schedule("sigmoid:300", 100)) == "Sigmoid(steps=300, steepness=10, start=0, end=1)"
    for bad in ("bogus", "linear:0", "linear:a:b", "cyclical:4", "cyclical:0:0.5", "cyclical:4:1.5",
                "constant:-1", "sigmoid:0", "linear:0:2.5", "none:1"):
        with pytest.raises(DgmPyroError):
            parse_schedule(bad, 100)
    with pytest.raises(DgmPyroError, match="cycles"):
        parse_schedule("cyclical:500:0.5", 100)


def test_annealing_state_round_trip():
    a = Annealing(Linear(0.0, 1.0, 10))
    for _ in range(4):
        a.step()
    assert a.beta == pytest.approx(0.4) and not a.settled
    b = Annealing(Linear(0.0, 1.0, 10))
    b.load_state_dict(a.state_dict())
    assert b.beta == a.beta and b.step_count == 4
    with pytest.raises(DgmPyroError, match="annealing state"):
        Annealing(Linear(0.0, 1.0, 20)).load_state_dict(a.state_dict())
    with a.handler():
        tr = poutine.trace(model).get_trace(X)
    assert tr.nodes["z"]["scale"] == pytest.approx(0.4)
