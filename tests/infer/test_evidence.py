"""log_evidence against analytic evidence (seed P1.3-P1.7)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from dgm_pyro.errors import DgmPyroError
from dgm_pyro.infer import log_evidence
from dgm_pyro.models import LinearGaussianCVAE


@pytest.fixture
def lg():
    truth = LinearGaussianCVAE(dtype=torch.float64)
    y = torch.randn(40, truth.y_dim, dtype=torch.float64)
    x = truth.sample(y)
    return truth, x, y


def shifted_guide(truth, shift, scale):
    """A deliberately wrong diagonal guide: posterior mean shifted, scales fixed."""

    def guide(x, y):
        post = truth.posterior(x, y)
        with pyro.plate("data", y.shape[0]):
            pyro.sample("z", dist.Normal(post.loc + shift, scale * torch.ones_like(post.loc)).to_event(1))

    return guide


@pytest.mark.parametrize("K", [1, 7, 100, 1000])
def test_exact_posterior_gives_exact_evidence_for_any_K(lg, K):
    truth, x, y = lg
    res = log_evidence(truth.model, truth.exact_guide, x, y, num_particles=K)
    exact = truth.log_marginal(x, y)
    assert res.log_evidence.shape == (40,)
    assert torch.allclose(res.log_evidence, exact, atol=1e-4, rtol=0)
    assert torch.allclose(res.elbo, exact, atol=1e-4, rtol=0)  # the bound is tight (P1.5)
    if K >= 100:  # constant weights: no tail at all (k-hat -inf by construction) and the full sample size
        assert bool(torch.isinf(res.khat).all())
        assert torch.allclose(res.ess, torch.full_like(res.ess, K))


def test_exact_in_float32_too():
    truth = LinearGaussianCVAE()
    y = torch.randn(20, 3)
    x = truth.sample(y)
    res = log_evidence(truth.model, truth.exact_guide, x, y, num_particles=50)
    assert torch.allclose(res.log_evidence.float(), truth.log_marginal(x, y), atol=1e-4, rtol=0)


def test_wrong_guide_ordering_and_gap_shrinks(lg):
    truth, x, y = lg
    exact = truth.log_marginal(x, y)
    guide = shifted_guide(truth, 0.3, 0.4)
    gaps = {}
    for K in (10, 100, 3000):
        res = log_evidence(truth.model, guide, x, y, num_particles=K, warn=False)
        # the ELBO is below the exact value by the KL gap (P1.5), the estimate never above it beyond 3 SE
        assert float(res.elbo.mean()) < float(exact.mean()) - 0.1
        assert float((res.log_evidence - exact).mean()) <= 3 * float(res.stderr.pow(2).mean().sqrt())
        gaps[K] = float((exact - res.log_evidence).mean())
    assert gaps[10] > gaps[100] > gaps[3000] - 0.02
    assert gaps[3000] < 0.05


def test_khat_flags_heavy_mismatch(lg):
    truth, x, y = lg
    too_narrow = shifted_guide(truth, 1.0, 0.05)
    with pytest.warns(RuntimeWarning, match="k-hat"):
        res = log_evidence(truth.model, too_narrow, x, y, num_particles=1000)
    assert float(res.khat.median()) > 0.7
    assert float(res.ess.median()) < 20


def test_scale_from_annealing_and_subsampling_does_not_leak(lg):
    truth, x, y = lg
    exact = truth.log_marginal(x, y)
    scaled_model = poutine.scale(truth.model, scale=0.1)
    scaled_guide = poutine.scale(truth.exact_guide, scale=0.1)
    res = log_evidence(scaled_model, scaled_guide, x, y, num_particles=5)
    assert torch.allclose(res.log_evidence, exact, atol=1e-4)

    idx = torch.arange(0, 40, 4)

    def sub_model(x, y):
        with pyro.plate("data", 40, subsample=idx):
            z = pyro.sample("z", dist.Normal(truth.prior_loc(y[idx]), truth.s).to_event(1))
            loc = z @ truth.W.T + y[idx] @ truth.V.T + truth.c
            pyro.sample("x", dist.Normal(loc, truth.sigma).to_event(1), obs=x[idx])

    def sub_guide(x, y):
        with pyro.plate("data", 40, subsample=idx):
            pyro.sample("z", truth.posterior(x[idx], y[idx]))

    res = log_evidence(sub_model, sub_guide, x, y, num_particles=5)
    assert torch.allclose(res.log_evidence, exact[idx], atol=1e-4)


def test_chunking_and_sequential_agree(lg):
    truth, x, y = lg
    guide = shifted_guide(truth, 0.2, 0.5)
    a = log_evidence(truth.model, guide, x[:5], y[:5], num_particles=5000, chunk_size=333, warn=False)
    b = log_evidence(truth.model, guide, x[:5], y[:5], num_particles=5000, warn=False)
    c = log_evidence(truth.model, guide, x[:5], y[:5], num_particles=300, vectorize=False, warn=False)
    tol = 4 * (a.stderr + b.stderr)
    assert bool(((a.log_evidence - b.log_evidence).abs() < tol).all())
    assert bool(((c.log_evidence - b.log_evidence).abs() < 4 * (c.stderr + b.stderr) + 0.05).all())
    assert c.log_evidence.shape == (5,)


def test_blocks_bound_rows_and_chunk_elements_and_keep_the_estimate(lg, monkeypatch):
    """``log_evidence_blocks`` hands ``log_evidence`` at most ``block_size`` rows, particles chunked so that a
    (particles, rows, *x) tensor stays within ``max_elements``, and joins the blocks in order: the estimate of each
    datapoint agrees with the exact log-likelihood of the linear-Gaussian model (4 standard errors)."""
    from dgm_pyro.infer import evidence, log_evidence_blocks

    truth, x, y = lg
    guide = shifted_guide(truth, 0.2, 0.5)
    calls = []
    real = evidence.log_evidence

    def spy(*args, chunk_size, **kwargs):
        calls.append((args[2].shape[0], chunk_size))
        return real(*args, chunk_size=chunk_size, **kwargs)

    monkeypatch.setattr(evidence, "log_evidence", spy)
    res = log_evidence_blocks(truth.model, guide, x, y, block_size=15, max_elements=15 * x.shape[1] * 40,
                              num_particles=2000, warn=False)
    assert [rows for rows, _ in calls] == [15, 15, 10]
    assert [chunk for _, chunk in calls] == [40, 40, 60]  # 15 x 40 rows x particles; 10 rows: the element bound
    exact = truth.log_marginal(x, y)
    assert res.log_evidence.shape == (40,)
    assert bool(((res.log_evidence - exact).abs() < 4 * res.stderr + 1e-3).all())
    calls.clear()  # a bound below one particle of a block: smaller blocks, one particle at a time
    log_evidence_blocks(truth.model, guide, x, y, block_size=15, max_elements=6 * x.shape[1] + 1, num_particles=3,
                        warn=False)
    assert calls == [(6, 1)] * 6 + [(4, 1)]
    with pytest.raises(DgmPyroError, match="every argument is an"):
        log_evidence_blocks(truth.model, guide, x, y[:5], num_particles=2)


def test_model_the_project_did_not_write():
    """A conjugate multivariate model with a plate named 'obs' and explicit dims."""
    torch.manual_seed(1)
    d_z, d_x, n = 3, 4, 25
    A = torch.randn(d_x, d_z, dtype=torch.float64)
    L0 = torch.tril(torch.randn(d_z, d_z, dtype=torch.float64), -1) + torch.diag(torch.rand(d_z, dtype=torch.float64) + 0.5)
    R = 0.3 * torch.eye(d_x, dtype=torch.float64)
    S0 = L0 @ L0.T
    x = dist.MultivariateNormal(torch.zeros(d_x, dtype=torch.float64), A @ S0 @ A.T + R).sample((n,))
    exact = dist.MultivariateNormal(torch.zeros(d_x, dtype=torch.float64), A @ S0 @ A.T + R).log_prob(x)

    def model(data):
        with pyro.plate("obs", data.shape[0], dim=-1):
            z = pyro.sample("latent", dist.MultivariateNormal(torch.zeros(d_z, dtype=torch.float64), scale_tril=L0))
            pyro.sample("data", dist.MultivariateNormal(z @ A.T, R), obs=data)

    post_cov = torch.linalg.inv(torch.linalg.inv(S0) + A.T @ torch.linalg.inv(R) @ A)
    post_mean = x @ torch.linalg.inv(R) @ A @ post_cov

    def exact_guide(data):
        with pyro.plate("obs", data.shape[0], dim=-1):
            pyro.sample("latent", dist.MultivariateNormal(post_mean, covariance_matrix=post_cov))

    def prior_guide(data):
        with pyro.plate("obs", data.shape[0], dim=-1):
            pyro.sample("latent", dist.MultivariateNormal(torch.zeros(d_z, dtype=torch.float64), scale_tril=L0))

    res = log_evidence(model, exact_guide, x, num_particles=3)
    assert res.plates == ("obs",)
    assert torch.allclose(res.log_evidence, exact, atol=1e-4)
    res = log_evidence(model, prior_guide, x, num_particles=20000, warn=False)
    assert float((res.log_evidence - exact).abs().mean()) < 0.05
    assert float(res.elbo.mean()) < float(exact.mean())


def test_global_latent_without_shared_plate_gives_one_joint_estimate():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        n = x.shape[0]
        pyro.sample("mu", dist.Normal(x.sum() / (n + 1), (1.0 / (n + 1)) ** 0.5))

    x = torch.randn(6, dtype=torch.float64)
    res = log_evidence(model, guide, x, num_particles=4)
    exact = dist.MultivariateNormal(torch.zeros(6, dtype=torch.float64), torch.eye(6, dtype=torch.float64) + 1).log_prob(x)
    assert res.log_evidence.shape == ()
    assert abs(float(res.log_evidence) - float(exact)) < 1e-4


def test_bad_arguments():
    truth = LinearGaussianCVAE()
    y = torch.randn(3, 3)
    with pytest.raises(DgmPyroError, match="num_particles"):
        log_evidence(truth.model, truth.exact_guide, truth.sample(y), y, num_particles=0)

    def empty(*a):
        pass

    with pytest.raises(DgmPyroError, match="no sample sites"):
        log_evidence(empty, empty, num_particles=3)


def test_summary_is_plain_floats(lg):
    truth, x, y = lg
    s = log_evidence(truth.model, truth.exact_guide, x, y, num_particles=200).summary()
    assert s["num_datapoints"] == 40 and s["num_particles"] == 200
    assert math.isclose(s["log_evidence"], float(truth.log_marginal(x, y).mean()), abs_tol=1e-4)
    assert s["khat_max"] is None  # constant weights: no tail (k-hat = -inf)
    assert s["khat_frac_above_0.7"] == 0.0


# ------------------------------------------------------------------------------------------------------
# every valid Pyro program: exact values for unguided latents, discrete guides, masks, deterministic sites


def _within(res, exact, sigmas=4.0, floor=0.0):
    """Each datapoint's estimate within `sigmas` of its own standard error (plus `floor`) of the exact value."""
    err = (res.log_evidence - exact).abs()
    return bool((err <= sigmas * res.stderr + floor).all()), err, res.stderr


def test_model_latent_without_guide_site_is_proposed_from_its_prior():
    """w ~ N(0, 1), x ~ N(w, 1) with an empty guide: the proposal is the prior, the weight p(x|w), and the
    estimate is log N(x; 0, 2)."""
    def model(x):
        with pyro.plate("data", x.shape[0]):
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(w, 1.0), obs=x)

    def guide(x):
        pass

    x = torch.tensor([0.5, -1.2, 2.0], dtype=torch.float64)
    res = log_evidence(model, guide, x, num_particles=20000, warn=False)
    with pytest.warns(UserWarning, match="model latent site\\(s\\) 'w' have no guide site: they are drawn from"):
        log_evidence(model, guide, x, num_particles=10)
    exact = dist.Normal(0.0, 2 ** 0.5).log_prob(x)
    ok, err, se = _within(res, exact)
    assert ok, (err, se)
    # counting log p(w) without a matching log q (the earlier behaviour) is off by E_prior[log p(w)] = -1.42
    assert float((res.log_evidence - exact).abs().max()) < 0.1


def test_partly_guided_chain_of_latents():
    """z ~ N(0, 1), w ~ N(z, 1), x ~ N(w, 1); the guide samples z only (from its exact posterior given x,
    N(x/3, 2/3)): w is drawn from p(w|z) inside the proposal and the estimate is log N(x; 0, 3)."""
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            w = pyro.sample("w", dist.Normal(z, 1.0))
            pyro.sample("x", dist.Normal(w, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 3, (2 / 3) ** 0.5))

    x = torch.tensor([0.3, -2.5, 1.7, 4.0], dtype=torch.float64)
    res = log_evidence(model, guide, x, num_particles=20000, warn=False)
    ok, err, se = _within(res, dist.Normal(0.0, 3 ** 0.5).log_prob(x))
    assert ok, (err, se)


def test_discrete_latent_in_the_guide():
    """c ~ Categorical(0.3, 0.7), x ~ N(mu_c, 1); a uniform guide over c: the estimate is the exact mixture
    density log sum_c p(c) N(x; mu_c, 1) (K = 4000, within 4 standard errors)."""
    mu = torch.tensor([-2.0, 1.5], dtype=torch.float64)
    prior = torch.tensor([0.3, 0.7], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(prior))
            pyro.sample("x", dist.Normal(mu[c], 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(torch.full((2,), 0.5, dtype=torch.float64)))

    x = torch.tensor([-2.2, 0.0, 1.0, 3.0], dtype=torch.float64)
    res = log_evidence(model, guide, x, num_particles=4000, warn=False)
    exact = torch.logsumexp(prior.log() + dist.Normal(mu, 1.0).log_prob(x[:, None]), -1)
    ok, err, se = _within(res, exact)
    assert ok, (err, se)
    # with only two values of c the estimate is close to exact, and the ELBO is well below it somewhere
    assert float((exact - res.elbo).max()) > 0.3


def test_masks_obs_mask_and_deterministic_sites():
    """z ~ N(0, 1), x1 ~ N(z, 1), x2 ~ N(z, 1) with x2 hidden by poutine.mask (a Python bool and a per-datapoint
    tensor), or by obs_mask, plus a pyro.deterministic site: each evidence is that of what is observed."""
    x = torch.tensor([[0.4, 1.0], [-1.5, 2.0], [2.2, -0.3]], dtype=torch.float64)
    both = dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                   torch.eye(2, dtype=torch.float64) + 1.0).log_prob(x)
    first = dist.Normal(0.0, 2 ** 0.5).log_prob(x[:, 0])

    def model(x, mask):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.deterministic("z2", 2 * z)
            pyro.sample("x1", dist.Normal(z, 1.0), obs=x[:, 0])
            with poutine.mask(mask=mask):
                pyro.sample("x2", dist.Normal(z, 1.0), obs=x[:, 1])

    def guide(x, mask):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    for mask, exact in ((True, both), (False, first), (torch.tensor([True, False, True]),
                                                       torch.where(torch.tensor([True, False, True]), both, first))):
        res = log_evidence(model, guide, x, mask, num_particles=20000, warn=False)
        ok, err, se = _within(res, exact)
        assert ok, (mask, err, se)

    def obs_mask_model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1, dtype=x.dtype), 1.0))
            with pyro.plate("feature", 2, dim=-1):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x, obs_mask=torch.tensor([True, False]))

    def obs_mask_guide(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1, dtype=x.dtype), 1.0))

    res = log_evidence(obs_mask_model, obs_mask_guide, x, num_particles=20000, warn=False)
    ok, err, se = _within(res, first)
    assert ok, (err, se)


def _refusal(model, guide, *args) -> str:
    """The one-line message log_evidence refuses this pair with."""
    with pytest.raises(DgmPyroError) as info:
        log_evidence(model, guide, *args, num_particles=10)
    return str(info.value)


def test_guide_site_missing_from_the_model_is_refused_with_the_names():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            z = pyro.sample("z", dist.Normal(w, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("zz", dist.Normal(0.0, 1.0))

    assert _refusal(model, guide, torch.zeros(3)) == ("guide site(s) 'zz' have no site of that name in the model (model latent sites: 'w', "
                               "'z'); the guide must sample the model's latent sites under the same names")

    def observed_only(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def two_guide_sites(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("b", dist.Normal(0.0, 1.0))
            pyro.sample("a", dist.Normal(0.0, 1.0))

    assert _refusal(observed_only, two_guide_sites, torch.zeros(3)) == ("guide site(s) 'a', 'b' have no site of that name in the model (model latent sites: "
                               "none); the guide must sample the model's latent sites under the same names")

    def observes_two(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("a", dist.Normal(0.0, 1.0), obs=x)
            pyro.sample("b", dist.Normal(0.0, 1.0), obs=x)

    assert _refusal(observes_two, two_guide_sites, torch.zeros(3)) == "guide site(s) 'a', 'b' are observed in the model; a guide samples latent sites only"


def test_subsampled_inner_plate_is_refused():
    """A likelihood estimated from a subsample of an inner plate (the sparse GraphSSM's non-edges) has no
    unbiased importance-sampled evidence: refused with one line."""
    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("items", x.shape[0], subsample_size=3):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:3])

    def guide(x):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(DgmPyroError, match=r"site\(s\) 'x' \(plate 'items'\) are subsampled"):
        log_evidence(model, guide, torch.zeros(10), num_particles=10)

    def five(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("items", x.shape[0], subsample_size=3):
            for name in "abcde":
                pyro.sample(name, dist.Normal(z, 1.0), obs=x[:3])

    def four(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("items", x.shape[0], subsample_size=3):
            for name in "abcd":
                pyro.sample(name, dist.Normal(z, 1.0), obs=x[:3])

    with pytest.raises(DgmPyroError, match=r"^site\(s\) 'a' \(plate 'items'\), 'b' \(plate 'items'\), 'c' \(plate "
                                           r"'items'\), 'd' \(plate 'items'\) are subsampled"):
        log_evidence(four, guide, torch.zeros(10), num_particles=10)
    assert _refusal(five, guide, torch.zeros(10)) == (
        "site(s) 'a' (plate 'items'), 'b' (plate 'items'), 'c' (plate 'items'), 'd' (plate 'items'), ... are "
        "subsampled: per-datapoint evidence needs every likelihood term (a subsample's scaled sum is unbiased for "
        "log p, not for p); use the full plate (for GraphSSM, the dense edge likelihood)")


def test_sparse_graph_ssm_is_refused_and_dense_graph_ssm_runs():
    from dgm_pyro.runs import GraphConfig, build_graph_model, load_graph_sequence

    cfg = GraphConfig(hidden=8, latent_dim=2).validate()
    history, _ = load_graph_sequence(cfg)
    args = (history.x[:3], history.edges[:3])
    sparse = build_graph_model(GraphConfig(hidden=8, latent_dim=2, edge_likelihood="sparse").validate(), history)
    with pytest.raises(DgmPyroError, match="subsampled"):
        log_evidence(sparse.model, sparse.guide, *args, num_particles=2)
    dense = build_graph_model(cfg, history)
    dense.load_state_dict(sparse.state_dict())  # the same weights
    pyro.set_rng_seed(5)
    res = log_evidence(dense.model, dense.guide, *args, num_particles=3, warn=False, vectorize=False)
    assert res.log_evidence.shape == ()
    # by hand, on the same draws: log_evidence traces the pair once to find its plates, then draws K particles;
    # each weight is the whole model's log-density (latent path, features, every edge) minus the guide's
    pyro.set_rng_seed(5)
    log_w = []
    for i in range(4):
        guide_tr = poutine.trace(dense.guide).get_trace(*args)
        model_tr = poutine.trace(poutine.replay(dense.model, trace=guide_tr)).get_trace(*args)
        if i:
            assert {"x", "a"} <= {n for n, s in model_tr.nodes.items() if s["type"] == "sample" and s["is_observed"]}
            log_w.append((model_tr.log_prob_sum() - guide_tr.log_prob_sum()).detach())
    want = torch.logsumexp(torch.stack(log_w).double(), 0) - math.log(3)
    assert float(res.log_evidence) == pytest.approx(float(want), rel=1e-5)
    assert float(res.elbo) == pytest.approx(float(torch.stack(log_w).double().mean()), rel=1e-5)


@pytest.mark.parametrize("k", [0.2, 0.6, 0.9])
def test_psis_khat_recovers_the_tail_shape_of_pareto_weights(k):
    """Weights with a generalised-Pareto tail of shape k (w = (U^-k - 1) / k + 1), 16 datapoints of 20 000 draws:
    the mean k-hat is within 0.05 of k and every datapoint's within 0.2 (PSIS fits the largest 3 sqrt(K) weights)."""
    from dgm_pyro.infer.evidence import psis_khat

    g = torch.Generator().manual_seed(0)
    u = torch.rand(20000, 16, generator=g, dtype=torch.float64)
    khat = psis_khat(((u.pow(-k) - 1) / k + 1).log())
    assert abs(float(khat.mean()) - k) < 0.05, khat
    assert bool(((khat - k).abs() < 0.2).all()), khat


def test_a_model_that_does_not_broadcast_gets_a_hint_and_works_unvectorised():
    """A model written for one particle (it reshapes z to the batch size) fails in the vectorised pass with a
    torch shape error: log_evidence says so in one line and names vectorize=False, which then works."""
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.reshape(x.shape[0]), 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.5 ** 0.5))  # the exact posterior

    x = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    with pytest.raises(DgmPyroError, match="vectorised pass over particles failed.*vectorize=False"):
        log_evidence(model, guide, x, num_particles=10)
    res = log_evidence(model, guide, x, num_particles=10, vectorize=False)
    assert torch.allclose(res.log_evidence, dist.Normal(0.0, 2 ** 0.5).log_prob(x), atol=1e-6)



def test_summary_is_the_means_of_hand_made_results():
    """EvidenceResult.summary against numbers written by hand: means, the standard error of a mean of independent
    estimates, the k-hat shares with the strict thresholds, and non-finite values as None."""
    import math

    from dgm_pyro.infer.evidence import EvidenceResult

    t = torch.tensor
    res = EvidenceResult(log_evidence=t([-1.0, -2.0, -6.0]), stderr=t([0.3, 0.4, 1.2]), elbo=t([-2.0, -3.0, -7.0]),
                         elbo_stderr=t([0.1, 0.2, 0.2]), ess=t([10.0, 4.0, 1.0]), khat=t([0.5, 0.7, 0.9]),
                         num_particles=50, plates=("data",))
    assert res.summary() == {
        "num_datapoints": 3, "num_particles": 50, "log_evidence": -3.0,
        "log_evidence_stderr": pytest.approx(math.sqrt(0.09 + 0.16 + 1.44) / 3),
        "elbo": -4.0, "elbo_stderr": pytest.approx(0.3 / 3), "ess_mean": 5.0, "ess_min": 1.0,
        "khat_max": pytest.approx(0.9), "khat_frac_above_0.5": pytest.approx(2 / 3),
        "khat_frac_above_0.7": pytest.approx(1 / 3)}
    # constant weights (k-hat -inf) beside finite ones: the max of the finite; all -inf: -inf is None
    mixed = EvidenceResult(t([0.0, 0.0]), t([0.0, 0.0]), t([0.0, 0.0]), t([0.0, 0.0]), t([2.0, 2.0]),
                           t([-math.inf, 0.2]), 2, ("data",))
    assert mixed.summary()["khat_max"] == pytest.approx(0.2) and mixed.summary()["khat_frac_above_0.5"] == 0.0
    exact = EvidenceResult(t([0.0]), t([0.0]), t([0.0]), t([0.0]), t([2.0]), t([-math.inf]), 2, ("data",))
    assert exact.summary()["khat_max"] is None and exact.summary()["khat_frac_above_0.7"] == 0.0
    # no diagnostics (k-hat NaN): no k-hat figures; an infinite evidence is None, not inf
    none = EvidenceResult(t([-math.inf]), t([math.nan]), t([-1.0]), t([0.0]), t([1.0]), t([math.nan]), 5, ())
    s = none.summary()
    assert s["khat_max"] is None and s["khat_frac_above_0.5"] is None and s["khat_frac_above_0.7"] is None
    assert s["log_evidence"] is None and s["log_evidence_stderr"] is None and s["elbo"] == -1.0


def test_auto_is_adaptive_where_it_applies_and_importance_sampling_elsewhere(caplog, normal_pair):
    """auto: adaptive for continuous guided latents; plain importance sampling for a discrete latent, an unguided
    one, or a single particle (with a line saying why); the resolution draws nothing."""
    import logging

    from dgm_pyro.infer.evidence import resolve_method

    model, guide = normal_pair(3)

    def discrete_model(x):
        with pyro.plate("data", 3):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def discrete_guide(x):
        with pyro.plate("data", 3):
            pyro.sample("c", dist.Bernoulli(0.3))

    def unguided_model(x):
        with pyro.plate("data", 3):
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            z = pyro.sample("z", dist.Normal(w, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    x = torch.tensor([0.3, -1.0, 2.0])
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert resolve_method("auto", model, guide, x, num_particles=100) == "adaptive"
    assert torch.equal(torch.get_rng_state(), before)
    with caplog.at_level(logging.INFO, logger="dgm_pyro.infer.evidence"):
        assert resolve_method("auto", discrete_model, discrete_guide, x, num_particles=100) == "is"
        assert resolve_method("auto", unguided_model, guide, x, num_particles=100) == "is"
        assert resolve_method("auto", model, guide, x, num_particles=1) == "is"
    assert [r.getMessage() for r in caplog.records] == [
        "method auto: importance sampling with the guide (adaptive does not apply: the latent(s) 'c' are discrete)",
        "method auto: importance sampling with the guide (adaptive does not apply: the model latent(s) 'w' have no "
        "guide site)",
        "method auto: importance sampling with the guide (adaptive does not apply: K = 1)"]
    assert resolve_method("ais", discrete_model, discrete_guide, x) == "ais"  # a named method is kept as it is
    pyro.set_rng_seed(3)
    auto = log_evidence(model, guide, x, num_particles=100, method="auto", warn=False)
    pyro.set_rng_seed(3)
    adaptive = log_evidence(model, guide, x, num_particles=100, method="adaptive", warn=False)
    assert auto.method == "adaptive" and torch.equal(auto.log_evidence, adaptive.log_evidence)
    assert log_evidence(discrete_model, discrete_guide, x, num_particles=50, method="auto", warn=False).method == "is"


def test_khat_is_minus_infinity_only_for_constant_weights():
    """Weights that vary a little (log-weights spread over 0.5 nats) have a tail and a finite k-hat; weights constant
    to float rounding (spread 1e-6) have none: -inf."""
    from dgm_pyro.infer.evidence import psis_khat

    g = torch.Generator().manual_seed(0)
    varied = 0.5 * torch.rand(500, 2, generator=g, dtype=torch.float64)
    flat = torch.zeros(500, 1, dtype=torch.float64) + 1e-6 * torch.rand(500, 1, generator=g, dtype=torch.float64)
    k = psis_khat(varied)
    assert k.dtype == torch.float64 and bool(torch.isfinite(k).all()) and psis_khat(flat).item() == -math.inf


def test_auto_at_two_particles_with_keyword_data_and_every_name_in_the_reason(caplog, normal_pair):
    import logging

    from dgm_pyro.infer.evidence import resolve_method

    model, guide = normal_pair(3, noise=1.0, a=0.5, b=0.8)

    def two_discrete(x=None):
        with pyro.plate("data", 3):
            a = pyro.sample("a", dist.Bernoulli(0.5))
            b = pyro.sample("b", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(a + b, 1.0), obs=x)

    def two_discrete_guide(x=None):
        with pyro.plate("data", 3):
            pyro.sample("a", dist.Bernoulli(0.3))
            pyro.sample("b", dist.Bernoulli(0.6))

    x = torch.tensor([0.3, -1.0, 2.0])
    assert resolve_method("auto", model, guide, x=x, num_particles=2) == "adaptive"  # keyword data, K = 2 fits
    assert resolve_method("auto", model, guide, x=x) == "adaptive"
    with caplog.at_level(logging.INFO, logger="dgm_pyro.infer.evidence"):
        assert resolve_method("auto", two_discrete, two_discrete_guide, x=x, num_particles=10) == "is"
    assert caplog.records[-1].getMessage().endswith("(adaptive does not apply: the latent(s) 'a', 'b' are discrete)")


def test_auto_through_log_evidence_sees_the_particle_count_and_keyword_data(caplog, normal_pair):
    import logging

    from dgm_pyro.infer.evidence import resolve_method

    model, guide = normal_pair(3, noise=1.0, a=0.5, b=0.8)

    def unguided_pair(x=None):
        with pyro.plate("data", 3):
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
            w = pyro.sample("w", dist.Normal(u, 1.0))
            pyro.sample("x", dist.Normal(w, 1.0), obs=x)

    x = torch.tensor([0.3, -1.0, 2.0])
    assert log_evidence(model, guide, x=x, num_particles=1, method="auto", warn=False).method == "is"
    assert log_evidence(model, guide, x=x, num_particles=20, method="auto", warn=False).method == "adaptive"
    with caplog.at_level(logging.INFO, logger="dgm_pyro.infer.evidence"):
        assert resolve_method("auto", unguided_pair, guide, x=x, num_particles=10) == "is"
    assert caplog.records[-1].getMessage().endswith("(adaptive does not apply: the model latent(s) 'u', 'w' have no "
                                                    "guide site)")


@pytest.mark.parametrize("method, what", [("is", "importance sampling"), ("ais", "annealed importance sampling"),
                                          ("adaptive", "adaptive importance sampling")])
def test_progress_bar_and_heartbeat_name_the_method_and_count_the_particles(lg, monkeypatch, caplog, method, what):
    """With ``progress=True`` one tqdm bar of K particles named by the method, left behind on nothing, updated to
    K and closed; without it a log line per chunk once its interval has passed (here at once), naming the
    method, the particles (adaptive: the draws of every round) done of all, and the datapoints."""
    import logging

    import tqdm.auto

    from dgm_pyro.infer import evidence
    from dgm_pyro.progress import Heartbeat

    truth, x, y = lg
    bars = []

    class Bar:
        def __init__(self, **kwargs):
            self.kwargs, self.done, self.closed = kwargs, 0, False
            bars.append(self)

        def update(self, k):
            self.done += k

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    args = (truth.model, truth.exact_guide, x[:3], y[:3])
    options = dict(num_particles=30, chunk_size=10, num_steps=2, hmc_steps=1, num_rounds=1, method=method)
    log_evidence(*args, progress=True, **options)
    assert [(b.kwargs, b.done, b.closed) for b in bars] == [
        (dict(total=30, desc=what, unit="particle", leave=False), 30, True)]
    monkeypatch.setattr(evidence, "Heartbeat", lambda logger, total: Heartbeat(logger, total, every=0.0))
    with caplog.at_level(logging.INFO, logger="dgm_pyro.infer.evidence"):
        log_evidence(*args, **options)
    lines = [r.getMessage() for r in caplog.records if r.name == "dgm_pyro.infer.evidence"]
    if method == "adaptive":  # the guide's round and one adapted round of 30 draws each
        expected = [f"{what}: {k} of 60 draws (the guide's round and 1 adapted) for 3 datapoint(s); "
                    for k in (10, 20, 30, 40, 50)]
    else:
        expected = [f"{what}: {k} of 30 particles for 3 datapoint(s); " for k in (10, 20)]
    assert [line[:len(e)] for line, e in zip(lines, expected)] == expected and len(lines) == len(expected)
    assert all("elapsed" in line for line in lines)


def test_public_defaults(normal_pair, monkeypatch):
    """log_evidence's documented defaults: K = 1000 particles, no log-weights kept, no progress bar; AIS with 100
    temperatures, 5 leapfrog steps of size 0.5; adaptive importance sampling with 3 rounds, a defensive share of
    0.2 (the estimators are replaced by recorders of what they are given)."""
    import tqdm.auto

    from dgm_pyro.infer import adaptive, ais

    model, guide = normal_pair(2)
    x = torch.tensor([0.3, -0.2])
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda **kwargs: pytest.fail("a progress bar by default"))
    res = log_evidence(model, guide, x=x)
    assert res.num_particles == 1000 and res.log_weights is None and res.log_evidence.shape == (2,)
    seen = {}

    def record(name, out):
        def recorder(*args, **kwargs):
            seen[name] = (args[4], kwargs)
            return out(args[4])
        return recorder

    monkeypatch.setattr(ais, "ais_log_weights", record("ais", lambda k: torch.zeros(k, 2)))
    monkeypatch.setattr(adaptive, "adaptive_log_weights", record("adaptive", lambda k: (torch.zeros(k, 2),) * 2))
    log_evidence(model, guide, x=x, method="ais", diagnostics=False)
    log_evidence(model, guide, x=x, method="adaptive", diagnostics=False)
    assert seen["ais"] == (1000, dict(num_steps=100, hmc_steps=5, step_size=0.5))
    assert seen["adaptive"][0] == 1000 and seen["adaptive"][1]["num_rounds"] == 3
    assert seen["adaptive"][1]["defensive"] == 0.2


def test_standard_errors_and_the_elbo_from_the_weights_by_hand(lg):
    """From the kept log-weights l_k: log p = logsumexp(l) - log K, its delta-method standard error
    sd(w) / (sqrt(K) mean(w)) with w = exp(l - max l), the ELBO mean(l) with standard error sd(l) / sqrt(K), the
    effective sample size 1 / sum of squared normalised weights. One particle has no standard error (NaN, and no
    warning about degrees of freedom); two have one."""
    import warnings

    truth, x, y = lg
    guide = shifted_guide(truth, 0.3, 0.6)
    res = log_evidence(truth.model, guide, x[:4], y[:4], num_particles=50, keep_log_weights=True, warn=False)
    lw = res.log_weights
    w = torch.exp(lw - lw.max(0).values)
    torch.testing.assert_close(res.log_evidence, torch.logsumexp(lw, 0) - math.log(50))
    torch.testing.assert_close(res.stderr, w.std(0) / (math.sqrt(50) * w.mean(0)))
    torch.testing.assert_close(res.elbo, lw.mean(0))
    torch.testing.assert_close(res.elbo_stderr, lw.std(0) / math.sqrt(50))
    torch.testing.assert_close(res.ess, 1 / (w / w.sum(0)).pow(2).sum(0))

    def shifted(c):  # z ~ N(0, 1), x ~ N(z, 1), times exp(c): at c = -1000 weights that exp() alone underflows
        def model(x):
            with pyro.plate("rows", 4):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)
                pyro.factor("c", torch.full((4,), c, dtype=torch.float64))
        return model

    def wide(x):
        with pyro.plate("rows", 4):
            pyro.sample("z", dist.Normal(0.5 * x, 1.5))

    rows = torch.tensor([0.3, -1.2, 2.5, 0.0], dtype=torch.float64)
    pyro.set_rng_seed(0)
    a = log_evidence(shifted(0.0), wide, rows, num_particles=50, warn=False)
    pyro.set_rng_seed(0)
    b = log_evidence(shifted(-1000.0), wide, rows, num_particles=50, warn=False)
    torch.testing.assert_close(b.log_evidence, a.log_evidence - 1000)
    for name in ("stderr", "ess", "elbo_stderr"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = log_evidence(truth.model, guide, x[:4], y[:4], num_particles=1)
    assert one.stderr.isnan().all() and one.elbo_stderr.isnan().all() and one.stderr.shape == (4,)
    two = log_evidence(truth.model, guide, x[:4], y[:4], num_particles=2)
    assert two.stderr.isfinite().all() and two.elbo_stderr.isfinite().all()


def test_adaptive_reports_the_guides_elbo_not_its_own_proposals(lg):
    """Adaptive importance sampling estimates log p from its fitted proposals, but the ELBO it reports is the
    guide's: for the linear-Gaussian model, log p(x) - KL(q || posterior) exactly (within 5 standard errors)."""
    truth, x, y = lg
    post = truth.posterior(x[:4], y[:4])
    q = dist.Normal(post.loc + 0.3, 0.6 * torch.ones_like(post.loc)).to_event(1)
    exact_elbo = truth.log_marginal(x[:4], y[:4]) - torch.distributions.kl_divergence(q, post)
    res = log_evidence(truth.model, shifted_guide(truth, 0.3, 0.6), x[:4], y[:4], num_particles=2000,
                       method="adaptive", warn=False)
    assert ((res.elbo - exact_elbo).abs() < 5 * res.elbo_stderr).all()
    assert (res.log_evidence - res.elbo > 0.5).all()  # the gap is the KL, not closed by the guide's own draws


def test_a_model_that_does_not_broadcast_over_particles_is_named_in_one_line():
    def guide(x):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    def make(error):
        def model(x):
            with pyro.plate("data", 3):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                if z.dim() > 1:
                    raise error
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        return model

    prefix = "the vectorised pass over particles failed ("
    suffix = ("); the model or guide may not broadcast over a leading particle dimension: pass vectorize=False")
    for error, shown in [(RuntimeError("  shape mismatch " + "x" * 300 + "\nsecond line"),
                          "shape mismatch " + "x" * 185), (ValueError(), "ValueError")]:
        with pytest.raises(DgmPyroError) as info:
            log_evidence(make(error), guide, torch.zeros(3), num_particles=4)
        assert str(info.value) == prefix + shown + suffix
    res = log_evidence(make(RuntimeError()), guide, torch.zeros(3), num_particles=4, vectorize=False)
    assert res.log_evidence.shape == (3,)


def test_the_khat_warning_counts_the_unreliable_datapoints_and_points_at_the_caller(lg):
    """A guide far too narrow: k-hat > 0.7 for every datapoint, said once in one line that counts them, attributed to
    the caller's line (not the library's); with ``warn=False``, or a good guide, nothing."""
    import warnings

    truth, x, y = lg
    narrow = shifted_guide(truth, 1.0, 0.05)
    with pytest.warns(RuntimeWarning) as record:
        res = log_evidence(truth.model, narrow, x[:5], y[:5], num_particles=200)
    bad = int((res.khat > 0.7).sum())
    assert bad >= 3 and len(record) == 1 and record[0].filename == __file__
    assert str(record[0].message) == (
        f"PSIS k-hat > 0.7 for {bad} of 5 datapoints: their importance-sampled evidence is unreliable (the guide is a "
        "poor proposal); use more particles or a better guide")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log_evidence(truth.model, narrow, x[:5], y[:5], num_particles=200, warn=False)
        log_evidence(truth.model, truth.exact_guide, x[:5], y[:5], num_particles=200)


def test_importance_weights_carry_the_guides_gradient_unless_detached(lg):
    """By default log w = log p - log q has the gradient of q's parameters through both the draw and the density;
    with ``detach_guide`` only through the draw (the DReG estimator's half)."""
    from dgm_pyro.infer.weights import log_importance_weights

    truth, x, y = lg
    shift = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)

    def guide(x, y):
        post = truth.posterior(x, y)
        with pyro.plate("data", y.shape[0]):
            pyro.sample("z", dist.Normal(post.loc + shift, scale * torch.ones_like(post.loc)).to_event(1))

    grads = []
    for detach in (False, True):
        pyro.set_rng_seed(0)
        lw, _ = log_importance_weights(truth.model, guide, (x[:3], y[:3]), {}, 5, True, {-1}, 1, detach_guide=detach)
        grads.append(torch.autograd.grad(lw.sum(), scale))
    pyro.set_rng_seed(0)
    default, _ = log_importance_weights(truth.model, guide, (x[:3], y[:3]), {}, 5, True, {-1}, 1)
    assert torch.allclose(torch.autograd.grad(default.sum(), scale)[0], grads[0][0])
    assert not torch.allclose(grads[0][0], grads[1][0])


def test_batch_plates_are_the_plates_every_site_shares_outermost_first(grid_pair):
    """The plates every sample site of model and guide shares, sorted by dim (outermost first, whatever their names),
    the largest nesting and the number of datapoints; a global site shares no plate; a model without plates has
    nesting 0; enumerated sites and a model without sample sites are refused word for word."""
    from dgm_pyro.infer.evidence import batch_plates

    assert batch_plates(*grid_pair, (torch.zeros(2, 3),), {}) == ([("rows", -2), ("cols", -1)], 2, 6)

    def with_global(x):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3):
            pyro.sample("x", dist.Normal(g, 1.0), obs=x)

    def global_guide(x):
        pyro.sample("g", dist.Normal(0.0, 1.0))

    assert batch_plates(with_global, global_guide, (torch.zeros(3),), {}) == ([], 1, 1)

    def global_observed_first(x):  # the guide's one site is in the plate; the model's first is not
        pyro.sample("c", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def local_guide(x):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    assert batch_plates(global_observed_first, local_guide, (torch.zeros(3),), {}) == ([], 1, 1)

    def no_plates(x):
        pyro.sample("x", dist.Normal(pyro.sample("g", dist.Normal(0.0, 1.0)), 1.0), obs=x)

    assert batch_plates(no_plates, global_guide, (torch.tensor(0.5),), {}) == ([], 0, 1)

    def enumerated_guide(x):
        pyro.sample("g", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})

    with pytest.raises(DgmPyroError) as info:
        batch_plates(no_plates, enumerated_guide, (torch.tensor(0.5),), {})
    assert str(info.value) == "site 'g' is enumerated; log_evidence needs sampled or observed sites only"

    def nothing(x):
        pass

    with pytest.raises(DgmPyroError) as info:
        batch_plates(nothing, nothing, (None,), {})
    assert str(info.value) == "the model has no sample sites; nothing to estimate"


def test_unguided_latents_are_named_in_a_warning_only_when_asked_pointing_at_the_callers_line():
    import warnings

    from dgm_pyro.infer.evidence import batch_plates

    def model(x):
        with pyro.plate("data", 2):
            v = pyro.sample("v", dist.Normal(0.0, 1.0))
            w = pyro.sample("w", dist.Normal(v, 1.0))
            pyro.sample("x", dist.Normal(w, 1.0), obs=x)

    def guide(x):
        pass

    x = torch.tensor([0.3, -0.2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch_plates(model, guide, (x,), {})
    with pytest.warns(UserWarning) as record:
        log_evidence(model, guide, x, num_particles=4)
    assert len(record) == 1 and record[0].filename == __file__
    assert str(record[0].message) == (
        "model latent site(s) 'v', 'w' have no guide site: they are drawn from their prior as part of the proposal "
        "(their prior terms cancel, so the estimate stays correct, but it needs many particles when the prior is far "
        "from their posterior)")


def test_a_site_whose_log_density_is_the_number_zero_counts_nothing():
    """Pyro allows a log-density that is the number 0 (not a tensor; "a tensor or zero"): the estimate is the one
    without that site, on the same draws."""
    class Flat(dist.Normal):
        def log_prob(self, value):
            return 0.0

    def make(extra):
        def model(x):
            with pyro.plate("data", 2):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)
                if extra:
                    pyro.sample("extra", Flat(0.0, 1.0), obs=torch.tensor([5.0, -7.0]))
        return model

    def guide(x):
        with pyro.plate("data", 2):
            pyro.sample("z", dist.Normal(0.5 * x, 0.8))

    x = torch.tensor([0.3, -0.2])
    pyro.set_rng_seed(0)
    a = log_evidence(make(False), guide, x, num_particles=20)
    pyro.set_rng_seed(0)
    b = log_evidence(make(True), guide, x, num_particles=20)
    torch.testing.assert_close(b.log_evidence, a.log_evidence)
