"""The hurdle log-normal emission against scipy and its moments, and in the GraphSSM."""

import math

import pyro
from pyro import poutine
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from scipy import stats

from dgm_pyro.data.graphs import dynamic_sbm, degree_features
from dgm_pyro.models import GraphSSM, HurdleLogNormal


def test_log_density_matches_scipy():
    logits, loc, scale = torch.tensor([0.4, -1.2]), torch.tensor([0.3, -0.5]), torch.tensor([0.7, 1.4])
    d = HurdleLogNormal(logits, loc, scale)
    x = torch.tensor([[0.0, 0.0], [1.7, 0.2], [0.05, 3.0]])
    got = d.log_prob(x)
    pi = torch.sigmoid(logits)
    for row in range(3):
        for f in range(2):
            v = float(x[row, f])
            want = math.log(1 - pi[f]) if v == 0 else (
                math.log(pi[f]) + stats.lognorm(s=float(scale[f]), scale=math.exp(float(loc[f]))).logpdf(v))
            assert float(got[row, f]) == pytest.approx(want, abs=1e-5)


def test_sampling_matches_the_moments_and_the_zero_share():
    torch.manual_seed(0)
    d = HurdleLogNormal(torch.tensor(0.5), torch.tensor(0.2), torch.tensor(0.5))
    draws = d.sample((400_000,))
    pi = float(torch.sigmoid(torch.tensor(0.5)))
    assert float((draws == 0).double().mean()) == pytest.approx(1 - pi, abs=0.003)
    assert float(draws.mean()) == pytest.approx(float(d.mean), rel=0.01)
    assert float(draws.var()) == pytest.approx(float(d.variance), rel=0.02)
    assert float(d.mean) == pytest.approx(pi * math.exp(0.2 + 0.125), rel=1e-6)
    assert bool((draws >= 0).all())


def test_graph_ssm_with_hurdle_features_trains_with_pyro_optim_and_forecasts_atoms_at_zero():
    """A plain Pyro program: SVI with pyro.optim lowers the loss, Predictive draws its latents, and forecast
    draws are >= 0 with a point mass at 0, as the data's log(1 + degree)."""
    pyro.set_rng_seed(0)
    seq = dynamic_sbm(num_nodes=20, num_steps=6, num_features=1, seed=0)
    x = degree_features(seq.edges, 20, False)  # count-like: exact zeros for isolated nodes
    assert bool((x == 0).any())
    m = GraphSSM(20, 1, latent_dim=3, hidden=16, feature_emission="hurdle")
    pyro.clear_param_store()
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    losses = [svi.step(x, seq.edges) for _ in range(60)]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    pred = Predictive(m.model, guide=m.guide, num_samples=3, return_sites=["z"])(x, seq.edges)
    assert pred["z"].shape[0] == 3 and pred["z"].shape[-3:] == (6, 20, 3)
    out = m.forecast(x, seq.edges, horizon=2, num_samples=200)
    assert bool((out["X"] >= 0).all()) and bool((out["X"] == 0).any()) and bool((out["X"] > 0).any())
    log_lik = m.forecast(x, seq.edges, horizon=1, num_samples=50, future=(x[-1:], seq.edges[-1:]))["log_lik"]
    assert torch.isfinite(log_lik).all()


def test_hurdle_refuses_a_deterministic_decoder():
    with pytest.raises(ValueError, match="does not apply to the hurdle"):
        GraphSSM(5, 1, feature_emission="hurdle", deterministic_features=True)


def test_negative_binomial_emission_against_scipy_its_moments_and_pyro_inference():
    """``feature_emission="negbin"``: the log-mass is scipy's nbinom with n = r and p = r / (r + mu), draws
    have mean mu and variance mu + mu^2 / r, and the model trains with SVI and pyro.optim and forecasts counts."""
    pyro.set_rng_seed(0)
    seq = dynamic_sbm(num_nodes=20, num_steps=6, num_features=1, seed=0)
    counts = torch.stack([torch.bincount(e.flatten(), minlength=20) for e in seq.edges]).float().unsqueeze(-1)
    m = GraphSSM(20, 1, latent_dim=3, hidden=16, feature_emission="negbin")
    h = m.emission_input(m.z0.detach(), counts[-1])
    d = m.feature_distribution(h)
    log_mean, raw = m.feature_net(h).split(1, -1)
    mu, r = log_mean.exp().detach().squeeze(-1), (torch.nn.functional.softplus(raw) + 1e-3).detach().squeeze(-1)
    want = stats.nbinom(r.numpy(), (r / (r + mu)).numpy()).logpmf(counts[-1, :, 0].numpy())
    assert torch.allclose(d.log_prob(counts[-1]).detach().double(), torch.as_tensor(want), atol=1e-4)
    draws = d.sample((100_000,))[..., 0]
    assert bool((draws == draws.round()).all()) and bool((draws >= 0).all())
    torch.testing.assert_close(draws.mean(0), mu, rtol=0.03, atol=0.01)
    torch.testing.assert_close(draws.var(0), mu + mu ** 2 / r, rtol=0.06, atol=0.02)
    pyro.clear_param_store()
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    losses = [svi.step(counts, seq.edges) for _ in range(60)]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    pred = Predictive(m.model, guide=m.guide, num_samples=3, return_sites=["z"])(counts, seq.edges)
    assert pred["z"].shape[0] == 3
    out = m.forecast(counts, seq.edges, horizon=2, num_samples=100, future=(counts[-1:], seq.edges[-1:]))
    assert bool((out["X"] == out["X"].round()).all()) and bool((out["X"] >= 0).all())
    assert torch.isfinite(out["log_lik"]).all()


def test_a_per_feature_emission_mix_against_scipy_and_pyro_inference():
    """feature_emission = [hurdle, gaussian, negbin, gaussian]: log p(x_v | z_v) is the bivariate Gaussian
    of features 1 and 3 (full covariance) plus the hurdle of feature 0 plus the negative binomial of feature 2,
    each from scipy with the network's parameters; draws put each kind at its position; SVI with pyro.optim
    trains it and Predictive runs."""
    from dgm_pyro.models import FeatureBlocks

    torch.manual_seed(0)
    seq = dynamic_sbm(num_nodes=10, num_steps=5, num_features=4, seed=0)
    x = seq.x.clone()
    x[..., 0] = torch.poisson(torch.full_like(x[..., 0], 0.4)) * 1.5  # >= 0 with many zeros
    x[..., 2] = torch.poisson(torch.full_like(x[..., 2], 3.0))  # counts
    kinds = ["hurdle", "gaussian", "negbin", "gaussian"]
    m = GraphSSM(10, 4, latent_dim=3, hidden=8, feature_emission=kinds)
    assert m.feature_emission == "mixed" and m.feature_emissions == tuple(kinds)
    h = torch.randn(5, 10, 3)
    d = m.feature_distribution(h)
    assert isinstance(d, FeatureBlocks) and d.event_shape == (4,) and d.batch_shape == (5, 10)
    value = x
    got = d.log_prob(value).detach()
    out = m.feature_net(h).detach()
    loc, tril = m.feature_params(h)
    logits, hloc, hraw = out[..., 5:8].unbind(-1)
    log_mean, nraw = out[..., 8:10].unbind(-1)
    for s, v in ((0, 0), (3, 4), (4, 9)):
        cov = (tril[s, v] @ tril[s, v].T).detach().double().numpy()
        want = stats.multivariate_normal(loc[s, v].detach().double().numpy(), cov).logpdf(value[s, v, [1, 3]].numpy())
        pi = float(torch.sigmoid(logits[s, v]))
        sigma = float(torch.nn.functional.softplus(hraw[s, v]) + 1e-3)
        x0 = float(value[s, v, 0])
        want += math.log(1 - pi) if x0 == 0 else math.log(pi) + stats.lognorm(
            s=sigma, scale=math.exp(float(hloc[s, v]))).logpdf(x0)
        r = float(torch.nn.functional.softplus(nraw[s, v]) + 1e-3)
        mu = math.exp(float(log_mean[s, v]))
        want += stats.nbinom(r, r / (r + mu)).logpmf(int(value[s, v, 2]))
        assert float(got[s, v]) == pytest.approx(want, abs=1e-4)
    draws = m.feature_distribution(h[:1]).sample((2000,))
    assert bool((draws[..., 0] >= 0).all()) and bool((draws[..., 0] == 0).any())
    assert bool((draws[..., 2] == draws[..., 2].round()).all()) and bool((draws[..., 2] >= 0).all())
    assert bool((draws[..., [1, 3]] < 0).any())
    torch.testing.assert_close(draws[..., [1, 3]].mean(0)[0], loc[0].detach(), atol=0.15, rtol=0.05)
    pyro.clear_param_store()
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    losses = [svi.step(x, seq.edges) for _ in range(40)]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    pred = Predictive(m.model, guide=m.guide, num_samples=2, return_sites=["z"])(x, seq.edges)
    assert pred["z"].shape[-3:] == (5, 10, 3)
    # one kind for every feature is the single-emission model, parameter for parameter
    same = GraphSSM(10, 4, latent_dim=3, hidden=8, feature_emission=["hurdle"] * 4)
    single = GraphSSM(10, 4, latent_dim=3, hidden=8, feature_emission="hurdle")
    same.load_state_dict(single.state_dict())
    positive = x.abs() * (x > 0.5)  # >= 0 with zeros: a hurdle value in every feature
    want = single.feature_distribution(h).log_prob(positive)
    torch.testing.assert_close(same.feature_distribution(h).log_prob(positive), want, rtol=0, atol=1e-6)
    assert bool((positive == 0).any()) and bool(torch.isfinite(want).all())
    # and the whole model: the same log-joint on the same guide draw
    traces = []
    for model in (single, same):
        pyro.set_rng_seed(2)
        guide_tr = poutine.trace(model.guide).get_trace(positive, seq.edges)
        traces.append(poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(positive, seq.edges))
    assert float(traces[0].log_prob_sum()) == pytest.approx(float(traces[1].log_prob_sum()), abs=1e-4)
    with pytest.raises(ValueError, match="one per modelled feature"):
        GraphSSM(10, 4, feature_emission=["hurdle", "gaussian"])


def test_feature_blocks_refuses_blocks_that_do_not_partition_the_features():
    from dgm_pyro.models import FeatureBlocks

    normal = pyro.distributions.Normal(torch.zeros(3, 2), 1.0).to_event(1)
    with pytest.raises(ValueError, match="partition"):
        FeatureBlocks([([0, 1], normal), ([1, 2], normal)], 3)
    with pytest.raises(ValueError, match="event shape"):
        FeatureBlocks([([0], normal), ([1, 2], normal)], 3)
