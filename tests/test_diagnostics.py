"""Posterior-collapse diagnostics on constructed cases with known answers (seed P3.1, P3.3)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from dgm_pyro.diagnostics import (
    active_units,
    aggregate_kl,
    collapse_report,
    kl_per_dimension,
    mutual_information,
    mutual_information_minibatch,
)

D = torch.float64


def diag(loc, scale):
    return Independent(Normal(loc, scale), 1)


def test_encoder_that_returns_the_prior_has_no_information():
    n, d = 50, 3
    q = diag(torch.zeros(n, d, dtype=D), torch.ones(n, d, dtype=D))
    prior = diag(torch.zeros(d, dtype=D), torch.ones(d, dtype=D))
    # zero up to the rounding of log-sum-exp over identical terms
    assert mutual_information(q, num_samples=20) == pytest.approx(0.0, abs=1e-12)
    assert mutual_information_minibatch(q, batch_size=10) == pytest.approx(0.0, abs=1e-12)
    assert aggregate_kl(q, prior, num_samples=20) == pytest.approx(0.0, abs=1e-12)
    assert active_units(q)[0] == 0
    assert torch.all(kl_per_dimension(q, prior) == 0)


def test_narrow_far_apart_posteriors_carry_log_n():
    n, d = 64, 2
    q = diag(10.0 * torch.arange(n, dtype=D)[:, None].expand(n, d), torch.full((n, d), 0.01, dtype=D))
    assert mutual_information(q, num_samples=5) == pytest.approx(math.log(n), abs=1e-6)
    assert active_units(q)[0] == d
    # the minibatch estimator saturates at log B, never above
    for b in (1, 8, 64):
        assert mutual_information_minibatch(q, batch_size=b) == pytest.approx(math.log(b), abs=1e-6)
    # with labels, the information left given y is log(group size)
    groups = torch.arange(n) % 4
    assert mutual_information(q, num_samples=5, groups=groups) == pytest.approx(math.log(n // 4), abs=1e-6)


def _random_posteriors(n=300, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(n, d, generator=g, dtype=D) * torch.tensor([1.5, 0.5, 0.05], dtype=D)
    scale = 0.3 + 0.7 * torch.rand(n, d, generator=g, dtype=D)
    return diag(loc, scale)


def _quadrature_mi_and_aggregate_kl(loc, scale, prior_scale=1.0):
    """Exact I(x; z) and KL(q(z) || p(z)) for 1-D posteriors N(loc_n, scale_n^2) and p = N(0, prior_scale^2), by
    numerical quadrature of the aggregate posterior q(z) = (1/N) sum_n q(z|x_n) on a fine grid."""
    grid = torch.linspace(-15, 15, 30_001, dtype=D)
    dz = grid[1] - grid[0]
    log_qn = Normal(loc[:, None], scale[:, None]).log_prob(grid)  # (N, G)
    log_agg = torch.logsumexp(log_qn, 0) - math.log(len(loc))
    mi = float(((log_qn - log_agg) * log_qn.exp()).sum(1).mean() * dz)
    agg = float(((log_agg - Normal(0.0, prior_scale).log_prob(grid)) * log_agg.exp()).sum() * dz)
    return mi, agg


def test_mutual_information_and_aggregate_kl_against_quadrature():
    """The estimators against the exact aggregate posterior (a mixture of the N posteriors), each with its own
    draws; and the P3.3 identity E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z)) between the exact values."""
    n = 300
    g = torch.Generator().manual_seed(0)
    loc, scale = 1.5 * torch.randn(n, generator=g, dtype=D), 0.3 + 0.7 * torch.rand(n, generator=g, dtype=D)
    q, prior = diag(loc[:, None], scale[:, None]), diag(torch.zeros(1, dtype=D), torch.ones(1, dtype=D))
    mi_exact, agg_exact = _quadrature_mi_and_aggregate_kl(loc, scale)
    expected_kl = float(kl_divergence(q, prior).mean())
    assert mi_exact + agg_exact == pytest.approx(expected_kl, abs=1e-6)  # P3.3, exactly
    assert 0.3 < mi_exact < math.log(n) and agg_exact > 0.05  # neither term is trivial here
    s = 400
    z = q.sample((s,))
    se = float((q.log_prob(z) - prior.log_prob(z)).std() / math.sqrt(s * n))  # a generous scale for both errors
    assert mutual_information(q, num_samples=s, seed=1) == pytest.approx(mi_exact, abs=4 * se)
    assert aggregate_kl(q, prior, num_samples=s, seed=2) == pytest.approx(agg_exact, abs=4 * se)
    assert float(kl_per_dimension(q, prior).sum()) == pytest.approx(expected_kl, rel=1e-12)


def test_conditional_decomposition_with_groups_and_a_conditional_prior():
    """E[KL(q(z|x,y) || p(z|y))] = I(x; z | y) + E_y KL(q(z|y) || p(z|y)) with one prior per class."""
    n, d = 300, 3
    q = _random_posteriors(n, d, seed=2)
    groups = torch.arange(n) % 3
    prior_loc = torch.tensor([[-1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [1.0, -0.5, 0.0]], dtype=D)[groups]
    prior = diag(prior_loc, torch.full((n, d), 0.8, dtype=D))
    s = 200
    # independent draws for the two terms, so that log q(z) does not cancel between them
    mi = mutual_information(q, num_samples=s, groups=groups, seed=3)
    agg = aggregate_kl(q, prior, num_samples=s, groups=groups, seed=4)
    z = q.sample((s,))
    se = float((q.log_prob(z) - prior.log_prob(z)).std() / math.sqrt(s * n))
    assert abs(mi + agg - float(kl_divergence(q, prior).mean())) < 6 * se
    assert mi < math.log(n // 3)


def test_active_units_threshold_and_conditional_prior():
    n = 1000
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(n, 2, generator=g, dtype=D) * torch.tensor([0.05, 0.2], dtype=D)  # Var 0.0025, 0.04
    q = diag(loc, torch.ones(n, 2, dtype=D))
    count, activity = active_units(q)
    assert count == 1 and activity[0] < 0.01 < activity[1]
    # posterior means that only follow the conditional prior's means are not active
    prior = diag(loc - 0.001, torch.ones(n, 2, dtype=D))
    assert active_units(q, prior=prior)[0] == 0
    assert active_units(q, threshold=0.001)[0] == 2


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"posteriors must have batch shape \(N,\) and event shape \(d,\), got \(5,\) "
                                         r"and \(\)"):
        mutual_information(Normal(torch.zeros(5), 1.0))
    q = _random_posteriors(10)
    with pytest.raises(ValueError, match=r"groups must have shape \(10,\), got \(3,\)"):
        mutual_information(q, groups=torch.zeros(3))
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        mutual_information(q, num_samples=0)
    assert math.isfinite(mutual_information(q, num_samples=1))  # one draw per datapoint is allowed
    mvn = dist.MultivariateNormal(torch.zeros(10, 3), torch.eye(3))
    with pytest.raises(ValueError, match="not factorised"):
        kl_per_dimension(mvn, mvn)


def test_collapse_report_on_a_user_model():
    n, d = 200, 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, 0.0]])  # only the first latent dimension matters

    def model(x):
        with pyro.plate("obs", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T, 0.5).to_event(1), obs=x)

    def guide(x):
        # the exact posterior of the first dimension (precision 1 + 1.25/0.25 = 6), the prior for the second
        loc = torch.stack([(x @ w[:, 0]) / 0.25 / 6.0, torch.zeros(x.shape[0])], -1)
        scale = torch.tensor([6.0**-0.5, 1.0]).expand(x.shape[0], d)
        with pyro.plate("obs", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    report = collapse_report(model, guide, x, particles=200, num_samples=20)
    assert report.active_units == 1 and report.latent_dim == 2
    assert report.kl_per_dimension[1] == pytest.approx(0.0, abs=1e-7) and report.kl_per_dimension[0] > 0.5
    assert report.mutual_information <= math.log(n) and report.mutual_information_minibatch <= math.log(100)
    # the exact-posterior guide makes every importance weight equal to p(x): NLL = -mean log p(x)
    cov = w @ w.T + 0.25 * torch.eye(3)
    exact = -float(dist.MultivariateNormal(torch.zeros(3), cov).log_prob(x).mean())
    assert report.nll == pytest.approx(exact, abs=1e-3)
    assert report.to_dict()["active_units"] == 1 and "active units" in str(report)


def test_errors_name_the_latent_sites_and_how_to_fix_the_layout():
    """A wrong site name lists the latent sites and their shapes; a latent laid out with a nested plate gets the
    .to_event hint (the collapse measures need one plate over the datapoints and a vector event)."""
    x = torch.randn(5, 3)

    def model(x):
        with pyro.plate("obs", 5, dim=-2), pyro.plate("dims", 2, dim=-1):
            z = pyro.sample("zz", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(2), obs=x)

    def guide(x):
        with pyro.plate("obs", 5, dim=-2), pyro.plate("dims", 2, dim=-1):
            pyro.sample("zz", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"no latent site 'z'.*'zz' \(batch \(5, 2\), event \(\)\) \(guide\)"):
        collapse_report(model, guide, x, particles=0)
    with pytest.raises(ValueError, match=r"batch shape \(5, 2\).*to_event\(1\) inside the data plate only"):
        collapse_report(model, guide, x, site="zz", particles=0)


def test_report_text_and_json_are_the_numbers_they_name():
    """The printed table and the JSON of a report with known numbers, exactly (the CLI prints these)."""
    import json

    from dgm_pyro.diagnostics import CollapseReport

    fields = dict(num_datapoints=300, latent_dim=3, active_units=2, activity=[0.5, 0.02, 0.001], kl=4.25,
                  kl_per_dimension=[3.0, 1.25, 0.0], mutual_information=2.5, mutual_information_ceiling=math.log(300),
                  mutual_information_minibatch=1.75, minibatch_size=100, aggregate_kl=0.125)
    plain = CollapseReport(**fields)
    assert str(plain).splitlines() == [
        "  datapoints N                           300",
        "  NLL, importance-sampled                -",
        "  -ELBO                                  -",
        "  KL  E[KL(q(z|x) || p(z))]              4.250",
        "  KL  median over the datapoints         -",
        "  posteriors wider than 2 prior sd       -",
        "  MI  I(x; z) over the dataset           2.500  (ceiling log N = 5.704)",
        "  MI  I(x; z) minibatch estimate, B=100  1.750  (ceiling log B = 4.605)",
        "  aggregate KL(q(z) || p(z))             0.125",
        "  active units (Cov > 0.01)              2 of 3",
        "  KL per dimension                       3.00 1.25 0.00",
    ]
    given = CollapseReport(**{**fields, "mutual_information_ceiling": 4.0}, nll=88.5, elbo=-90.25, conditional=True,
                           kl_median=1.5, wide_posteriors=0.125)
    lines = str(given).splitlines()
    assert lines[1].split()[-1] == "88.500" and lines[2].split()[-1] == "90.250"
    assert "KL  E[KL(q(z|x, y) || p(z | y))]" in lines[3] and lines[4].endswith("median over the datapoints         1.500")
    assert lines[5].endswith("posteriors wider than 2 prior sd       12.5 % of the datapoints")
    assert "I(x; z | y) over the dataset" in lines[6]
    assert "(ceiling mean log class size = 4.000)" in lines[6] and "aggregate KL(q(z | y) || p(z | y))" in lines[8]
    text = given.to_json()
    assert json.loads(text) == {**fields, "mutual_information_ceiling": 4.0, "nll": 88.5, "elbo": -90.25,
                                "conditional": True, "extra": {}, "kl_median": 1.5, "wide_posteriors": 0.125}
    assert text.startswith('{\n "num_datapoints": 300,')  # indented one space, as the run folder's files are


def test_encoder_posteriors_with_keyword_arguments_and_a_conditional_prior():
    """The model and the guide get the keyword arguments; the guide's q(z|x) (batch (N,), event (d,)) and the model's
    prior p(z|y) (batch (N,)) come back as they are, and a prior without the data plate is returned unexpanded."""
    from dgm_pyro.diagnostics import encoder_posteriors

    x, y = torch.randn(4, 2), torch.randn(4, 2)

    def model(x, y=None):
        with pyro.plate("obs", 4):
            z = pyro.sample("z", dist.Normal(y, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x, y=None):
        with pyro.plate("obs", 4):
            pyro.sample("z", dist.Normal(x + y, 0.5).to_event(1))

    q, p = encoder_posteriors(model, guide, x, y=y)
    assert q.batch_shape == p.batch_shape == (4,) and q.event_shape == p.event_shape == (2,)
    torch.testing.assert_close(q.mean, x + y)
    torch.testing.assert_close(p.mean, y)

    def model_shared_prior(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("obs", 4):
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide_per_datapoint(x):
        with pyro.plate("obs", 4):
            pyro.sample("z", dist.Normal(x, 0.5).to_event(1))

    q, p = encoder_posteriors(model_shared_prior, guide_per_datapoint, x)
    assert q.batch_shape == (4,) and p.batch_shape == ()  # an unconditional prior outside the plate, as it is
    with pytest.raises(ValueError, match=r"batch shape \(\) .*; sample it inside a plate over the datapoints"):
        encoder_posteriors(model_shared_prior, lambda x: pyro.sample("z", dist.Normal(torch.zeros(2), 1.0)
                                                                         .to_event(1)), x)
    with pytest.raises(ValueError, match=r"no latent site 'w' in both the model and the guide; latent sites found: "
                                         r"'z' \(batch \(4,\), event \(2,\)\) \(guide\), none \(model\)"):
        encoder_posteriors(lambda x: pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[0, 0]), guide_per_datapoint, x,
                           site="w")


def test_collapse_report_is_the_measures_it_names():
    """On a conditional model (a prior per class, y passed as a keyword) with groups: the report's MI, aggregate KL,
    minibatch MI, active units (relative to the conditional prior), KL per dimension and MI ceiling (the mean log
    class size) equal the functions of the same name called with the same draws; the defaults are 10 draws, seed 0,
    minibatches of 100 and no NLL. Every one of these functions is checked against quadrature or closed forms
    above."""
    from dgm_pyro.diagnostics import encoder_posteriors

    n, d = 120, 2
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, d, generator=g, dtype=D)
    labels = torch.arange(n) % 3  # classes of 40
    centres = torch.tensor([[-2.0, 0.0], [0.0, 1.0], [2.0, -1.0]], dtype=D)

    def model(x, y=None):
        with pyro.plate("obs", n):
            z = pyro.sample("z", dist.Normal(centres[y], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)

    def guide(x, y=None):
        with pyro.plate("obs", n):
            pyro.sample("z", dist.Normal(0.8 * x + 0.2 * centres[y], 0.45).to_event(1))

    report = collapse_report(model, guide, x, y=labels, groups=labels)
    q, p = encoder_posteriors(model, guide, x, y=labels)
    assert report.conditional and report.nll is None and report.elbo is None
    assert report.mutual_information == pytest.approx(mutual_information(q, 10, labels, 0), rel=1e-12)
    assert report.aggregate_kl == pytest.approx(aggregate_kl(q, p, 10, labels, 0), rel=1e-12)
    assert report.mutual_information != pytest.approx(mutual_information(q, 10, None, 0), rel=1e-3)  # groups matter
    assert report.mutual_information_minibatch == pytest.approx(mutual_information_minibatch(q, 100, 0), rel=1e-12)
    assert report.minibatch_size == 100 and report.num_datapoints == n and report.latent_dim == d
    au, activity = active_units(q, prior=p)
    assert report.active_units == au and report.activity == pytest.approx(activity.tolist(), rel=1e-12)
    assert activity.tolist() != pytest.approx(active_units(q)[1].tolist(), rel=1e-3)  # relative to the prior
    assert report.kl_per_dimension == pytest.approx(kl_per_dimension(q, p).tolist(), rel=1e-12)
    assert report.kl == pytest.approx(float(kl_per_dimension(q, p).sum()), rel=1e-12)
    assert report.mutual_information_ceiling == pytest.approx(math.log(40), rel=1e-12)
    assert mutual_information(q) == mutual_information(q, num_samples=10, seed=0)
    assert aggregate_kl(q, p) == aggregate_kl(q, p, num_samples=10, seed=0)
    assert mutual_information_minibatch(q) == mutual_information_minibatch(q, batch_size=100, seed=0)
    # and with particles, the NLL and ELBO are the importance-sampled evidence's
    with_nll = collapse_report(model, guide, x, y=labels, groups=labels, particles=50)
    assert with_nll.elbo < -with_nll.nll  # log p(x) estimate above the ELBO
    ungrouped = collapse_report(model, guide, x, y=labels)
    assert not ungrouped.conditional and ungrouped.mutual_information_ceiling == pytest.approx(math.log(n))


def test_kl_per_datapoint_its_median_and_the_share_of_posteriors_wider_than_the_prior():
    """Five posteriors against the prior N(0, diag(0.5^2, 2^2)), the KL of each by the Gaussian formula
    1/2 (s^2/sigma^2 + m^2/sigma^2 - 1 - 2 log(s/sigma)) per dimension: one datapoint 6 prior sd wide in the first
    dimension (the CS-ELBO's tail on MNIST, docs/collapse.md) carries most of the mean KL but not the median, and
    costs D_CS (P2.1) only a few nats."""
    from dgm_pyro.diagnostics import WIDE_RATIO, kl_per_datapoint, posterior_width_ratio
    from dgm_pyro.divergences import cs_divergence

    sigma = torch.tensor([0.5, 2.0], dtype=D)
    loc = torch.tensor([[0.0, 0.0], [0.5, 1.0], [-0.5, 2.0], [1.0, -2.0], [0.0, 0.0]], dtype=D)
    scale = torch.tensor([[0.5, 2.0], [0.1, 1.0], [0.2, 3.0], [0.25, 0.5], [3.0, 1.0]], dtype=D)
    ratio = scale / sigma
    by_hand = 0.5 * (ratio ** 2 + (loc / sigma) ** 2 - 1 - 2 * ratio.log()).sum(-1)
    q, prior = diag(loc, scale), diag(torch.zeros(2, dtype=D), sigma)
    assert kl_per_datapoint(q, prior) == pytest.approx(by_hand.tolist(), rel=1e-12)
    assert posterior_width_ratio(q, prior).tolist() == pytest.approx([1.0, 0.5, 1.5, 0.5, 6.0], rel=1e-12)
    assert WIDE_RATIO == 2.0

    def model():
        with pyro.plate("obs", 5):
            pyro.sample("z", dist.Normal(torch.zeros(2, dtype=D), sigma).to_event(1))

    def guide():
        with pyro.plate("obs", 5):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    report = collapse_report(model, guide)
    assert report.wide_posteriors == 0.2  # one of five
    assert report.kl_median == pytest.approx(float(by_hand.median()), rel=1e-12)
    assert report.kl == pytest.approx(float(by_hand.mean()), rel=1e-12)
    assert by_hand[4] > 0.6 * by_hand.sum() and report.kl_median < report.kl / 2
    assert float(cs_divergence(q, prior)[4]) < 0.7 < 16 < float(by_hand[4])  # 1/2 log(9.25 / 3) + 1/2 log(5 / 4)


def test_activity_is_the_population_variance_and_the_threshold_strict():
    """A_u is the variance over the N datapoints (divided by N, as in Burda et al.), and a unit counts only above
    the threshold: means -0.5 and 0.5 give exactly 0.25."""
    q = diag(torch.tensor([[-0.5, 0.0], [0.5, 0.0]], dtype=D), torch.ones(2, 2, dtype=D))
    count, activity = active_units(q, threshold=0.25)
    assert activity.tolist() == [0.25, 0.0] and count == 0
    assert active_units(q, threshold=0.2499)[0] == 1


def test_a_mixture_prior_gets_a_monte_carlo_kl_and_a_note():
    """A prior that is not factorised over the latent dimensions (a Gaussian mixture) has no KL per dimension: the
    report estimates the total KL by Monte Carlo (here against the mixture's exact log-density: its mean over
    20 000 draws matches to 3 standard errors), leaves the per-dimension split empty and says why."""
    n, d = 50, 2
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=g)
    mix = dist.MixtureSameFamily(dist.Categorical(torch.tensor([0.3, 0.7])),
                                 dist.Normal(torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), 1.0).to_event(1))

    def model(x):
        with pyro.plate("obs", n):
            z = pyro.sample("z", mix)
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("obs", n):
            pyro.sample("z", dist.Normal(x, 0.4).to_event(1))

    report = collapse_report(model, guide, x, num_samples=400)
    q = dist.Normal(x, 0.4).to_event(1)
    z = q.sample((20000,))
    terms = q.log_prob(z) - mix.log_prob(z)
    assert report.kl == pytest.approx(float(terms.mean()), abs=3 * float(terms.std()) / math.sqrt(400 * n))
    assert report.kl_per_dimension == [] and "not factorised" in report.extra["note"]
    assert report.wide_posteriors is None and str(report).splitlines()[5].endswith("-")  # no sd ratio to a mixture
    assert min(terms.mean(0)) < report.kl_median < max(terms.mean(0))  # the median of the per-datapoint estimates
    import re

    assert "note: the KL is a Monte Carlo estimate" in str(report)
    assert re.search(r"^  KL per dimension +-$", str(report), flags=re.M)


@pytest.mark.parametrize("layout, hint", [
    ("global", r"batch shape \(\) and event shape \(2,\).*; sample it inside a plate over the datapoints"),
    ("scalar", r"batch shape \(5,\) and event shape \(\).*; give it a vector event, e\.g\. Normal\(loc, scale\)"
               r"\.to_event\(1\) with loc of shape \(N, d\)"),
    ("nested", r"batch shape \(5, 2\) and event shape \(3,\).*Normal\(\.\.\.\)\.to_event\(2\) inside the data plate"),
])
def test_each_wrong_layout_gets_its_own_fix(layout, hint):
    """The latent of the collapse measures is one plate over the datapoints and a vector event; a global latent,
    a scalar per datapoint and a nested plate each get the change that fixes them."""
    from dgm_pyro.diagnostics import encoder_posteriors

    x = torch.randn(5, 3)

    def guide(x):
        if layout == "global":
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        elif layout == "scalar":
            with pyro.plate("obs", 5):
                pyro.sample("z", dist.Normal(0.0, 1.0))
        else:
            with pyro.plate("obs", 5, dim=-2), pyro.plate("dims", 2, dim=-1):
                pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    with pytest.raises(ValueError, match=hint):
        encoder_posteriors(guide, guide, x)


def test_a_site_in_only_one_of_model_and_guide_is_named_with_every_latent():
    from dgm_pyro.diagnostics import encoder_posteriors

    x = torch.randn(4, 2)

    def guide(x):
        with pyro.plate("obs", 4):
            pyro.sample("z", dist.Normal(x, 0.5).to_event(1))
            pyro.sample("w", dist.Normal(x, 0.5).to_event(1))

    def model(x):
        with pyro.plate("obs", 4):
            pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1), obs=x)

    with pytest.raises(ValueError, match=r"no latent site 'z' in both the model and the guide; latent sites found: "
                                         r"'z' \(batch \(4,\), event \(2,\)\), 'w' \(batch \(4,\), event \(2,\)\) "
                                         r"\(guide\), 'w' \(batch \(4,\), event \(2,\)\) \(model\)"):
        encoder_posteriors(model, guide, x)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        mutual_information_minibatch(encoder_posteriors(model, guide, x, site="w")[0], batch_size=0)


def test_report_options_reach_their_measures():
    """collapse_report's threshold and seed are the ones its measures use, and its NLL is the evidence estimated
    with its particle count under its seed."""
    from dgm_pyro.diagnostics import encoder_posteriors
    from dgm_pyro.infer import log_evidence

    n = 60
    x = torch.randn(n, 2, dtype=D)

    def model(x):
        with pyro.plate("obs", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("obs", n):
            pyro.sample("z", dist.Normal(0.8 * x, 0.45).to_event(1))

    report = collapse_report(model, guide, x, threshold=0.65, seed=3, particles=30)
    q, _ = encoder_posteriors(model, guide, x)
    assert report.active_units == active_units(q, threshold=0.65)[0] != active_units(q)[0]
    assert report.mutual_information_minibatch == mutual_information_minibatch(q, 60, 3)
    assert report.mutual_information == mutual_information(q, 10, None, 3)
    torch.manual_seed(3)
    ev = log_evidence(model, guide, x, num_particles=30, diagnostics=False, warn=False)
    assert report.nll == -float(ev.log_evidence.mean()) and report.elbo == float(ev.elbo.mean())
