"""GraphSSM: the log joint against a hand computation (P4.1-P4.2), the sparse edge estimator's mean, the
forecast's shapes, and scheduled sampling at eps = 1."""

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO

from dgm_pyro.data.graphs import dynamic_sbm
from dgm_pyro.models import GraphSSM
from dgm_pyro.models.graph_memory import node_activity


def _tiny(directed=False, n=5, f=2, t=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, n, f, generator=g)
    edges = []
    for _ in range(t):
        a = torch.rand(n, n, generator=g) < 0.4
        a.fill_diagonal_(False)
        if not directed:
            a = a.triu(1)
        edges.append(a.nonzero().T.contiguous())
    return x, edges


def _site_sum(tr, prefix):
    total = torch.zeros(())
    for name, site in tr.nodes.items():
        if site["type"] == "sample" and name.startswith(prefix):
            total = total + (site["scale"] * site["fn"].log_prob(site["value"])).sum()
    return total


def _katz_series(a, damping=0.5, terms=200):
    """sum_{l >= 1} beta^l a^l with beta = damping / the largest degree: the Katz index as its series."""
    a = a.double()
    deg = float(a.sum(1).max())
    if deg == 0:
        return torch.zeros_like(a)
    beta = damping / deg
    return sum(beta ** k * torch.linalg.matrix_power(a, k) for k in range(1, terms))


@pytest.mark.parametrize("directed, frequency, activity, proximity, recency, pair_activity",
                         [(False, False, False, False, False, False), (True, False, False, False, False, False),
                          (False, True, False, False, False, False), (True, True, False, False, False, False),
                          (False, False, True, False, False, False), (True, False, True, False, False, False),
                          (False, False, True, True, False, False), (True, False, False, True, False, False),
                          (False, False, False, False, True, False), (True, True, True, False, True, False),
                          (False, False, True, False, True, True), (True, False, True, False, False, True)])
def test_log_joint_equals_hand_computation(directed, frequency, activity, proximity, recency, pair_activity):
    x, edges = _tiny(directed, t=4 if proximity or recency or pair_activity else 3)
    t_max, n, f = x.shape
    m = GraphSSM(n, f, latent_dim=3, hidden=8, directed=directed, edge_frequency=frequency, node_activity=activity,
                 edge_proximity=proximity, edge_recency=recency, memory_activity=pair_activity)
    phi = 0.15 if proximity else 0.0
    if proximity:
        m.proximity_weight.data.fill_(phi)
    kappa = (0.3, -0.5) if directed else (0.3, 0.3)  # (source out-degree, destination in-degree) weights
    mu = (-0.2, 0.6) if directed else (-0.2, -0.2)  # the same for the undecayed degrees
    if activity:
        m.activity_weight.data.copy_(torch.tensor(kappa if directed else kappa[:1]))
        m.activity_count_weight.data.copy_(torch.tensor(mu if directed else mu[:1]))
        m.activity_decay_logit.data.fill_(0.4)
    # kappa' and mu' (source, destination): the activity weights' change for a pair with a past edge
    kappa2, mu2 = ((-0.7, 0.4), (0.5, -0.25)) if directed else ((-0.7, -0.7), (0.5, 0.5))
    if pair_activity:
        m.memory_activity_weight.data.copy_(torch.tensor([kappa2, mu2]) if directed else
                                            torch.tensor([kappa2[:1], mu2[:1]]))
    beta = float(torch.sigmoid(torch.tensor(0.4)))
    m.memory_last.data.fill_(0.7)
    m.memory_weight.data.fill_(-0.4)
    eta = 0.9 if frequency else 0.0
    if frequency:
        m.memory_count.data.fill_(eta)
    omega, tau = (-0.6, float(torch.sigmoid(torch.tensor(-1.2)))) if recency else (0.0, 0.0)
    if recency:
        m.memory_recent.data.fill_(omega)
        m.recent_decay_logit.data.fill_(-1.2)
    rho = float(m.memory_decay.detach())
    path = torch.randn(t_max, n, 3)
    adj = []
    for e in edges:
        a = torch.zeros(n, n)
        a[e[0], e[1]] = 1
        adj.append(a)
    with torch.no_grad():
        tr = poutine.trace(poutine.condition(m.model, data={"z": path})).get_trace(x, edges)
        got = tr.log_prob_sum()
        want = 0.0
        z = m.z0
        for t in range(1, t_max + 1):
            loc, tril = m.feature_params(z)
            for v in range(n):
                cov = tril[v] @ tril[v].T
                r = x[t - 1, v] - loc[v]
                want += float(-0.5 * r @ torch.linalg.solve(cov, r) - 0.5 * torch.logdet(2 * math.pi * cov))
            a = adj[t - 1]
            g, h = m.edge_factors(z)
            for u in range(n):
                for v in range(n):
                    if u == v or (not directed and u > v):
                        continue
                    # the autoregressive edge terms: last snapshot's edge and the decayed count of past edges
                    last = adj[t - 2][u, v] if t >= 2 else 0.0
                    count = sum(rho ** (t - 1 - s) * adj[s - 1][u, v] for s in range(1, t))
                    times = sum(adj[s - 1][u, v] for s in range(1, t))  # undecayed: the long-run frequency
                    recent = sum(tau ** (t - 1 - s) * adj[s - 1][u, v] for s in range(1, t))  # the fast count
                    logit = (g[u] * h[v]).sum() + m.edge_bias + 0.7 * last - 0.4 * math.log1p(count) \
                        + eta * math.log1p(times) + omega * math.log1p(recent)
                    if activity:  # each endpoint's decayed past degree (out for u, in for v; degree undirected)
                        sym = (lambda a: a + a.T) if not directed else (lambda a: a)
                        out_deg = sum(beta ** (t - 1 - s) * float(sym(adj[s - 1])[u].sum()) for s in range(1, t))
                        in_deg = sum(beta ** (t - 1 - s) * float(sym(adj[s - 1])[:, v].sum()) for s in range(1, t))
                        out_all = sum(float(sym(adj[s - 1])[u].sum()) for s in range(1, t))
                        in_all = sum(float(sym(adj[s - 1])[:, v].sum()) for s in range(1, t))
                        logit = logit + kappa[0] * math.log1p(out_deg) + kappa[1] * math.log1p(in_deg) \
                            + mu[0] * math.log1p(out_all) + mu[1] * math.log1p(in_all)
                        if pair_activity and times > 0:  # the same degrees, weighed again for a pair met before
                            logit = logit + kappa2[0] * math.log1p(out_deg) + kappa2[1] * math.log1p(in_deg) \
                                + mu2[0] * math.log1p(out_all) + mu2[1] * math.log1p(in_all)
                    if proximity:  # the Katz index in the union of snapshots 1..t-1, both ways
                        union = sum((adj[s - 1] + adj[s - 1].T for s in range(1, t)), torch.zeros(n, n)) > 0
                        logit = logit + phi * math.log1p(float(_katz_series(union)[u, v]) / 1e-8)
                    p = torch.sigmoid(logit)
                    want += float(a[u, v] * torch.log(p) + (1 - a[u, v]) * torch.log1p(-p))
            tl, ts = m.transition(z)
            z = path[t - 1]
            want += float((-0.5 * ((z - tl) / ts) ** 2 - torch.log(ts) - 0.5 * math.log(2 * math.pi)).sum())
    assert float(got) == pytest.approx(want, rel=1e-5)
    pairs = n * (n - 1) if directed else n * (n - 1) // 2
    assert tr.nodes["a"]["value"].shape == (t_max, pairs)


@pytest.mark.parametrize("directed", [False, True])
def test_sparse_logits_equal_the_dense_forecast_logits_with_pair_activity(directed):
    """``memory_activity``: the sparse likelihood's logits of every pair at every snapshot (:meth:`edge_logits`,
    from the pair history and the activity before each snapshot) equal the dense forecast's
    (:meth:`edge_probabilities` given the dense memory and activity after the snapshots before it), so training
    and forecasts add the same activity term to pairs with a past edge (and none to the others)."""
    from dgm_pyro.data.graphs import pair_index
    from dgm_pyro.models.graph_memory import PairHistory

    x, edges = _tiny(directed, n=6, t=5)
    m = GraphSSM(6, 2, latent_dim=3, hidden=8, directed=directed, edge_recency=True, memory_activity=True,
                 edge_likelihood="sparse")
    with torch.no_grad():
        m.memory_activity_weight.copy_(torch.tensor([[-0.9, 0.3], [0.6, -0.2]] if directed else [[-0.9], [0.6]]))
        m.activity_weight.fill_(0.4)
        m.memory_last.fill_(1.1)
        m.memory_weight.fill_(0.5)
        h = m.emission_input(torch.randn(5, 6, 3), x)
        history = PairHistory(edges, 6, m.memory_decay, m.recent_decay)
        activity = m.activity(edges)
        u, v = pair_index(6, directed)
        for t in range(5):
            got = m.edge_logits(h, torch.full_like(u, t), u, v, history, activity[:5])
            p = m.edge_probabilities(h[t], m.dense_memory(edges[:t]), activity[t])
            torch.testing.assert_close(torch.sigmoid(got), p[u, v], atol=1e-6, rtol=1e-5)
        assert (m.dense_memory(edges[:2])[2] > 0).any() and (m.dense_memory(edges[:2])[2] == 0).any()


def test_sparse_edge_estimator_is_unbiased():
    x, edges = _tiny(n=30, t=2, seed=1)
    dense = GraphSSM(30, 2, latent_dim=3, hidden=8, edge_likelihood="dense")
    sparse = GraphSSM(30, 2, latent_dim=3, hidden=8, edge_likelihood="sparse", negatives_per_edge=0.5)
    sparse.load_state_dict(dense.state_dict())
    zs = {"z": torch.randn(2, 30, 3)}
    with torch.no_grad():
        exact = float(_site_sum(poutine.trace(poutine.condition(dense.model, data=zs)).get_trace(x, edges), "a"))
        draws = torch.stack([_site_sum(poutine.trace(poutine.condition(sparse.model, data=zs)).get_trace(x, edges),
                                       "a") for _ in range(1500)])
    se = float(draws.std() / math.sqrt(len(draws)))
    # each snapshot samples 100 of its ~350 non-edges: the estimate varies, its mean does not move
    assert float(draws.std()) > 0.1
    assert abs(float(draws.mean()) - exact) < 4 * se


@pytest.mark.parametrize("recency", [False, True])
def test_forecast_memory_counts_past_and_sampled_edges(recency):
    """The rollout's memory (A, M, C, R) starts from the history's and adds each sampled snapshot: C counts
    every past edge of a pair, M decays them by rho, R (with ``edge_recency``) by tau, A is the last snapshot."""
    seq = dynamic_sbm(num_nodes=10, num_steps=5, num_features=2, seed=1)
    m = GraphSSM(10, 2, latent_dim=3, hidden=8, edge_frequency=True, edge_recency=recency)
    last, decayed, count, recent = m.dense_memory(seq.edges)
    adj = [seq.adjacency(t) for t in range(seq.num_steps)]
    rho = float(m.memory_decay.detach())
    assert torch.equal(count, sum(adj)) and torch.equal(last, adj[-1])
    assert torch.allclose(decayed, sum(rho ** (4 - t) * a for t, a in enumerate(adj)))
    assert (recent is None) == (not recency)
    if recency:
        tau = float(m.recent_decay.detach())
        assert torch.allclose(recent, sum(tau ** (4 - t) * a for t, a in enumerate(adj)))
    steps = list(m.rollout(seq.x, seq.edges, steps=3, num_samples=4))
    for prev, nxt in zip(steps, steps[1:]):
        a = prev["A"]
        assert torch.equal(nxt["memory"][0], a) and torch.equal(nxt["memory"][2], prev["memory"][2] + a)
        assert torch.allclose(nxt["memory"][1], rho * prev["memory"][1] + a)
        if recency:
            assert torch.allclose(nxt["memory"][3], tau * prev["memory"][3] + a)


@pytest.mark.parametrize("directed", [False, True])
def test_forecast_proximity_is_the_katz_index_of_past_and_sampled_edges(directed):
    """The rollout's first step uses the proximity of the history's union graph (the same for every path),
    each later step that of the history and the path's own draws; phi pi_uv enters the edge logit."""
    x, edges = _tiny(directed, n=7, t=3, seed=3)
    edges = [e[:, :2] for e in edges]  # a sparse history, so that the paths' draws add edges to it
    m = GraphSSM(7, 2, latent_dim=3, hidden=8, directed=directed, edge_proximity=True)
    m.proximity_weight.data.fill_(0.2)
    m.edge_bias.data.fill_(-4.0)  # with pi up to ~18, the paths draw some edges and not all
    union = torch.zeros(7, 7)
    for e in edges:
        union[e[0], e[1]] = union[e[1], e[0]] = 1
    steps = list(m.rollout(x, edges, steps=3, num_samples=5))
    assert steps[0]["proximity"].shape == (7, 7)
    torch.testing.assert_close(steps[0]["proximity"], torch.log1p(_katz_series(union) / 1e-8).float())
    for k in (1, 2):
        for s in range(5):
            path_union = union.clone()
            for prev in steps[:k]:
                path_union = torch.maximum(path_union, prev["A"][s] + prev["A"][s].T).clamp_max(1)
            torch.testing.assert_close(steps[k]["proximity"][s], torch.log1p(_katz_series(path_union) / 1e-8).float())
    assert any(not torch.equal(steps[2]["proximity"][0], steps[2]["proximity"][s]) for s in range(1, 5))
    # the step's probabilities are those of its logit with phi pi added
    with torch.no_grad():
        plain = m.edge_probabilities(steps[1]["h"], steps[1]["memory"], steps[1]["activity"])
        m.proximity_weight.data.fill_(0.0)
        off = m.edge_probabilities(steps[1]["h"], steps[1]["memory"], steps[1]["activity"], steps[1]["proximity"])
    torch.testing.assert_close(plain, off)
    want = torch.sigmoid(torch.logit(plain.clamp(1e-6, 1 - 1e-6)) + 0.2 * steps[1]["proximity"])
    got = steps[1]["edge_prob"]
    eye = torch.eye(7, dtype=torch.bool)
    torch.testing.assert_close(got[:, ~eye], want[:, ~eye], atol=1e-5, rtol=1e-4)


def test_proximity_refuses_the_sparse_likelihood_and_sparse_forecasts():
    from dgm_pyro.models import sparse_forecast

    with pytest.raises(ValueError, match="dense edge likelihood"):
        GraphSSM(5, 2, edge_likelihood="sparse", edge_proximity=True)
    with pytest.raises(ValueError, match="proximity_damping"):
        GraphSSM(5, 2, edge_proximity=True, proximity_damping=1.0)
    x, edges = _tiny(n=5, t=3)
    with pytest.raises(ValueError, match="dense rollout"):
        sparse_forecast(GraphSSM(5, 2, edge_proximity=True), x, edges, horizon=1, num_samples=2)


def test_node_activity_is_the_decayed_degree_before_each_snapshot():
    """node_activity row t is sum_{s < t} beta^(t-1-s) deg_s (out and in; the degree twice when undirected), the
    last row the state after the history; the rollout adds each sampled snapshot's degrees."""
    for directed in (False, True):
        x, edges = _tiny(directed, n=6, t=4)
        beta = torch.tensor(0.6)
        got = node_activity(edges, 6, directed, beta)
        assert got.shape == (5, 6, 2)
        adj = []
        for e in edges:
            a = torch.zeros(6, 6)
            a[e[0], e[1]] = 1
            adj.append(a if directed else a + a.T)
        for t in range(5):
            want_out = sum((0.6 ** (t - 1 - s) * adj[s].sum(1) for s in range(t)), torch.zeros(6))
            want_in = sum((0.6 ** (t - 1 - s) * adj[s].sum(0) for s in range(t)), torch.zeros(6))
            assert torch.allclose(got[t, :, 0], want_out) and torch.allclose(got[t, :, 1], want_in)
        m = GraphSSM(6, 2, latent_dim=3, hidden=8, directed=directed, node_activity=True)
        b = float(m.activity_decay.detach())
        full = m.activity(edges)  # decayed by beta (out, in), then undecayed (out, in)
        assert full.shape == (5, 6, 4)
        assert torch.allclose(full[..., :2], node_activity(edges, 6, directed, m.activity_decay))
        assert torch.allclose(full[..., 2:], node_activity(edges, 6, directed, torch.tensor(1.0)))
        steps = list(m.rollout(x, edges, steps=3, num_samples=4))
        assert torch.allclose(steps[0]["activity"], full[-1].expand(4, -1, -1))
        for prev, nxt in zip(steps, steps[1:]):
            a = prev["A"]
            deg = torch.stack([a.sum(-1), a.sum(-2)], -1)
            assert torch.allclose(nxt["activity"][..., :2], b * prev["activity"][..., :2] + deg)
            assert torch.allclose(nxt["activity"][..., 2:], prev["activity"][..., 2:] + deg)


def test_forecast_shapes_and_symmetry():
    seq = dynamic_sbm(num_nodes=12, num_steps=6, num_features=3, seed=0)
    m = GraphSSM(12, 3, latent_dim=4, hidden=8)
    out = m.forecast(seq.x, seq.edges, horizon=4, num_samples=7)
    assert out["X"].shape == (7, 4, 12, 3)
    assert out["Z"].shape == (7, 4, 12, 4)
    assert out["edge_prob"].shape == out["A"].shape == (7, 4, 12, 12)
    assert torch.equal(out["A"], out["A"].transpose(-1, -2))
    assert torch.all(out["A"].diagonal(dim1=-2, dim2=-1) == 0)
    assert torch.allclose(out["edge_prob"], out["edge_prob"].transpose(-1, -2))
    with pytest.raises(ValueError):
        m.forecast(seq.x, seq.edges, horizon=0)


@pytest.mark.parametrize("directed", [False, True])
def test_forecast_is_its_rollout_stacked_and_scored(directed):
    """forecast writes each rollout step into its outputs as it goes (bounded memory): the result equals the
    rollout's steps stacked, and log_lik the mean over paths of each true snapshot's emission likelihood."""
    seq = dynamic_sbm(num_nodes=10, num_steps=7, num_features=2, seed=1)
    edges = seq.edges if not directed else [torch.cat([e, e.flip(0)], 1) for e in seq.edges]
    m = GraphSSM(10, 2, latent_dim=3, hidden=8, directed=directed, edge_recency=True)
    hist, fut = (seq.x[:5], edges[:5]), (seq.x[5:], edges[5:])
    pyro.set_rng_seed(4)
    out = m.forecast(*hist, horizon=3, num_samples=6, future=fut)
    pyro.set_rng_seed(4)
    with torch.no_grad():
        steps = list(m.rollout(*hist, 3, 6))
        lls = [torch.logsumexp(m._emission_log_prob(steps[h], fut[0][h], fut[1][h]), 0) - math.log(6)
               for h in range(2)]
    for key, name in (("X", "x"), ("Z", "z"), ("edge_prob", "edge_prob"), ("A", "A")):
        assert torch.equal(out[key], torch.stack([s[name] for s in steps], 1)), key
    assert out["log_lik"].shape == (2,) and torch.equal(out["log_lik"], torch.stack(lls))


def test_forecast_samples_follow_the_emission():
    """The first forecast step draws X from N(mu(Z_T), L L^T): its sample covariance matches."""
    seq = dynamic_sbm(num_nodes=3, num_steps=4, num_features=2, seed=2)
    m = GraphSSM(3, 2, latent_dim=2, hidden=8)
    m.posterior_net[-1].weight.data.zero_()
    m.posterior_net[-1].bias.data = torch.tensor([0.5, -0.5, -30.0, -30.0])  # q is a point mass (up to 1e-3)
    m.transition_net[-1].bias.data[2:] = -40.0  # and so is the transition that draws Z_T
    pyro.set_rng_seed(0)
    out = m.forecast(seq.x, seq.edges, horizon=1, num_samples=20000)
    loc, tril = m.feature_params(out["Z"][0, 0])
    cov = tril @ tril.transpose(-1, -2)
    draws = out["X"][:, 0]
    assert torch.allclose(draws.mean(0), loc.detach(), atol=0.05)
    emp = torch.einsum("snf,sng->nfg", draws - draws.mean(0), draws - draws.mean(0)) / (len(draws) - 1)
    assert torch.allclose(emp, cov.detach(), rtol=0.05, atol=0.01)


def test_no_snapshot_depends_on_the_last_latent():
    """Snapshot t is emitted from Z_{t-1} (P4.1), so the log-joint depends on Z_T only through its transition
    term: changing Z_T changes log p(X, A, Z) by exactly the change of log N(Z_T; p(Z_T | Z_{T-1})). This is
    why the posterior of Z_T given the rest is the transition, which forecasts draw it from."""
    x, edges = _tiny(n=6, t=4)
    m = GraphSSM(6, 2, latent_dim=3, hidden=8, edge_frequency=True)
    path = torch.randn(4, 6, 3)
    moved = path.clone()
    moved[-1] = torch.randn(6, 3) * 2

    def log_joint(z):
        return poutine.trace(poutine.condition(m.model, data={"z": z})).get_trace(x, edges).log_prob_sum()

    with torch.no_grad():
        loc, scale = m.transition(path[-2])
        want = (torch.distributions.Normal(loc, scale).log_prob(moved[-1])
                - torch.distributions.Normal(loc, scale).log_prob(path[-1])).sum()
        assert float(log_joint(moved) - log_joint(path)) == pytest.approx(float(want), rel=1e-4)


@pytest.mark.parametrize("final_state", ["transition", "guide"])
def test_forecasts_draw_the_last_latent_as_final_state_says(final_state):
    """``filter`` draws Z_1..Z_{T-1} from the guide and Z_T from the transition p(Z_T | Z_{T-1}) (the default)
    or from the guide. With the guide a point mass, the 20 000 draws of Z_T have the mean and the standard
    deviation of the chosen distribution, given the guide's Z_{T-1}."""
    seq = dynamic_sbm(num_nodes=3, num_steps=4, num_features=2, seed=2)
    m = GraphSSM(3, 2, latent_dim=2, hidden=8, final_state=final_state)
    m.posterior_net[-1].weight.data.zero_()
    m.posterior_net[-1].bias.data = torch.tensor([0.5, -0.5, -30.0, -30.0])  # q: a point mass at (0.5, -0.5)
    m.transition_net[-1].bias.data[2:] = 1.0  # a transition scale far above the guide's
    pyro.set_rng_seed(0)
    with torch.no_grad():
        z = m.filter(seq.x, seq.edges, 20000)
        point = torch.tensor([0.5, -0.5]).expand(3, 2)
        loc, scale = m.transition(point) if final_state == "transition" else (point, torch.full((3, 2), 1e-3))
    assert torch.allclose(z.mean(0), loc, atol=0.02)
    assert torch.allclose(z.std(0), scale, rtol=0.03)
    # the distributions it draws from: both given the guide's Z_{T-1} (here the point mass)
    both = m.final_state_distributions(seq.x, seq.edges, 5)
    torch.testing.assert_close(both["transition"], m.transition(point.expand(5, 3, 2)), atol=1e-2, rtol=0)
    torch.testing.assert_close(both["guide"][0], point.expand(5, 3, 2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="final_state"):
        GraphSSM(3, 2, final_state="smoother")


def test_teacher_forcing_one_is_the_elbo():
    """At eps = 1 every transition is fed the guide's Z: the loss is minus log p(X, A, Z) - log q(Z) on the
    guide's draws, computed here from the traces by hand; and eps just below 1 (never switching, but drawing
    the model's own predictions) gives the same value, so the scheduled-sampling path reduces to the ELBO."""
    x, edges = _tiny(n=6, t=4)
    m = GraphSSM(6, 2, latent_dim=3, hidden=8)
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().differentiable_loss(m.model, m.guide, x, edges, teacher_forcing=1.0)
    pyro.set_rng_seed(3)
    guide_tr = poutine.trace(m.guide).get_trace(x, edges, teacher_forcing=1.0)
    model_tr = poutine.trace(poutine.replay(m.model, trace=guide_tr)).get_trace(x, edges, teacher_forcing=1.0)
    path = guide_tr.nodes["z"]["value"]  # (T, N, d)
    loc, _ = model_tr.nodes["z"]["fn"].transitions(path)
    # the transition to z_t is centred on the guide's z_{t-1}
    assert torch.allclose(loc, m.transition(torch.cat([m.z0[None], path[:-1]]))[0])
    elbo = model_tr.log_prob_sum() - guide_tr.log_prob_sum()
    assert float(loss.detach()) == pytest.approx(-float(elbo.detach()), rel=1e-6)
    pyro.set_rng_seed(3)
    almost = Trace_ELBO().differentiable_loss(m.model, m.guide, x, edges, teacher_forcing=1.0 - 1e-12)
    assert float(almost.detach()) == pytest.approx(float(loss.detach()), rel=1e-6)


def test_scheduled_sampling_feeds_the_models_own_prediction():
    """With eps = 0 the transition to z_2 is fed a draw from p(z_1 | z_0), not the guide's z_1: with the
    transition noise switched off that draw is the transition mean, which we can compute."""
    x, edges = _tiny(n=4, t=2)
    m = GraphSSM(4, 2, latent_dim=2, hidden=8)
    m.transition_net[-1].bias.data[2:] = -40.0  # transition scale 1e-3 (its floor)
    z1 = torch.randn(4, 2) * 3
    path = torch.stack([z1, torch.zeros(4, 2)])
    with torch.no_grad():
        tr = poutine.trace(poutine.condition(m.model, data={"z": path})).get_trace(x, edges, teacher_forcing=0.0)
        fed_loc = tr.nodes["z"]["fn"].transitions(path)[0][1]
        hat = m.transition(m.z0)[0]
        assert torch.allclose(fed_loc, m.transition(hat)[0], atol=0.05)
        assert not torch.allclose(fed_loc, m.transition(z1)[0], atol=0.05)


@pytest.mark.parametrize("gnn", ["gat", "sage"])
def test_other_gnn_encoders(gnn):
    x, edges = _tiny(n=6, t=3)
    m = GraphSSM(6, 2, latent_dim=3, hidden=8, gnn=gnn)
    loss = Trace_ELBO().differentiable_loss(m.model, m.guide, x, edges)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.encoder.parameters())
    assert m.forecast(x, edges, horizon=2, num_samples=3)["X"].shape == (3, 2, 6, 2)


def test_backtest_one_dict_per_window():
    from dgm_pyro.metrics import backtest

    seq = dynamic_sbm(num_nodes=15, num_steps=12, seed=0)
    m = GraphSSM(15, seq.num_features, latent_dim=3, hidden=8)
    rows = backtest(m, seq, origins=[6, 9], horizon=2, num_samples=5)
    assert [r["origin"] for r in rows] == [6, 9]
    assert all([h["h"] for h in r["metrics"]] == [1, 2] for r in rows)
    from dgm_pyro.errors import DgmPyroError

    with pytest.raises(DgmPyroError, match="origin 11"):
        backtest(m, seq, origins=[11], horizon=2)


def test_static_covariates_are_inputs_not_observations():
    """With feature 0 static, each x_t site observes the 3 other features only, the emission networks read
    [z_v, c_v], and the log-likelihood depends on the static values only through them (changing them changes
    the density of the others)."""
    import pyro
    import pyro.poutine as poutine

    from dgm_pyro.models import GraphSSM

    torch.manual_seed(0)
    x = torch.randn(3, 6, 4)
    x[:, :, 0] = x[0, :, 0]
    edges = [torch.tensor([[0, 1], [2, 3]])] * 3
    m = GraphSSM(6, 4, latent_dim=2, hidden=8, static=[True, False, False, False])
    assert m.num_static == 1 and m.num_dynamic == 3 and m.edge_src[0].in_features == 3
    pyro.set_rng_seed(0)
    guide = poutine.trace(m.guide).get_trace(x, edges)
    tr = poutine.trace(poutine.replay(m.model, trace=guide)).get_trace(x, edges)
    assert tr.nodes["x"]["value"].shape == (3, 6, 3)
    assert torch.equal(tr.nodes["x"]["value"], x[:, :, 1:])
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    tr2 = poutine.trace(poutine.replay(m.model, trace=guide)).get_trace(x2, edges)
    assert not torch.allclose(tr.log_prob_sum(), tr2.log_prob_sum())
    fc = m.forecast(x, edges, horizon=2, num_samples=5)
    assert torch.equal(fc["X"][..., 0], x[-1, :, 0].expand(5, 2, 6))
    assert not torch.equal(fc["X"][:, 0, :, 1], fc["X"][:, 1, :, 1])


def test_weights_saved_before_static_covariates_still_load():
    from dgm_pyro.models import GraphSSM

    m = GraphSSM(5, 2, latent_dim=2, hidden=4)
    old = {k: v for k, v in m.state_dict().items() if k != "static_mask"}
    fresh = GraphSSM(5, 2, latent_dim=2, hidden=4)
    fresh.load_state_dict(old)
    assert fresh.static_mask.tolist() == [False, False] and torch.equal(fresh.z0, m.z0)


def _triadic_data(phi, bias, n=40, t=10):
    """Snapshots drawn from a GraphSSM whose edge logit is bias + phi pi_uv alone (no latent, memory or activity
    term), each from the ones before it, after a first G(n, 0.05) snapshot."""
    torch.manual_seed(0)
    true = GraphSSM(n, 0, latent_dim=2, hidden=8, edge_proximity=True, node_activity=False, edge_memory=False)
    with torch.no_grad():
        true.edge_weight.zero_()
        true.edge_bias.fill_(bias)
        true.proximity_weight.fill_(phi)
    edges = [(torch.rand(n, n) < 0.05).triu(1).nonzero().T.contiguous()]
    x = torch.zeros(t, n, 0)
    for k in range(1, t):
        step = next(true.rollout(x[:k], edges, steps=1, num_samples=1))
        edges.append(step["A"][0].triu(1).nonzero().T.contiguous())
    return x, edges


@pytest.mark.parametrize("phi, bias", [(0.0, -3.3), (0.3, -6.0)])
def test_svi_with_pyro_optim_learns_the_proximity_weight(phi, bias):
    """The model as a plain Pyro program (SVI, pyro.optim, Predictive), on graphs drawn with and without triadic
    closure at about the same density: phi is learned near 0 (measured -0.001) without it and near its true 0.3
    (measured 0.26, the other terms of the fitted model sharing some of it) with it."""
    from pyro.infer import SVI, Predictive

    x, edges = _triadic_data(phi, bias)
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    m = GraphSSM(40, 0, latent_dim=2, hidden=8, edge_proximity=True)
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(300):
        svi.step(x, edges)
    learned = float(m.proximity_weight.detach())
    assert abs(learned - phi) < (0.05 if phi == 0 else 0.15)
    draws = Predictive(m.model, guide=m.guide, num_samples=3, return_sites=["a"])(x, edges)["a"]
    assert draws.shape == (3, 10, 40 * 39 // 2) and set(draws.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("lookahead", [False, True])
def test_guide_sees_the_snapshots_up_to_the_one_each_latent_emits_with_lookahead(lookahead):
    """Z_t emits snapshot t + 1. The default guide's step to Z_t reads snapshots 1..t (a filter); with
    ``guide_lookahead`` it reads 1..t + 1, and Z_T (which emits nothing) reads what Z_{T-1} reads. Changing
    snapshot k (1-based) changes exactly the steps from Z_k on, or from Z_{k-1} on with the lookahead."""
    x, edges = _tiny(n=6, t=5, seed=2)
    m = GraphSSM(6, 2, latent_dim=3, hidden=8, guide_lookahead=lookahead)
    k = 3
    changed = [e.clone() for e in edges]
    changed[k - 1] = torch.tensor([[0, 1, 2], [3, 4, 5]])
    with torch.no_grad():
        pre, pre_changed = m.guide_inputs(x, edges), m.guide_inputs(x, changed)
    differs = [not torch.allclose(a, b) for a, b in zip(pre, pre_changed)]  # steps to Z_1..Z_5
    first = k - 1 if lookahead else k
    assert differs == [t >= first for t in range(1, 6)]
    if lookahead:
        assert torch.equal(pre[-1], pre[-2])
    with torch.no_grad():
        tr = poutine.trace(m.guide).get_trace(x, edges)
    assert tr.nodes["z"]["value"].shape == (5, 6, 3)
