"""Cauchy-Schwarz divergence: closed forms against quadrature and Monte Carlo, and its properties (P2.1)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import (
    Categorical,
    Independent,
    LowRankMultivariateNormal,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from dgm_pyro.divergences import cs_divergence, cs_divergence_mc, has_cs_closed_form, kl_divergence, log_inner_product, \
    register_cs

D = torch.float64


def t(*v):
    return torch.tensor(v, dtype=D)


def _trapezoid_cs(p, q, grid, cell):
    """D_CS from the three integrals by the trapezoidal rule on a uniform grid, in log space.

    For smooth, rapidly decaying integrands (Gaussians and their mixtures) the trapezoidal rule
    converges geometrically in the step size, so a step of a fraction of the narrowest scale gives
    near machine precision; the grid extends far past every component."""
    lp, lq = p.log_prob(grid), q.log_prob(grid)

    def log_int(a, b):
        return float(torch.logsumexp(a + b, 0)) + math.log(cell)

    return -log_int(lp, lq) + 0.5 * log_int(lp, lp) + 0.5 * log_int(lq, lq)


def _locs_scales(d):
    if isinstance(d, MixtureSameFamily):
        d = d.component_distribution
    return d.loc.flatten().tolist(), d.scale.flatten().tolist()


def quad_cs_1d(p, q):
    locs, scs = zip(*[_locs_scales(d) for d in (p, q)])
    locs, scs = sum(locs, []), sum(scs, [])
    lo = min(m - 40 * s for m, s in zip(locs, scs))
    hi = max(m + 40 * s for m, s in zip(locs, scs))
    h = min(scs) / 8
    grid = torch.arange(lo, hi, h, dtype=D)
    return _trapezoid_cs(p, q, grid, h)


def quad_cs_2d(p, q, box, h=0.01):
    axis = torch.arange(box[0], box[1], h, dtype=D)
    grid = torch.cartesian_prod(axis, axis)
    return _trapezoid_cs(p, q, grid, h * h)


NORMAL_PAIRS = [
    ((0.0, 1.0), (0.0, 1.0)),
    ((0.3, 0.7), (-1.0, 2.0)),
    ((0.0, 0.01), (0.0, 50.0)),  # narrow against wide
    ((-30.0, 1.0), (30.0, 2.0)),  # distant means
    ((5.0, 0.05), (5.1, 0.04)),
]


@pytest.mark.parametrize("a,b", NORMAL_PAIRS)
def test_normal_matches_quadrature_and_seed_formula(a, b):
    p, q = Normal(t(a[0]), t(a[1])), Normal(t(b[0]), t(b[1]))
    closed = float(cs_divergence(p, q))
    (m1, s1), (m2, s2) = a, b
    seed = 0.5 * math.log((s1**2 + s2**2) / (2 * s1 * s2)) + (m1 - m2) ** 2 / (2 * (s1**2 + s2**2))  # P2.1
    assert closed == pytest.approx(seed, rel=1e-12, abs=1e-12)
    assert closed == pytest.approx(quad_cs_1d(p, q), rel=1e-6, abs=1e-9)


def test_mixtures_match_quadrature_1d():
    p = MixtureSameFamily(Categorical(t(0.3, 0.7)), Normal(t(-1.0, 2.0), t(0.5, 1.0)))
    q = MixtureSameFamily(Categorical(t(0.5, 0.2, 0.3)), Normal(t(-1.0, 0.0, 3.0), t(0.05, 1.0, 20.0)))
    single = Normal(t(0.5), t(1.5))
    for a, b in [(p, q), (p, single), (single, q), (q, q)]:
        assert float(cs_divergence(a, b)) == pytest.approx(quad_cs_1d(a, b), rel=1e-6, abs=1e-9)


def _mvn(loc, tril):
    return MultivariateNormal(t(*loc), scale_tril=torch.tensor(tril, dtype=D))


def test_full_covariance_diagonal_and_mixture_match_quadrature_2d():
    full = _mvn([0.2, -0.3], [[1.0, 0.0], [0.6, 0.5]])
    diag = Independent(Normal(t(1.0, 0.5), t(0.7, 1.3)), 1)
    lowrank = LowRankMultivariateNormal(t(-0.5, 0.5), torch.tensor([[0.8], [-0.4]], dtype=D), t(0.3, 0.6))
    mix = MixtureSameFamily(Categorical(t(0.4, 0.6)),
                            MultivariateNormal(torch.tensor([[-1.0, 0.0], [1.0, 1.0]], dtype=D),
                                               scale_tril=torch.tensor([[[0.8, 0], [0.2, 0.6]], [[0.5, 0], [-0.1, 0.9]]], dtype=D)))
    for a, b in [(full, diag), (diag, full), (full, lowrank), (lowrank, diag), (mix, full), (mix, diag)]:
        assert float(cs_divergence(a, b)) == pytest.approx(quad_cs_2d(a, b, (-12, 12)), rel=1e-6, abs=1e-9)


def test_high_dimensional_against_monte_carlo():
    torch.manual_seed(0)
    d = 6
    A = torch.randn(d, d, dtype=D)
    full = MultivariateNormal(torch.randn(d, dtype=D) * 0.3, covariance_matrix=A @ A.T / d + 0.5 * torch.eye(d, dtype=D))
    diag = Independent(Normal(torch.zeros(d, dtype=D), torch.rand(d, dtype=D) + 0.7), 1)
    mix = MixtureSameFamily(Categorical(t(0.5, 0.5)), Independent(Normal(torch.randn(2, d, dtype=D), torch.ones(2, d, dtype=D)), 1))
    for a, b in [(full, diag), (mix, full)]:
        mc = float(cs_divergence_mc(a, b, num_samples=1_000_000))
        assert float(cs_divergence(a, b)) == pytest.approx(mc, abs=0.02)


def test_batched_like_kl_divergence():
    p = Independent(Normal(torch.randn(4, 3, dtype=D), torch.ones(4, 3, dtype=D)), 1)
    q = Independent(Normal(torch.zeros(3, dtype=D), torch.ones(3, dtype=D)), 1)
    out = cs_divergence(p, q)
    assert out.shape == kl_divergence(p, q).shape == (4,)
    for i in range(4):
        pi = Independent(Normal(p.base_dist.loc[i], p.base_dist.scale[i]), 1)
        assert torch.allclose(out[i], cs_divergence(pi, q))
    assert cs_divergence(Normal(torch.zeros(5, 2), torch.ones(5, 2)), Normal(0.0, 2.0)).shape == (5, 2)


@pytest.mark.parametrize("s1,s2,dm", [(1e-6, 1e6, 0.0), (1e6, 1e-6, 1e3), (1e-6, 1e-6, 1e4), (1.0, 1.0, 1e8)])
def test_extreme_scales_finite_with_finite_gradients(s1, s2, dm):
    loc = torch.tensor(0.0, dtype=D, requires_grad=True)
    log_s = torch.tensor(math.log(s1), dtype=D, requires_grad=True)
    p = Normal(loc, log_s.exp())
    q = Normal(torch.tensor(dm, dtype=D), torch.tensor(s2, dtype=D))
    d = cs_divergence(p, q)
    d.backward()
    assert torch.isfinite(d) and torch.isfinite(loc.grad) and torch.isfinite(log_s.grad)
    expected = 0.5 * math.log((s1**2 + s2**2) / (2 * s1 * s2)) + dm**2 / (2 * (s1**2 + s2**2))
    assert float(d.detach()) == pytest.approx(expected, rel=1e-9)
    full_p = MultivariateNormal(torch.zeros(2, dtype=D), torch.eye(2, dtype=D) * s1**2)
    full_q = MultivariateNormal(torch.full((2,), dm, dtype=D), torch.eye(2, dtype=D) * s2**2)
    assert float(cs_divergence(full_p, full_q)) == pytest.approx(2 * expected, rel=1e-6)


def test_mixture_counterexample_to_kl_bound():
    """D_CS <= KL holds for Gaussian pairs (P2.1) but not for mixtures: here D_CS(p||q) > KL(p||q)."""
    p = MixtureSameFamily(Categorical(t(0.2, 0.8)), Normal(t(1.8, -0.2), t(1.5, 0.8)))
    q = MixtureSameFamily(Categorical(t(0.4, 0.6)), Normal(t(1.3, -1.8), t(1.6, 0.25)))

    def kl(a, b):
        h = 1e-3
        x = torch.arange(-40, 40, h, dtype=D)
        la, lb = a.log_prob(x), b.log_prob(x)
        return float((la.exp() * (la - lb)).sum() * h)

    d = float(cs_divergence(p, q))
    assert d > kl(p, q) + 0.1


def test_no_closed_form_and_registry():
    from torch.distributions import Gamma

    g = Gamma(t(2.0), t(1.0))
    assert not has_cs_closed_form(g, Normal(t(0.0), t(1.0)))
    with pytest.raises(NotImplementedError, match="cs_divergence_mc"):
        cs_divergence(g, Normal(t(0.0), t(1.0)))

    class MyGamma(Gamma):
        pass

    @register_cs(MyGamma, MyGamma)
    def _(p, q):
        # INT Gamma(a1,b1) Gamma(a2,b2) = b1^a1 b2^a2 Gamma(a1+a2-1) / (G(a1) G(a2) (b1+b2)^(a1+a2-1))
        a = p.concentration + q.concentration - 1
        return (p.concentration * p.rate.log() + q.concentration * q.rate.log() + torch.lgamma(a)
                - torch.lgamma(p.concentration) - torch.lgamma(q.concentration) - a * (p.rate + q.rate).log())

    a, b = MyGamma(t(2.0), t(1.0)), MyGamma(t(3.5), t(0.7))
    torch.manual_seed(0)
    assert float(cs_divergence(a, b)) == pytest.approx(float(cs_divergence_mc(a, b, 2_000_000)), abs=0.01)


# ------------------------------------------------------------------------------------------ property tests
finite = dict(allow_nan=False, allow_infinity=False)
locs = st.floats(-20, 20, **finite)
scales = st.floats(0.05, 20, **finite)


def _gauss2(draw_vals):
    m1, m2, s1, s2, r = draw_vals
    L = torch.tensor([[s1, 0.0], [r * s2, s2]], dtype=D)
    return MultivariateNormal(t(m1, m2), scale_tril=L)


mvn2 = st.tuples(locs, locs, scales, scales, st.floats(-2, 2, **finite)).map(_gauss2)


@settings(max_examples=150, deadline=None)
@given(mvn2, mvn2)
def test_properties_gaussian(p, q):
    d_pq, d_qp = float(cs_divergence(p, q)), float(cs_divergence(q, p))
    # the formula itself, before cs_divergence's clamp at 0 (which only removes rounding below 0)
    raw = float(-log_inner_product(p, q) + 0.5 * log_inner_product(p, p) + 0.5 * log_inner_product(q, q))
    assert raw >= -1e-9 and d_pq == pytest.approx(max(raw, 0.0), abs=1e-12)
    assert d_pq == pytest.approx(d_qp, rel=1e-9, abs=1e-9)  # symmetric
    assert float(cs_divergence(p, p)) == pytest.approx(0.0, abs=1e-9)
    # D_CS <= min(KL(p||q), KL(q||p)) for Gaussians (P2.1)
    assert d_pq <= min(float(kl_divergence(p, q)), float(kl_divergence(q, p))) + 1e-8


@settings(max_examples=100, deadline=None)
@given(mvn2, mvn2, st.tuples(*[st.floats(-3, 3, **finite)] * 4).filter(lambda a: abs(a[0] * a[3] - a[1] * a[2]) > 0.1),
       st.tuples(locs, locs))
def test_affine_invariance(p, q, a, b):
    A = torch.tensor([[a[0], a[1]], [a[2], a[3]]], dtype=D)
    shift = t(*b)

    def push(d):
        return MultivariateNormal(d.loc @ A.T + shift, covariance_matrix=A @ d.covariance_matrix @ A.T)

    assert float(cs_divergence(push(p), push(q))) == pytest.approx(float(cs_divergence(p, q)), rel=1e-6, abs=1e-7)


@settings(max_examples=100, deadline=None)
@given(st.tuples(locs, scales, locs, scales), st.tuples(locs, scales, locs, scales))
def test_additive_over_independent_factors_and_zero_iff_equal(a, b):
    p = Independent(Normal(t(a[0], a[2]), t(a[1], a[3])), 1)
    q = Independent(Normal(t(b[0], b[2]), t(b[1], b[3])), 1)
    parts = sum(float(cs_divergence(Normal(t(a[2 * i]), t(a[2 * i + 1])), Normal(t(b[2 * i]), t(b[2 * i + 1])))) for i in range(2))
    assert float(cs_divergence(p, q)) == pytest.approx(parts, rel=1e-9, abs=1e-12)
    differs = not np.allclose(a, b, rtol=1e-3, atol=1e-3)
    if differs:
        assert float(cs_divergence(p, q)) > 0


def test_closed_form_exists_only_where_every_component_has_one():
    """has_cs_closed_form looks through Independent on both sides and through mixtures on either side: a mixture
    of Gammas has none against a Normal (either order), a mixture of Normals has one, and a pair where only one
    side is Independent is answered without error."""
    from torch.distributions import Gamma

    normal = Normal(t(0.0), t(1.0))
    gammas = MixtureSameFamily(Categorical(t(0.5, 0.5)), Gamma(t(2.0, 3.0), t(1.0, 2.0)))
    normals = MixtureSameFamily(Categorical(t(0.5, 0.5)), Normal(t(-1.0, 1.0), t(1.0, 0.5)))
    assert not has_cs_closed_form(gammas, normal) and not has_cs_closed_form(normal, gammas)
    assert has_cs_closed_form(normals, normal) and has_cs_closed_form(normal, normals)
    assert has_cs_closed_form(normals, normals) and not has_cs_closed_form(gammas, normals)
    diag = Independent(Normal(t(0.0, 1.0), t(1.0, 2.0)), 1)
    full = _mvn([0.2, -0.3], [[1.0, 0.0], [0.6, 0.5]])
    assert has_cs_closed_form(diag, full) and has_cs_closed_form(full, diag)
    assert not has_cs_closed_form(Independent(Gamma(t(2.0, 3.0), t(1.0, 2.0)), 1), diag)
    mixture_2d = MixtureSameFamily(Categorical(t(0.5, 0.5)), Independent(Normal(torch.zeros(2, 2, dtype=D),
                                                                                torch.ones(2, 2, dtype=D)), 1))
    assert has_cs_closed_form(diag, mixture_2d) and has_cs_closed_form(mixture_2d, diag)
    with pytest.raises(NotImplementedError, match="mixtures of Gamma have no closed-form Cauchy-Schwarz divergence"):
        cs_divergence(gammas_mix := MixtureSameFamily(Categorical(t(0.5, 0.5)), Gamma(t(2.0, 3.0), t(1.0, 2.0))),
                      normals)
    assert not has_cs_closed_form(gammas_mix, normals)


def test_mixture_of_low_rank_components_equals_the_same_mixture_of_full_covariances():
    """A low-rank-plus-diagonal Gaussian is a Gaussian with covariance F F^T + diag(d): mixtures of either
    parameterisation have the same inner products and divergences, to float precision."""
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(3, 2, dtype=D, generator=g)
    factor = torch.randn(3, 2, 2, dtype=D, generator=g) * 0.5  # rank 2
    diag = torch.rand(3, 2, dtype=D, generator=g) + 0.3
    weights = Categorical(t(0.2, 0.5, 0.3))
    lowrank = MixtureSameFamily(weights, LowRankMultivariateNormal(loc, factor, diag))
    full = MixtureSameFamily(weights, MultivariateNormal(loc, covariance_matrix=factor @ factor.mT + torch.diag_embed(diag)))
    other = MixtureSameFamily(Categorical(t(0.6, 0.4)), MultivariateNormal(loc[:2] + 0.5, scale_tril=torch.eye(2, dtype=D)
                                                                            .expand(2, 2, 2)))
    for b in (other, full, _mvn([0.2, -0.3], [[1.0, 0.0], [0.6, 0.5]])):
        torch.testing.assert_close(log_inner_product(lowrank, b), log_inner_product(full, b), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(cs_divergence(b, lowrank), cs_divergence(b, full), rtol=1e-10, atol=1e-10)
    assert float(cs_divergence(lowrank, other)) > 0.1


def test_monte_carlo_divergence_is_differentiable_like_the_closed_form():
    """cs_divergence_mc (the CS-ELBO's fallback for pairs without a closed form) carries gradients through
    reparameterised draws of both arguments: its gradient with respect to both locations and scales matches
    the closed form's within Monte Carlo error (200 000 draws)."""
    torch.manual_seed(0)
    params = t(0.3, 0.8, -0.4, 1.5).requires_grad_(True)

    def pair():
        return Normal(params[0], params[1]), Normal(params[2], params[3])

    (exact,) = torch.autograd.grad(cs_divergence(*pair()), params)
    (mc,) = torch.autograd.grad(cs_divergence_mc(*pair(), num_samples=200_000), params)
    assert float(exact.abs().min()) > 0.05
    torch.testing.assert_close(mc, exact, atol=0.03, rtol=0.05)


def test_a_registration_gets_its_arguments_in_its_own_order():
    """register_cs(A, B) registers fn(a, b); log_inner_product(b, a) calls it as fn(a, b) (the integral is
    symmetric), and (a, b) as it is."""
    from torch.distributions import Gamma

    class A(Gamma):
        pass

    class B(Normal):
        pass

    seen = []

    @register_cs(A, B)
    def _(p, q):
        seen.append((type(p), type(q)))
        return torch.zeros(())

    a, b = A(t(2.0), t(1.0)), B(t(0.0), t(1.0))
    log_inner_product(b, a)
    log_inner_product(a, b)
    assert seen == [(A, B), (A, B)]
    assert has_cs_closed_form(a, b) and has_cs_closed_form(b, a)


def test_pairs_without_a_closed_form_are_named_and_refused():
    """A full-covariance Gaussian with an Independent of something other than one Normal event dimension has no
    closed form: has_cs_closed_form says so (the CS-ELBO then falls back to Monte Carlo) and the divergence names
    both sides."""
    from torch.distributions import Gamma

    full = _mvn([0.2, -0.3], [[1.0, 0.0], [0.6, 0.5]])
    gammas = Independent(Gamma(t(2.0, 3.0), t(1.0, 2.0)), 1)
    normal_2d = Independent(Normal(torch.zeros(2, 2, dtype=D), torch.ones(2, 2, dtype=D)), 2)
    for other, name in ((gammas, r"Independent\(Gamma, 1\)"), (normal_2d, r"Independent\(Normal, 2\)")):
        assert not has_cs_closed_form(full, other) and not has_cs_closed_form(other, full)
        with pytest.raises(NotImplementedError, match=f"multivariate normal and {name}; use cs_divergence_mc"):
            cs_divergence(full, other)
    with pytest.raises(NotImplementedError, match="for Gamma and Normal; use cs_divergence_mc"):
        log_inner_product(Gamma(t(2.0), t(1.0)), Normal(t(0.0), t(1.0)))


def test_batched_mixtures_against_batched_gaussians_item_by_item():
    """A batch of 3 mixtures against a batch of 3 Gaussians (either order) equals the 3 pairs taken one at a time."""
    g = torch.Generator().manual_seed(1)
    w = torch.rand(3, 2, dtype=D, generator=g)
    loc, scale = torch.randn(3, 2, dtype=D, generator=g), torch.rand(3, 2, dtype=D, generator=g) + 0.4
    mix = MixtureSameFamily(Categorical(w), Normal(loc, scale))
    gauss = Normal(torch.randn(3, dtype=D, generator=g), torch.rand(3, dtype=D, generator=g) + 0.4)
    both = cs_divergence(mix, gauss)
    assert both.shape == (3,)
    for i in range(3):
        one = MixtureSameFamily(Categorical(w[i]), Normal(loc[i], scale[i]))
        single = Normal(gauss.loc[i], gauss.scale[i])
        assert float(both[i]) == pytest.approx(float(cs_divergence(one, single)), rel=1e-12)
        assert float(cs_divergence(gauss, mix)[i]) == pytest.approx(float(cs_divergence(single, one)), rel=1e-12)
        grid = torch.linspace(-15, 15, 30001, dtype=D)
        assert float(both[i]) == pytest.approx(_trapezoid_cs(one, single, grid, 30 / 30000), rel=1e-6, abs=1e-9)


def test_univariate_base_names_what_is_not_factorised():
    from dgm_pyro.divergences import univariate_base

    assert isinstance(univariate_base(Independent(Normal(t(0.0, 1.0), t(1.0, 1.0)), 1)), Normal)
    with pytest.raises(ValueError, match="MultivariateNormal is not factorised over its dimensions"):
        univariate_base(_mvn([0.0, 0.0], [[1.0, 0.0], [0.5, 1.0]]))


def test_monte_carlo_divergence_of_a_distribution_without_reparameterised_draws():
    """A q without rsample is sampled with sample(): the estimate still matches the closed form (500 000 draws)."""

    class NoRsample(Normal):
        has_rsample = False

        def rsample(self, sample_shape=torch.Size()):
            raise NotImplementedError

    torch.manual_seed(0)
    p, q = Normal(t(0.3), t(0.8)), NoRsample(t(-0.4), t(1.5))
    assert float(cs_divergence_mc(p, q, num_samples=500_000)) == pytest.approx(float(cs_divergence(p, q)), abs=0.01)
    assert float(cs_divergence_mc(q, p, num_samples=500_000)) == pytest.approx(float(cs_divergence(q, p)), abs=0.01)
