"""DenseGraphBernoulli: the observed snapshots' log-likelihood from the edges and a blocked softplus sum equals the
plain Bernoulli log-likelihood of the full logits, value and gradient."""

import pytest
import torch

from dgm_pyro.data.graphs import edge_indicator, pair_index
from dgm_pyro.models import graph_likelihood
from dgm_pyro.models.graph_likelihood import DenseGraphBernoulli


def _graph(directed, n=9, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    edges = []
    for _ in range(t):
        a = torch.rand(n, n, generator=g) < 0.3
        a.fill_diagonal_(False)
        edges.append((a if directed else a.triu(1)).nonzero().T.contiguous())
    pairs = pair_index(n, directed)
    keys = pairs[0] * n + pairs[1]
    memory_keys = torch.unique(torch.cat([e[0] * n + e[1] for e in edges]))
    return edges, keys, memory_keys


@pytest.mark.parametrize("directed", [False, True])
@pytest.mark.parametrize("memory, proximity", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("block_snapshots", [1, 2, 100])
# 4: the last snapshot's logits pass softplus's threshold of 20; 12: exp overflows there (logits above 88.7)
@pytest.mark.parametrize("scale", [1.0, 4.0, 12.0])
@pytest.mark.parametrize("band_rows", [128, 2, 1])  # 128: whole snapshots; 2, 1: 3 bands of 3 rows, 5 of 2
def test_observed_log_prob_and_gradients_match_the_full_logits(directed, memory, proximity, block_snapshots, scale,
                                                             band_rows, monkeypatch):
    n, t = 9, 5
    monkeypatch.setattr(graph_likelihood, "BLOCK_BYTES", 4 * n * n * block_snapshots)
    monkeypatch.setattr(graph_likelihood, "TRIANGLE_ROWS", band_rows)
    edges, keys, memory_keys = _graph(directed, n, t)
    torch.manual_seed(1)
    last = torch.ones(t, 1, 1)
    last[-1] = scale
    params = {"g": last * torch.randn(t, n, 4), "h": last * torch.randn(t, n, 4), "bias": torch.tensor(-1.3),
              "memory": torch.randn(t, memory_keys.shape[0]), "weight": torch.tensor(0.4)}
    for p in params.values():
        p.requires_grad_(True)
    prox = torch.rand(t, keys.shape[0]) * 5
    indicator = edge_indicator(edges, keys, n)

    def build():
        return DenseGraphBernoulli(params["g"], params["g"] if not directed else params["h"], params["bias"], keys, n,
                                   memory=params["memory"] if memory else None,
                                   memory_keys=memory_keys if memory else None,
                                   proximity=prox if proximity else None,
                                   weight=params["weight"] if proximity else None,
                                   observed=edges, indicator=indicator)

    fast = build().log_prob(indicator)
    fast_grads = torch.autograd.grad(fast, list(params.values()), allow_unused=True)
    with torch.no_grad():  # the value alone (no gradient computed in the forward): the same number
        assert float(build().log_prob(indicator)) == float(fast.detach())
    d = build()
    plain = d.log_prob(indicator.clone())  # another tensor: scored from the full logits
    want = torch.distributions.Bernoulli(logits=d.logits).log_prob(indicator).sum()
    plain_grads = torch.autograd.grad(plain, list(params.values()), allow_unused=True)
    assert fast.shape == () and float(fast.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert float(plain.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    for name, a, b in zip(params, fast_grads, plain_grads):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0, name
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


def test_logits_samples_and_batched_values():
    """The logits add the memory at its pairs and the weighted proximity everywhere; draws have the event shape
    (T, P) and their mean is sigmoid(logits); a batch of values gets one log-probability each."""
    n, t = 6, 3
    edges, keys, memory_keys = _graph(False, n, t, seed=2)
    g = torch.randn(t, n, 2)
    memory = torch.randn(t, memory_keys.shape[0])
    prox = torch.rand(t, keys.shape[0])
    d = DenseGraphBernoulli(g, g, torch.tensor(0.5), keys, n, memory=memory, memory_keys=memory_keys,
                            proximity=prox, weight=torch.tensor(2.0))
    want = (g @ g.transpose(-1, -2)).flatten(-2)[:, keys] + 0.5 + 2.0 * prox
    want[:, torch.searchsorted(keys, memory_keys)] += memory
    torch.testing.assert_close(d.logits, want)
    torch.manual_seed(0)
    draws = d.sample((4000,))
    assert draws.shape == (4000, t, keys.shape[0]) and d.event_shape == (t, keys.shape[0])
    assert torch.allclose(draws.mean(0), torch.sigmoid(want), atol=0.05)
    values = draws[:3]
    lp = d.log_prob(values)
    assert lp.shape == (3,)
    torch.testing.assert_close(lp, torch.distributions.Bernoulli(logits=want).log_prob(values).sum((-2, -1)))
    with pytest.raises(ValueError, match="memory needs memory_keys"):
        DenseGraphBernoulli(g, g, torch.tensor(0.5), keys, n, memory=memory)
    with pytest.raises(ValueError, match="come together"):
        DenseGraphBernoulli(g, g, torch.tensor(0.5), keys, n, observed=edges)


def test_any_set_of_pairs_is_masked_like_the_full_logits():
    """Pairs that are neither every ordered pair nor every u < v (here every other ordered pair) are summed through
    the general mask: the same value and gradient as the full logits."""
    n, t = 8, 3
    all_edges, all_keys, _ = _graph(True, n, t, seed=4)
    keys = all_keys[::2]
    edges = []
    for e in all_edges:
        k = e[0] * n + e[1]
        k = k[torch.isin(k, keys)]
        edges.append(torch.stack([k // n, k % n]))
    g = torch.randn(t, n, 3, requires_grad=True)
    h = torch.randn(t, n, 3, requires_grad=True)
    bias = torch.tensor(0.2, requires_grad=True)
    indicator = edge_indicator(edges, keys, n)
    d = DenseGraphBernoulli(g, h, bias, keys, n, observed=edges, indicator=indicator)
    fast = d.log_prob(indicator)
    want = torch.distributions.Bernoulli(logits=d.logits).log_prob(indicator).sum()
    torch.testing.assert_close(fast, want)
    for a, b in zip(torch.autograd.grad(fast, (g, h, bias)), torch.autograd.grad(want, (g, h, bias))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loc, sd", [(-8.0, 3.0), (-20.0, 3.0), (3.0, 30.0)])
def test_softplus_sum_of_many_pairs_is_float32_exact(loc, sd):
    """The blocked sum over 4 x 10^5 pairs (sparse-graph logits around -8; nearly all below -16.6, where 1 + e^l
    rounds to 1; logits up to about +100, nine rows of them above 88.7, where e^l overflows) against float64: within
    the documented bound of 2^-24 per pair plus float32's summation error, and its gradient the sigmoid."""
    torch.manual_seed(0)
    n, t = 200, 10
    g = torch.randn(t, n, 1) * sd
    g = torch.cat([g, torch.ones_like(g)], -1).requires_grad_(True)  # logits l_uv = g_u * 1 + loc
    h = torch.cat([torch.ones(t, n, 1), torch.full((t, n, 1), loc)], -1)
    total = graph_likelihood._SoftplusSum.apply(g, h, None, None, torch.tensor(0.0), None, None, torch.tensor(-1),
                                                4)
    logits = (g @ h.transpose(-1, -2)).detach().double()
    logits.diagonal(dim1=-2, dim2=-1).fill_(-torch.inf)  # the diagonal is masked
    want = torch.nn.functional.softplus(logits).sum()
    bound = t * n * (n - 1) * 2.0 ** -24 + 1e-6 * float(want)
    assert abs(float(total) - float(want)) <= bound
    (grad,) = torch.autograd.grad(total, g)
    torch.testing.assert_close(grad[..., 0].double(), torch.sigmoid(logits).sum(-1), rtol=1e-5, atol=1e-6)

