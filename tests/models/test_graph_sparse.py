"""The sparse forecast sampler against the dense model: edge frequencies against the exact Bernoulli
probabilities, the path memory against the dense recursion, the top-k against the dense ranking."""

import pytest
import torch

from dgm_pyro.data.graphs import dynamic_sbm, pair_index
from dgm_pyro.models import GraphSSM
from dgm_pyro.models.graph_sparse import sparse_forecast

N = 40


def _frozen_model(directed: bool, activity: bool = False, recency: bool = False, pair_activity: bool = False
                  ) -> tuple[GraphSSM, object, torch.Tensor]:
    """A model whose paths all start from one latent draw and never move: every path's first step is an iid
    draw from one set of Bernoulli probabilities, and its second step differs only through the edge memory
    (and, with ``activity``, each path's node activity)."""
    seq = dynamic_sbm(num_nodes=N, num_steps=6, seed=0)
    if directed:
        seq.edges = [torch.cat([e, e.flip(0)], 1)[:, ::2] for e in seq.edges]
        seq.directed = True
    m = GraphSSM(N, seq.num_features, directed=directed, hidden=16, node_activity=activity, edge_recency=recency,
                 memory_activity=pair_activity)
    with torch.no_grad():  # strong memory terms, so that both of the sampler's stages matter
        if activity:  # and activity terms of both signs
            m.activity_weight.copy_(torch.tensor([0.8, -0.6] if directed else [0.8]))
            m.activity_count_weight.copy_(torch.tensor([-0.3, 0.5] if directed else [-0.3]))
        if pair_activity:  # pairs with a past edge weigh the degrees their own way
            m.memory_activity_weight.copy_(torch.tensor([[-0.9, 0.3], [0.6, -0.2]] if directed else [[-0.9], [0.6]]))
        m.edge_bias.fill_(-1.5)
        m.memory_last.fill_(2.0)
        m.memory_weight.fill_(0.5)
        if recency:  # a fast count with a weight of the other sign, decay tau = sigmoid(-0.5)
            m.memory_recent.fill_(-0.8)
            m.recent_decay_logit.fill_(-0.5)
    z = m.filter(seq.x, seq.edges, 1)
    m.filter = lambda x, e, s: z.expand(s, -1, -1)
    m.transition = lambda z: (z, torch.zeros_like(z))
    return m, seq, z


@torch.no_grad()
def _dense_probabilities(m: GraphSSM, seq, z: torch.Tensor, memory: tuple,
                         activity: torch.Tensor | None = None) -> torch.Tensor:
    """The dense probabilities (N, N) given the memory and the activity (T + 1, N, 4) or (N, 4) (its last row)."""
    activity = None if activity is None else activity[-1] if activity.dim() == 3 else activity
    return m.edge_probabilities(m.emission_input(z, seq.x[-1]),
                                tuple(None if t is None else t.unsqueeze(0) for t in memory),
                                None if activity is None else activity.unsqueeze(0))[0]


@pytest.mark.parametrize("directed, activity, clusters, pair_activity",
                         [(False, False, 64, False), (True, False, 64, False), (False, True, 64, False),
                          (True, True, 64, False), (False, False, 4, False), (True, True, 4, False),
                          (True, True, 64, True)])
def test_first_step_edges_are_the_exact_bernoulli_draws(directed, activity, clusters, pair_activity):
    """With 64 clusters of 40 nodes each cluster is about one node and its bound is tight; with 4 the bounds are
    loose and the thinning rejects most events (each kept event's pair drawn uniformly in its cluster)."""
    m, seq, z = _frozen_model(directed, activity, pair_activity=pair_activity)
    paths = 3000
    fc = sparse_forecast(m, seq.x, seq.edges, horizon=1, num_samples=paths, top_k=0, clusters=clusters)
    if clusters < N:
        assert fc["sampler"][0]["accepted"] < 0.5 * fc["sampler"][0]["events"]
    p = _dense_probabilities(m, seq, z, m.dense_memory(seq.edges), m.activity(seq.edges))
    index = fc["edge_index"]
    assert (index[1] == 0).all() and index[0].max() == paths - 1
    if directed:
        assert (index[2] != index[3]).all()
    else:
        assert (index[2] < index[3]).all()
    freq = torch.zeros(N, N).index_put_((index[2], index[3]), torch.ones(index.shape[1]), accumulate=True) / paths
    u, v = pair_index(N, directed)
    pp, ff = p[u, v].double(), freq[u, v].double()
    # both stages ran: pairs with memory drawn directly, the rest by thinning
    assert fc["sampler"][0]["accepted"] > 0 and (pp > 0.5).any()
    zscore = (ff - pp) / (pp * (1 - pp) / paths).sqrt()
    # each frequency is within 5 binomial SE of its probability, and together they are chi-square(P)
    assert zscore.abs().max() < 5
    assert abs(float((zscore ** 2).mean()) - 1) < 5 * (2 / len(pp)) ** 0.5


@pytest.mark.parametrize("activity, recency, pair_activity",
                         [(False, False, False), (True, False, False), (False, True, False), (True, True, True)])
def test_second_step_memory_is_each_paths_own_first_step(activity, recency, pair_activity):
    """The mean probability at step 2 is (1/S) sum_s sigma(l_uv + memory_term(A_s, rho M_T + A_s, C_T + A_s
    [, tau R_T + A_s]) [+ the activity terms of beta D + deg_s and K + deg_s]) with A_s path s's drawn first step:
    recomputed densely from the drawn edges, for every pair."""
    m, seq, z = _frozen_model(False, activity, recency, pair_activity)
    act = m.activity(seq.edges)[-1] if activity else None
    paths = 50
    u, v = pair_index(N, False)
    pairs = torch.stack([u, v])
    fc = sparse_forecast(m, seq.x, seq.edges, horizon=2, num_samples=paths, top_k=0, score_pairs=[pairs, pairs])
    last, decayed, count, recent = m.dense_memory(seq.edges)
    p1 = _dense_probabilities(m, seq, z, (last, decayed, count, recent), act)
    torch.testing.assert_close(fc["pair_prob"][0], p1[u, v], atol=1e-5, rtol=0)
    index = fc["edge_index"]
    total = torch.zeros(N, N)
    for s in range(paths):
        e = index[2:, (index[0] == s) & (index[1] == 0)]
        a = torch.zeros(N, N)
        a[e[0], e[1]] = 1.0
        a = a + a.T
        if act is not None:  # decayed columns beta D + deg, undecayed K + deg
            b = float(m.activity_decay.detach())
            path_act = torch.tensor([b, b, 1.0, 1.0]) * act + a.sum(-1, keepdim=True).expand(-1, 4)
        else:
            path_act = None
        fast = None if recent is None else m.recent_decay * recent + a
        total += _dense_probabilities(m, seq, z, (a, m.memory_decay * decayed + a, count + a, fast), path_act)
    torch.testing.assert_close(fc["pair_prob"][1], (total / paths)[u, v], atol=1e-5, rtol=0)


def test_later_steps_draw_each_paths_edges_with_its_own_probabilities():
    """At steps 2 and 3 every path draws pair (u, v) with its own probability p_s (given what it drew before),
    so over S paths the edge frequency minus the mean probability (1/S) sum_s p_s (``pair_prob``, checked
    against the dense recursion above) is a sum of independent zero-mean terms with variance
    (1/S^2) sum_s p_s (1 - p_s) <= p (1 - p) / S: z-scores with that bound are at most 5 and their mean square is
    not above 1 by more than 5 of its standard errors. A sampler that forgets a path's own earlier draws
    draws those pairs twice (mean square about 10 here). With node activity, which each path updates too."""
    m, seq, _ = _frozen_model(False, True)
    paths, horizon = 1500, 3
    u, v = pair_index(N, False)
    pairs = torch.stack([u, v])
    fc = sparse_forecast(m, seq.x, seq.edges, horizon=horizon, num_samples=paths, top_k=0,
                         score_pairs=[pairs] * horizon)
    index = fc["edge_index"]
    for step in (1, 2):
        at = index[:, index[1] == step]
        assert at.shape[1] == torch.unique(at[0] * N * N + at[2] * N + at[3]).numel()  # no pair twice on a path
        freq = torch.zeros(N, N).index_put_((at[2], at[3]), torch.ones(at.shape[1]), accumulate=True) / paths
        pp, ff = fc["pair_prob"][step].double(), freq[u, v].double()
        zscore = (ff - pp) / (pp * (1 - pp) / paths).sqrt()
        assert (pp > 0.5).any() and fc["sampler"][step]["accepted"] > 0  # both of the sampler's stages ran
        assert zscore.abs().max() < 5, (step, zscore.abs().max())
        assert float((zscore ** 2).mean()) < 1 + 5 * (2 / len(pp)) ** 0.5, (step, float((zscore ** 2).mean()))


def test_top_k_is_the_dense_ranking_of_new_edges():
    m, seq, z = _frozen_model(False)
    k = 4
    fc = sparse_forecast(m, seq.x, seq.edges, horizon=1, num_samples=400, top_k=k)
    p = _dense_probabilities(m, seq, z, m.dense_memory(seq.edges))
    p = p.masked_fill(seq.adjacency(seq.num_steps - 1).bool(), -1.0).fill_diagonal_(-1.0)  # new edges only
    best = p.topk(k, dim=1)
    dst, prob = fc["top_k_dst"][0], fc["top_k_prob"][0]
    assert dst.shape == (N, k)
    # every node's top k have probability above 0.05: each was drawn on some path (miss chance < 1e-8)
    assert (best.values[:, -1] > 0.05).all()
    torch.testing.assert_close(prob, best.values, atol=1e-5, rtol=0)
    assert (dst == best.indices).float().mean() > 0.95  # ties aside, the same destinations


def test_sparse_forecast_refuses_an_empty_horizon():
    m, seq, _ = _frozen_model(False)
    with pytest.raises(ValueError, match="horizon"):
        sparse_forecast(m, seq.x, seq.edges, horizon=0)


def test_a_forecast_over_its_edge_budget_is_refused_before_it_is_drawn():
    m, seq, _ = _frozen_model(False)
    with pytest.raises(ValueError, match="more than"):
        sparse_forecast(m, seq.x, seq.edges, horizon=2, num_samples=10, max_edges=100)


def test_nodes_with_equal_factors_leave_no_empty_cluster():
    """The thinning bound is taken per cluster of nodes: when nodes share their edge factors, Lloyd's algorithm
    leaves clusters empty. Those are dropped (an empty cluster's bound would be 0 x inf = NaN, and the Poisson
    draw would fail), and the first step's edges are still the exact Bernoulli draws: here every pair has the
    same probability."""
    from dgm_pyro.models.graph_sparse import _kmeans

    labels = _kmeans(torch.cat([torch.zeros(6, 3), torch.ones(4, 3)]), 5)
    assert sorted(set(labels.tolist())) == [0, 1] and labels[:6].eq(labels[0]).all()
    seq = dynamic_sbm(num_nodes=N, num_steps=4, seed=0)
    m = GraphSSM(N, seq.num_features, hidden=16, edge_memory=False, node_activity=False)
    with torch.no_grad():
        m.edge_bias.fill_(-1.0)
    z = m.z0.detach()[:1].expand(N, -1)  # every node the same latent
    m.filter = lambda x, e, s: z.expand(s, -1, -1)
    out = sparse_forecast(m, seq.x, seq.edges, horizon=1, num_samples=200)
    with torch.no_grad():
        g, h = m.edge_factors(z)
        p = float(torch.sigmoid((g[0] * h[0]).sum() + m.edge_bias))
    drawn = out["edge_index"].shape[1] / (200 * N * (N - 1) / 2)
    assert drawn == pytest.approx(p, abs=4 * (p * (1 - p) / (200 * N * (N - 1) / 2)) ** 0.5)


def test_path_memory_at_later_steps_is_the_history_recursion_over_the_paths_draws():
    """(A, M, C, R) before forecast step t of path s, computed in closed form from the path's draws (rho^t M_T +
    sum_j rho^(t-1-j) A_j, C_T + sum_j A_j, R as M with tau), equal to :class:`PairHistory`'s recursion over the
    history followed by that path's drawn snapshots, at steps 1 to 3 and for pairs with and without history."""
    from dgm_pyro.models.graph_memory import PairHistory
    from dgm_pyro.models.graph_sparse import _PathMemory

    m, seq, _ = _frozen_model(True, recency=True)
    memory = _PathMemory(m, seq.edges)
    nn_ = N * N
    hist = memory.keys
    fresh = torch.tensor([k for k in range(0, nn_, 7) if k not in set(hist.tolist()) and k // N != k % N][:6])
    gen = torch.Generator().manual_seed(0)
    paths = 2
    for _ in range(3):  # each path draws some history pairs and some fresh ones at every step
        keys = torch.cat([hist[torch.randperm(hist.numel(), generator=gen)[:8]],
                          fresh[torch.rand(6, generator=gen) < 0.5]])
        memory.drawn.append(torch.sort(torch.cat([s * nn_ + torch.unique(keys) for s in range(paths)])).values)
    query = torch.cat([hist[:20], fresh])
    for step in (1, 2, 3):
        for s in range(paths):
            drawn = [d[(d // nn_) == s] % nn_ for d in memory.drawn[:step]]
            ref = PairHistory.after(list(seq.edges) + [torch.stack([d // N, d % N]) for d in drawn], N,
                                    m.memory_decay.detach(), m.recent_decay.detach())
            expected = ref.at(torch.full_like(query, len(seq.edges) + step), query // N, query % N)
            assert len(expected) == 4 and expected[3] is not None
            for got, want in zip(memory.at(step, s * nn_ + query), expected, strict=True):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_memory_pairs_drawn_a_block_of_paths_at_a_time_are_each_paths_own(monkeypatch):
    """The pairs with memory are drawn for blocks of paths (at most ``_CHUNK`` path-and-pair keys at once): with
    blocks of two paths, every path still draws each of its pairs at most once per step, and only its own."""
    from dgm_pyro.models import graph_sparse
    from dgm_pyro.models.graph_sparse import _PathMemory

    m, seq, _ = _frozen_model(False)
    monkeypatch.setattr(graph_sparse, "_CHUNK", 2 * _PathMemory(m, seq.edges).keys.numel())
    paths = 7
    index = sparse_forecast(m, seq.x, seq.edges, horizon=3, num_samples=paths, top_k=0)["edge_index"].long()
    key = (index[1] * paths + index[0]) * N * N + index[2] * N + index[3]
    assert torch.unique(key).numel() == key.numel()
    assert set(index[0].tolist()) == set(range(paths)) and set(index[1].tolist()) == {0, 1, 2}


def test_empty_requests_give_empty_answers_of_the_right_type():
    """Scores asked for no pairs are an empty float tensor; a step where no path draws a new edge has no top-k
    destination (-1, long) and no probability (NaN, float) for any node."""
    m, seq, _ = _frozen_model(False)
    with torch.no_grad():
        m.edge_bias.fill_(-40.0)
    fc = sparse_forecast(m, seq.x, seq.edges, horizon=1, num_samples=5, top_k=3,
                         score_pairs=[torch.zeros(2, 0, dtype=torch.long)])
    assert fc["edge_index"].shape == (4, 0)
    assert fc["pair_prob"][0].shape == (0,) and fc["pair_prob"][0].dtype == torch.float32
    assert fc["top_k_dst"].dtype == torch.long and (fc["top_k_dst"] == -1).all()
    assert fc["top_k_prob"].dtype == torch.float32 and fc["top_k_prob"].isnan().all()


def test_path_degrees_count_each_paths_edges_by_hand():
    from dgm_pyro.models.graph_sparse import _path_degrees

    n, nn_ = 3, 9
    drawn = torch.tensor([0 * nn_ + 0 * n + 1, 0 * nn_ + 0 * n + 2, 1 * nn_ + 1 * n + 0])  # 0->1, 0->2 | 1->0
    out = _path_degrees(drawn, 2, n, directed=True)
    assert out.shape == (2, n, 2)
    assert out[..., 0].tolist() == [[2, 0, 0], [0, 1, 0]] and out[..., 1].tolist() == [[0, 1, 1], [1, 0, 0]]
    both = _path_degrees(drawn, 2, n, directed=False)
    assert (both[..., 0] == both[..., 1]).all() and both[..., 0].tolist() == [[2, 1, 1], [1, 1, 0]]


def test_ranked_orders_by_node_then_descending_score_with_ties_by_position():
    from dgm_pyro.models.graph_sparse import _ranked

    gen = torch.Generator().manual_seed(0)
    node = torch.randint(0, 3, (300,), generator=gen)
    score = torch.randint(0, 2, (300,), generator=gen).float()  # many ties
    order, rank = _ranked(node, score)
    expected = sorted(range(300), key=lambda i: (int(node[i]), -float(score[i]), i))
    assert order.tolist() == expected
    sorted_node = node[order].tolist()
    assert rank.tolist() == [sorted_node[:i].count(sorted_node[i]) for i in range(300)]


def _fake_step(paths: int, n: int):
    """A step of ``paths`` paths and ``n`` nodes whose mean probability of pair (u, v) is v / 10."""
    from types import SimpleNamespace

    return SimpleNamespace(memory=SimpleNamespace(n=n, nn=n * n), g=torch.zeros(paths, n, 1),
                           mean_probability=lambda src, dst: dst.float() / 10)


@pytest.mark.parametrize("k, budget, pool", [(2, 0, 4), (1, 252, 4), (1, 0, 2), (3, 0, 6)])
def test_top_k_ranks_the_pool_of_each_nodes_most_drawn_new_pairs(monkeypatch, k, budget, pool):
    """Node 0 drew its new pair (0, j) on 8 - j of the 7 paths (j = 1..7), and (0, j) has probability j / 10: the
    top k are the k most probable of the m = max(2k, budget // (S N)) most drawn, i.e. pool, ..., pool - k + 1.
    Node 1 drew one new pair (1, 2) and one (1, 3) that is an edge at the origin (not new); the other nodes
    none: -1 and NaN where a node has fewer than k."""
    from dgm_pyro.models import graph_sparse
    from dgm_pyro.models.graph_sparse import _top_k

    monkeypatch.setattr(graph_sparse, "_TOP_K_BUDGET", budget)
    paths, n = 7, 8
    keys = [s * n * n + j for j in range(1, 8) for s in range(8 - j)] + [0 * n * n + n + 2, n + 3, n * n + n + 3]
    origin = torch.tensor([n + 3])
    dst, prob = _top_k(_fake_step(paths, n), torch.sort(torch.tensor(keys)).values, origin, k, directed=True)
    assert dst.dtype == torch.long and dst.shape == prob.shape == (n, k)
    assert dst[0].tolist() == list(range(pool, pool - k, -1))
    torch.testing.assert_close(prob[0], dst[0].float() / 10)
    assert dst[1].tolist() == [2] + [-1] * (k - 1) and prob[1, 0] == pytest.approx(0.2)
    assert (dst[2:] == -1).all() and prob[2:].isnan().all() and prob[1, 1:].isnan().all()


def test_kmeans_separates_well_separated_groups():
    """Three groups far apart (10, 10 and 1 points, the lone one last) are three clusters after Lloyd's
    iterations from evenly spaced rows (a lone point's cluster is centred on it: at half its coordinates, here
    nearer the first group's centre, it would lose it)."""
    from dgm_pyro.models.graph_sparse import _kmeans

    gen = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(10, 2, generator=gen) * 0.1 + torch.tensor([10.0, 0.0]),
                        torch.randn(10, 2, generator=gen) * 0.1 + 10, torch.tensor([[16.0, 0.0]])])
    groups = [0] * 10 + [1] * 10 + [2]
    labels = _kmeans(points, 3).tolist()
    assert sorted(set(labels)) == [0, 1, 2]
    assert all((labels[i] == labels[j]) == (groups[i] == groups[j]) for i in range(21) for j in range(21))


def _bare_step(bias: float, g: torch.Tensor, h: torch.Tensor):
    """A forecast step without edge memory: factors g, h (S, N, e) and an edge bias."""
    from types import SimpleNamespace

    from dgm_pyro.models.graph_sparse import _PathMemory, _Step

    module = SimpleNamespace(num_nodes=g.shape[1], edge_memory=False, edge_bias=torch.tensor(bias))
    return _Step(module, g, h, _PathMemory(module, []), 0)


def test_the_thinning_bound_is_tight_where_a_clusters_factors_are_equal():
    """Four groups of 10 nodes, each group's h equal: k-means finds the groups, each block's bound is its logits
    (+ 1e-4), and the thinning keeps every event but the u = v ones and the repeats of a pair (about 3% here).
    The sampler's counts over both paths: ``accepted`` is the number of edges drawn, ``events`` a little more."""
    gen = torch.Generator().manual_seed(0)
    g = torch.rand(2, 40, 3, generator=gen)
    h = (torch.arange(4).repeat_interleave(10).float().unsqueeze(-1) * torch.tensor([0.3, -0.2, 0.1])).expand(2, 40, 3)
    torch.manual_seed(0)
    drawn, stats = _bare_step(-3.0, g, h).draw(directed=True, clusters=4, limit=10 ** 6)
    assert set((drawn // 1600).tolist()) == {0, 1}
    assert stats["accepted"] == drawn.numel() > 100
    assert drawn.numel() < stats["events"] < drawn.numel() / 0.9


def test_a_path_over_its_edge_limit_is_refused_and_one_at_it_is_not():
    """Every logit 20 (zero factors): 40 x 40 blocks' events at rate softplus(20) each, about 32 000 (sd 180). At
    an edge limit of 1561, 20 x 1561 = 31 220 events is exceeded and the step refused before any thinning; at 1661
    (33 220) it is not. Then the edges themselves against the limit."""
    zeros = torch.zeros(1, 40, 2)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"^a path's Poisson bound expects \d+ events in one step, more than 20 x 1561 "
                                         r"\(its edge limit\)$"):
        _bare_step(20.0, zeros, zeros).draw(directed=True, clusters=4, limit=1561)
    drawn, _ = _bare_step(20.0, zeros, zeros).draw(directed=True, clusters=4, limit=1661)
    assert drawn.numel() == 40 * 39  # every pair u != v
    # logits 15: about 24 000 events, every pair an edge (miss chance 5e-4): a limit of 1560 edges is not exceeded
    drawn, _ = _bare_step(15.0, zeros, zeros).draw(directed=True, clusters=4, limit=1560)
    assert drawn.numel() == 40 * 39
    with pytest.raises(ValueError, match=r"^a path drew 1560 edges in one step, more than 1559$"):
        _bare_step(15.0, zeros, zeros).draw(directed=True, clusters=4, limit=1559)


def test_every_path_draws_its_pairs_with_memory():
    """Memory so strong that every pair of the last snapshot is an edge again with probability about 1: each path,
    the first included, draws all of them."""
    m, seq, _ = _frozen_model(False)
    with torch.no_grad():
        m.memory_last.fill_(30.0)
    index = sparse_forecast(m, seq.x, seq.edges, horizon=1, num_samples=3, top_k=0)["edge_index"].long()
    last = seq.edges[-1]
    want = set((torch.minimum(last[0], last[1]) * N + torch.maximum(last[0], last[1])).tolist())
    for s in range(3):
        at = index[:, index[0] == s]
        assert want <= set((at[2] * N + at[3]).tolist())
