"""MarkovNormal against the exact joint Gaussian of a linear (AR(1)) chain."""

import pytest
import torch

from dgm_pyro.models import MarkovNormal

A, SIGMA = 0.8, 0.5


def _ar1(z, c):
    """Z_t | Z_{t-1} ~ Normal(a Z_{t-1} + c_t, sigma^2) (c = 0 when no inputs)."""
    loc = A * z if c is None else A * z + c
    return loc, torch.full_like(loc, SIGMA)


def _joint(init: torch.Tensor, num_steps: int, inputs=None) -> torch.distributions.MultivariateNormal:
    """The exact Gaussian of Z_{1:T} for one scalar coordinate started at ``init``: mean a^t z0 (+ inputs),
    Cov(Z_s, Z_t) = sigma^2 sum_{k=1..min(s,t)} a^(s-k) a^(t-k)."""
    mean, m = [], float(init)
    for t in range(num_steps):
        m = A * m + (0.0 if inputs is None else float(inputs[t]))
        mean.append(m)
    cov = torch.zeros(num_steps, num_steps, dtype=torch.float64)
    for s in range(1, num_steps + 1):
        for t in range(1, num_steps + 1):
            cov[s - 1, t - 1] = SIGMA ** 2 * sum(A ** (s - k) * A ** (t - k) for k in range(1, min(s, t) + 1))
    return torch.distributions.MultivariateNormal(torch.tensor(mean, dtype=torch.float64), cov)


@pytest.mark.parametrize("with_inputs", [False, True])
def test_log_prob_is_the_exact_joint_gaussian(with_inputs):
    torch.manual_seed(0)
    init = torch.tensor([0.3, -1.2])
    inputs = torch.randn(5, 2) if with_inputs else None
    chain = MarkovNormal(init, _ar1, 5, inputs=inputs)
    assert chain.event_shape == (5, 2) and chain.batch_shape == ()
    path = torch.randn(7, 5, 2)  # a sample shape of 7 paths
    got = chain.log_prob(path)
    want = sum(_joint(init[j], 5, None if inputs is None else inputs[:, j]).log_prob(path[..., j].double())
               for j in range(2))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_draws_have_the_joint_moments():
    torch.manual_seed(1)
    init = torch.tensor([2.0])
    chain = MarkovNormal(init, _ar1, 6)
    draws = chain.rsample((40000,))[..., 0].double()  # (S, T)
    joint = _joint(init[0], 6)
    se_mean = joint.variance.sqrt() / 200
    assert bool(((draws.mean(0) - joint.mean).abs() < 4 * se_mean).all())
    torch.testing.assert_close(torch.cov(draws.T), joint.covariance_matrix, rtol=0.05, atol=0.01)


def test_cached_score_of_a_draw_equals_the_batched_one_and_has_gradients():
    init = torch.zeros(3, 2, requires_grad=True)
    inputs = torch.randn(4, 3, 2, requires_grad=True)
    chain = MarkovNormal(init, _ar1, 4, inputs=inputs)
    path = chain.rsample()
    cached = chain.log_prob(path)
    fresh = MarkovNormal(init, _ar1, 4, inputs=inputs).log_prob(path)
    torch.testing.assert_close(cached, fresh)
    cached.backward()
    assert inputs.grad is not None and init.grad is not None


def test_scheduled_sampling():
    """eps = 1 - 1e-12 never switches: the plain chain. eps = 0 feeds the step to Z_{t+1} the prediction
    Z^_t = loc_t + scale_t noise_t, here with scale ~ 0 so that Z^_t is the transition mean."""
    init = torch.tensor([1.0])
    path = torch.tensor([[5.0], [-3.0], [0.5]])
    torch.testing.assert_close(MarkovNormal(init, _ar1, 3, teacher_forcing=1 - 1e-12).log_prob(path),
                               MarkovNormal(init, _ar1, 3).log_prob(path))

    def tight(z, c):
        return A * z, torch.full_like(z, 1e-6)

    loc, _ = MarkovNormal(init, tight, 3, teacher_forcing=0.0).transitions(path)
    torch.testing.assert_close(loc[:, 0], torch.tensor([A, A ** 2, A ** 3]), atol=1e-4, rtol=0)
    loc, _ = MarkovNormal(init, tight, 3).transitions(path)
    torch.testing.assert_close(loc[:, 0], torch.tensor([A, A * 5.0, A * -3.0]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_steps"):
        MarkovNormal(torch.zeros(2), _ar1, 0)
    with pytest.raises(ValueError, match=r"one entry per step \(3\); got 2"):
        MarkovNormal(torch.zeros(2), _ar1, 3, inputs=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="teacher_forcing"):
        MarkovNormal(torch.zeros(2), _ar1, 3, teacher_forcing=1.5)


def test_a_one_step_chain_is_one_transition():
    init = torch.tensor([0.3, -1.2])
    z = torch.tensor([[0.1, 0.4]])
    want = torch.distributions.Normal(A * init, SIGMA).log_prob(z[0]).sum()
    torch.testing.assert_close(MarkovNormal(init, _ar1, 1).log_prob(z), want)


def test_a_draw_of_several_paths_is_scored_from_its_cache_and_other_paths_afresh():
    """After rsample((3,)), the cached transitions of the draw are laid out like a fresh scoring's (sample, T, S);
    a path that is not the draw (another tensor) is scored afresh, not from the cache."""
    torch.manual_seed(1)
    init = torch.tensor([0.3, -1.2])
    chain = MarkovNormal(init, _ar1, 4, inputs=torch.randn(4, 2))
    draw = chain.rsample((3,))
    assert draw.shape == (3, 4, 2)
    fresh = MarkovNormal(init, _ar1, 4, inputs=chain.inputs)
    torch.testing.assert_close(chain.log_prob(draw), fresh.log_prob(draw.clone()))
    other = draw + 0.25
    torch.testing.assert_close(chain.log_prob(other), fresh.log_prob(other))


def test_scheduled_sampling_feeds_the_chains_own_prediction():
    """eps = 0: the step to Z_{t+1} gets Z^_t = loc_t + scale_t noise_t, with the noise drawn when the chain was
    made; the path's log-density is sum_t log N(Z_t; A Z^_{t-1}, sigma^2), computed here by hand."""
    torch.manual_seed(2)
    init = torch.tensor([1.0, -0.5])
    chain = MarkovNormal(init, _ar1, 3, teacher_forcing=0.0)
    path = torch.randn(3, 2)
    noise = chain._noise
    fed, want = init, torch.zeros(())
    for t in range(3):
        loc = A * fed
        want = want + torch.distributions.Normal(loc, SIGMA).log_prob(path[t]).sum()
        fed = loc + SIGMA * noise[t]
    torch.testing.assert_close(chain.log_prob(path), want)
    assert float(noise.abs().min()) > 1e-3  # so that loc + sigma noise and loc + sigma / noise differ


def test_scheduled_sampling_noise_has_the_chains_dtype():
    init = torch.zeros(2, dtype=torch.float64)
    assert MarkovNormal(init, _ar1, 3, teacher_forcing=0.5)._noise.dtype == torch.float64
