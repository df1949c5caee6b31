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


# ---------------------------------------------------------------- every schedule's defaults, values and refusals


def test_schedule_defaults_and_reprs():
    from dgm_pyro.infer.annealing import Constant, Cyclical, Linear, Sigmoid

    assert repr(Constant()) == "Constant(1)" and Constant().settled_step == 0
    assert repr(Linear()) == "Linear(start=0, end=1, steps=1000)" and Linear().settled_step == 1000
    assert repr(Cyclical(100)) == "Cyclical(total_steps=100, cycles=4, ratio=0.5)"
    assert repr(Sigmoid()) == "Sigmoid(steps=1000, steepness=10, start=0, end=1)" and Sigmoid().settled_step == 1000


def test_sigmoid_between_any_two_ends_by_hand():
    import math

    from dgm_pyro.infer.annealing import Sigmoid

    sched = Sigmoid(steps=10, steepness=4.0, start=0.5, end=2.0)

    def s(u):
        return 1 / (1 + math.exp(-4.0 * (u - 0.5)))

    for t in (0, 3, 5, 10, 25):
        u = min(t / 10, 1.0)
        assert sched(t) == pytest.approx(0.5 + 1.5 * (s(u) - s(0)) / (s(1) - s(0)), abs=1e-12)
    assert sched(0) == pytest.approx(0.5) and sched(10) == pytest.approx(2.0) and sched(99) == pytest.approx(2.0)
    assert Sigmoid(steps=10, start=1.0, end=0.0)(10) == pytest.approx(0.0)  # annealing down works too


@pytest.mark.parametrize("make, message", [
    (lambda S: S.Constant(-0.5), "Constant: beta must be finite and >= 0, got -0.5"),
    (lambda S: S.Constant(float("inf")), "Constant: beta must be finite and >= 0, got inf"),
    (lambda S: S.Linear(steps=0), "Linear: steps must be >= 1, got 0"),
    (lambda S: S.Linear(start=-1.0), "Linear: start and end must be finite and >= 0, got -1.0, 1.0"),
    (lambda S: S.Linear(end=float("nan")), "Linear: start and end must be finite and >= 0, got 0.0, nan"),
    (lambda S: S.Cyclical(0), "Cyclical: need 1 <= cycles <= total_steps, got cycles=4, total_steps=0"),
    (lambda S: S.Cyclical(10, cycles=0), "Cyclical: need 1 <= cycles <= total_steps, got cycles=0, total_steps=10"),
    (lambda S: S.Cyclical(3, cycles=4), "Cyclical: need 1 <= cycles <= total_steps, got cycles=4, total_steps=3"),
    (lambda S: S.Cyclical(10, ratio=0.0), "Cyclical: ratio must be in (0, 1], got 0.0"),
    (lambda S: S.Cyclical(10, ratio=1.5), "Cyclical: ratio must be in (0, 1], got 1.5"),
    (lambda S: S.Sigmoid(steps=0), "Sigmoid: need steps >= 1 and steepness > 0, got 0, 10.0"),
    (lambda S: S.Sigmoid(steepness=0.0), "Sigmoid: need steps >= 1 and steepness > 0, got 1000, 0.0"),
    (lambda S: S.Sigmoid(end=-2.0), "Sigmoid: start and end must be finite and >= 0, got 0.0, -2.0"),
])
def test_schedules_refuse_bad_settings_with_their_values(make, message):
    import re

    from dgm_pyro.infer import annealing

    with pytest.raises(DgmPyroError, match="^" + re.escape(message) + "$"):
        make(annealing)


def test_boundary_settings_are_accepted():
    from dgm_pyro.infer.annealing import Constant, Cyclical, Linear, Sigmoid

    assert Constant(0.0)(5) == 0.0 and Linear(start=0.0, end=0.0, steps=1)(0) == 0.0
    assert Cyclical(4, cycles=4, ratio=1.0)(0) == 0.0 and Cyclical(1, cycles=1)(0) == 0.0
    assert Sigmoid(steps=1, start=0.0, end=0.0)(1) == 0.0


@pytest.mark.parametrize("spec, expected", [
    ("none", "None"),
    ("constant:0.25", "Constant(0.25)"),
    ("constant:2", "Constant(2)"),
    ("linear:0.1:500", "Linear(start=0.1, end=1, steps=500)"),
    ("linear:0:1e3", "Linear(start=0, end=1, steps=1000)"),
    ("cyclical:3:0.25", "Cyclical(total_steps=120, cycles=3, ratio=0.25)"),
    ("sigmoid:300", "Sigmoid(steps=300, steepness=10, start=0, end=1)"),
    ("sigmoid:300:4.5", "Sigmoid(steps=300, steepness=4.5, start=0, end=1)"),
])
def test_parse_schedule_forms(spec, expected):
    from dgm_pyro.infer.annealing import parse_schedule

    assert repr(parse_schedule(spec, total_steps=120)) == expected


USAGE = "none, constant:BETA, linear:START:STEPS, cyclical:CYCLES:RATIO, sigmoid:STEPS[:STEEPNESS]"


@pytest.mark.parametrize("spec, message", [
    ("cosine:3", f"unknown annealing schedule 'cosine:3'; use {USAGE}"),
    ("none:1", f"unknown annealing schedule 'none:1'; use {USAGE}"),
    ("", f"unknown annealing schedule ''; use {USAGE}"),
    ("constant", "bad annealing schedule 'constant'; expected constant:BETA"),
    ("constant:a", "bad annealing schedule 'constant:a'; expected constant:BETA"),
    ("linear:0.5", "bad annealing schedule 'linear:0.5'; expected linear:START:STEPS"),
    ("linear:0:2.5", "bad annealing schedule 'linear:0:2.5'; expected linear:START:STEPS"),
    ("cyclical:2.5:0.5", "bad annealing schedule 'cyclical:2.5:0.5'; expected cyclical:CYCLES:RATIO"),
    ("cyclical:2", "bad annealing schedule 'cyclical:2'; expected cyclical:CYCLES:RATIO"),
    ("sigmoid", "bad annealing schedule 'sigmoid'; expected sigmoid:STEPS[:STEEPNESS]"),
    ("sigmoid:1:2:3", "bad annealing schedule 'sigmoid:1:2:3'; expected sigmoid:STEPS[:STEEPNESS]"),
    ("sigmoid:10:x", "bad annealing schedule 'sigmoid:10:x'; expected sigmoid:STEPS[:STEEPNESS]"),
])
def test_parse_schedule_refusals_name_the_form(spec, message):
    import re

    from dgm_pyro.infer.annealing import parse_schedule

    with pytest.raises(DgmPyroError, match="^" + re.escape(message) + "$"):
        parse_schedule(spec, total_steps=100)


def test_annealing_state_from_another_schedule_is_refused_naming_both():
    from dgm_pyro.infer.annealing import Annealing, Constant, Linear

    a = Annealing(Linear(steps=10), step=3)
    assert a.state_dict() == {"step": 3, "schedule": "Linear(start=0, end=1, steps=10)"}
    b = Annealing(Linear(steps=10))
    b.load_state_dict(a.state_dict())
    assert b.step_count == 3 and b.beta == pytest.approx(0.3)
    with pytest.raises(DgmPyroError, match=r"^annealing state is for Linear\(start=0, end=1, steps=10\), not "
                                           r"Constant\(0\.5\)$"):
        Annealing(Constant(0.5)).load_state_dict(a.state_dict())


def test_scale_latents_defaults_to_one_and_infinite_ends_are_refused():
    from dgm_pyro.infer.annealing import Linear, scale_latents

    import pyro.poutine as poutine

    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    assert scale_latents().scale == 1.0
    assert poutine.trace(scale_latents(model)).get_trace().nodes["z"]["scale"] == 1.0
    with pytest.raises(DgmPyroError, match=r"^Linear: start and end must be finite and >= 0, got inf, 1.0$"):
        Linear(start=float("inf"))


def test_a_gentle_sigmoid_is_allowed():
    from dgm_pyro.infer.annealing import Sigmoid

    assert Sigmoid(steps=10, steepness=0.5)(10) == pytest.approx(1.0)
