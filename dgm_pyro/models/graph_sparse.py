"""Sparse forecasts of a :class:`~dgm_pyro.models.GraphSSM` for graphs too large for N x N tensors (P4.4 at scale).

The dense rollout (:meth:`GraphSSM.forecast`) holds S x N x N edge probabilities per step: 40 GB at N = 10 000
and S = 100. Here each path's edges are drawn exactly, without visiting all N^2 pairs, and kept as a COO list.

Given a path's latents, the edges of a step are independent Bernoulli(sigma(l_uv)) with

    l_uv = <g_u, h_v> + b + m_uv,

m_uv the edge-memory term (:meth:`GraphSSM.memory_term`, and with ``memory_activity`` the activity term of pairs
with a past edge, :meth:`GraphSSM.pair_activity`), zero for a pair with no past edge (the node-activity
terms are inside g and h: :meth:`GraphSSM.edge_factors`, each path's activity updated with its own draws). The
pairs fall in two disjoint sets, drawn separately:

- **Pairs with memory**: an edge in the history or earlier on this path. Few; each is drawn directly.
- **The rest**, where l_uv = <g_u, h_v> + b. A Bernoulli(sigma(l)) is the event {N_uv >= 1} of a Poisson
  count with rate lambda_uv = -log(1 - sigma(l_uv)) = softplus(l_uv). Cluster the h_v (k-means, C clusters) and
  bound <g_u, h_v> over a cluster k by its bounding box: l_uv <= L_uk. Events are drawn from the dominating
  Poisson process of rate softplus(L_uk) on each block (row u, cluster k): a Poisson count, positions uniform in
  the cluster. Each is kept with probability softplus(l_uv) / softplus(L_uk) (thinning, Lewis and Shedler 1979),
  and a pair is an edge when it keeps at least one event. Exact, and the cost is the number of events, about the
  number of edges times the bound's slack.

Undirected graphs take the pairs u < v (events on v <= u are dropped); directed ones all u != v.

Scores and the top-k need the forecast probability p_uv = (1/S) sum_s sigma(l^s_uv), averaged over paths.
It is computed exactly (Rao-Blackwellised) at the pairs asked for. The top-k most probable new edges of a
node are ranked by it among the node's m new pairs drawn on the most paths (m = max(2k, 2^26 / (S N)): 67 at
N = 10 000 and S = 100, every drawn pair on small graphs). A pair is a candidate only if some path drew it,
which misses a pair of mean probability q with probability about (1 - q)^S (0.6% for q = 0.05 at S = 100).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch.nn.functional import softplus

from ..data.graphs import sorted_lookup
from .graph_memory import PairHistory

__all__ = ["sparse_forecast", "SPARSE_CLUSTERS"]

#: k-means clusters of the h_v per path and step: the blocks of the dominating Poisson process
SPARSE_CLUSTERS = 64

#: pairs x paths evaluated at once (bounds the memory of a gather of edge factors)
_CHUNK = 2 ** 21

#: about how many pair-and-path probabilities the top-k may evaluate per step (its candidates per node)
_TOP_K_BUDGET = 2 ** 26


def _member(sorted_keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Whether each ``query`` key is in ``sorted_keys`` (a bool tensor shaped like ``query``)."""
    return sorted_lookup(sorted_keys, query)[1]


def _kmeans(points: torch.Tensor, clusters: int, iterations: int = 4) -> torch.Tensor:
    """Cluster of each row of ``points`` (N, e): Lloyd's algorithm from evenly spaced rows (no random numbers).
    The labels are 0..C-1 over the C clusters that kept a member (equal rows can leave others empty)."""
    n = points.shape[0]
    c = min(clusters, n)
    centres = points[torch.linspace(0, n - 1, c, device=points.device).long()].clone()
    for _ in range(iterations):
        assign = torch.cdist(points, centres).argmin(1)
        counts = torch.bincount(assign, minlength=c).unsqueeze(-1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return torch.unique(torch.cdist(points, centres).argmin(1), return_inverse=True)[1]


class _PathMemory:
    """(A, M, C, R) of the pairs with memory on every path: the history's (shared by the paths) and the edges each
    path has drawn since, as sorted keys s N^2 + u N + v per step."""

    def __init__(self, module: Any, edges: list[torch.Tensor]):
        self.n = module.num_nodes
        self.nn = self.n * self.n
        self.on = module.edge_memory
        self.origin = len(edges)
        if self.on:
            self.rho, self.tau = module.memory_decay, module.recent_decay
            self.history = PairHistory.after(edges, self.n, self.rho, self.tau)
            self.keys = self.history.keys  # (read only when ``on``)
        self.drawn: list[torch.Tensor] = []

    def at(self, step: int, skey: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(A, M, C, R) before forecast step ``step`` (0-based) of the path-and-pair keys ``skey`` (R None without
        the fast count)."""
        key = skey % self.nn
        last, decayed, count, recent = self.history.at(torch.full_like(key, self.origin), key // self.n,
                                                       key % self.n)
        if step:
            hits = [_member(d, skey).float() for d in self.drawn[:step]]

            def advanced(state: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
                return decay ** step * state + sum(decay ** (step - 1 - j) * hit for j, hit in enumerate(hits))

            last, decayed, count = hits[-1], advanced(decayed, self.rho), count + sum(hits)
            recent = None if recent is None else advanced(recent, self.tau)
        return last, decayed, count, recent

    def pairs(self, step: int, first: int, stop: int) -> torch.Tensor:
        """Sorted keys of the pairs with memory on paths first..stop-1 before forecast step ``step``."""
        paths = torch.arange(first, stop, device=self.keys.device)
        parts = [(paths.unsqueeze(-1) * self.nn + self.keys).flatten()]
        for d in self.drawn[:step]:
            lo, hi = torch.searchsorted(d, torch.tensor([first * self.nn, stop * self.nn], device=d.device)).tolist()
            parts.append(d[lo:hi])
        return torch.unique(torch.cat(parts))

    def has(self, step: int, path: int, key: torch.Tensor) -> torch.Tensor:
        """Whether the pairs ``key`` (u N + v) of path ``path`` have memory before forecast step ``step``."""
        out = _member(self.keys, key)
        for d in self.drawn[:step]:
            out |= _member(d, path * self.nn + key)
        return out


class _Step:
    """One forecast step's edge factors (S, N, e) and the memory before it: logits at any path-and-pair keys."""

    def __init__(self, module: Any, g: torch.Tensor, h: torch.Tensor, memory: _PathMemory, step: int,
                 activity: Optional[torch.Tensor] = None):
        self.module, self.g, self.h, self.memory, self.step = module, g, h, memory, step
        self.bias = module.edge_bias
        # the activity term of pairs with a past edge (``memory_activity``): (S, N) source and destination parts
        on = getattr(module, "memory_activity", False) and activity is not None
        self.pair_activity = module.pair_activity(activity) if on else None

    def logits(self, skey: torch.Tensor) -> torch.Tensor:
        n, nn_ = self.memory.n, self.memory.nn
        s, key = skey // nn_, skey % nn_
        out = (self.g[s, key // n] * self.h[s, key % n]).sum(-1) + self.bias
        if self.memory.on:
            state = self.memory.at(self.step, skey)
            out = out + self.module.memory_term(*state)
            if self.pair_activity is not None:
                out = out + (state[2] > 0) * (self.pair_activity[0][s, key // n] + self.pair_activity[1][s, key % n])
        return out

    def mean_probability(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """(1/S) sum_s sigma(l^s_uv) at the pairs (src[i], dst[i]): shape (P,)."""
        s_count = self.g.shape[0]
        key = src * self.memory.n + dst
        chunk = max(1, _CHUNK // s_count)
        paths = torch.arange(s_count, device=key.device).unsqueeze(-1) * self.memory.nn
        out = [torch.sigmoid(self.logits((paths + key[i:i + chunk]).flatten()).view(s_count, -1)).mean(0)
               for i in range(0, key.numel(), chunk)]
        return torch.cat(out) if out else key.new_zeros(0, dtype=self.g.dtype)

    def draw(self, directed: bool, clusters: int, limit: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Each path's edges of this step as sorted keys s N^2 + u N + v, and the sampler's counts: ``events``
        the Poisson events drawn, ``accepted`` the edges they gave (pairs with memory aside).
        Raises ``ValueError`` before a path draws more than ``limit`` edges (or 20 ``limit`` Poisson events)."""
        memory, n, nn_ = self.memory, self.memory.n, self.memory.nn
        s_count = self.g.shape[0]
        drawn = []
        # pairs with memory: each drawn directly, a block of paths at a time
        if memory.on:
            per = max(1, _CHUNK // max(memory.keys.numel(), 1))
            for first in range(0, s_count, per):
                pairs = memory.pairs(self.step, first, min(first + per, s_count))
                drawn.append(pairs[torch.bernoulli(torch.sigmoid(self.logits(pairs))).bool()])
        # the rest: thinning of a dominating Poisson process, one path at a time
        events = kept = 0
        for s in range(s_count):
            g, h = self.g[s], self.h[s]
            assign = _kmeans(h, clusters)
            c = int(assign.max()) + 1
            size = torch.bincount(assign, minlength=c)
            order = torch.argsort(assign, stable=True)
            offset = torch.cumsum(size, 0) - size
            index = assign.unsqueeze(-1).expand_as(h)
            lo = torch.full((c, h.shape[1]), float("inf"), device=h.device).scatter_reduce(0, index, h, "amin")
            hi = torch.full((c, h.shape[1]), float("-inf"), device=h.device).scatter_reduce(0, index, h, "amax")
            bound = g.clamp(min=0) @ hi.T + g.clamp(max=0) @ lo.T + self.bias + 1e-4  # (N, C) >= every l_uv
            rate = softplus(bound)
            counts = torch.poisson(rate * size).long()
            if int(counts.sum()) > 20 * limit:
                raise ValueError(f"a path's Poisson bound expects {int(counts.sum())} events in one step, more "
                                 f"than 20 x {limit} (its edge limit)")
            block = torch.repeat_interleave(torch.arange(n * c, device=h.device), counts.flatten())
            u, k = block // c, block % c
            pos = (torch.rand(block.shape, device=h.device) * size[k]).long().clamp(max=size[k] - 1)
            v = order[offset[k] + pos]
            logit = (g[u] * h[v]).sum(-1) + self.bias
            keep = torch.rand(block.shape, device=h.device) * rate[u, k] < softplus(logit)
            keep &= (u != v) if directed else (u < v)
            key = torch.unique(u[keep] * n + v[keep])  # a pair is an edge when it keeps at least one event
            if memory.on:
                key = key[~memory.has(self.step, s, key)]
            if key.numel() > limit:
                raise ValueError(f"a path drew {key.numel()} edges in one step, more than {limit}")
            events += block.numel()
            kept += key.numel()
            drawn.append(s * nn_ + key)
        out = torch.sort(torch.cat(drawn)).values
        return out, {"events": float(events), "accepted": float(kept)}


def _path_degrees(drawn: torch.Tensor, paths: int, n: int, directed: bool) -> torch.Tensor:
    """Each path's (out-, in-)degrees (S, N, 2) in one step's drawn keys s N^2 + u N + v (both the degree when
    undirected, where each edge is drawn once as u < v)."""
    s, key = drawn // (n * n), drawn % (n * n)
    out = torch.bincount(s * n + key // n, minlength=paths * n).view(paths, n).float()
    into = torch.bincount(s * n + key % n, minlength=paths * n).view(paths, n).float()
    if not directed:
        out = into = out + into
    return torch.stack([out, into], -1)


def _ranked(node: torch.Tensor, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An order of the entries by node, then by descending score (ties by position), and each entry's rank
    within its node in that order."""
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(node[order], stable=True)]
    sorted_node = node[order]
    return order, torch.arange(node.numel(), device=node.device) - torch.searchsorted(sorted_node, sorted_node)


def _top_k(step: _Step, drawn: torch.Tensor, origin: torch.Tensor, k: int, directed: bool
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most probable new edges of each node (not edges at the origin, keys ``origin`` sorted): among
    the node's m new pairs drawn on the most paths, m = max(2 k, _TOP_K_BUDGET / (S N)), those with the highest
    mean probability over paths. Destinations (N, k) (-1 where fewer) and mean probabilities (N, k) (NaN there)."""
    n = step.memory.n
    m = max(2 * k, _TOP_K_BUDGET // (step.g.shape[0] * n))
    key, count = torch.unique(drawn % step.memory.nn, return_counts=True)
    new = ~_member(origin, key)
    key, count = key[new], count[new]
    src, dst = key // n, key % n
    if not directed:
        src, dst = torch.cat([src, dst]), torch.cat([dst, src])
        count, key = torch.cat([count, count]), torch.cat([key, key])
    order, rank = _ranked(src, count.float())
    src, dst, key = src[order][rank < m], dst[order][rank < m], key[order][rank < m]
    candidates = torch.unique(key)
    prob = step.mean_probability(candidates // n, candidates % n)[torch.searchsorted(candidates, key)]
    order, rank = _ranked(src, prob)
    keep = rank < k
    src, dst, prob, rank = src[order][keep], dst[order][keep], prob[order][keep], rank[keep]
    out_dst = torch.full((n, k), -1, dtype=torch.long, device=src.device)
    out_prob = torch.full((n, k), float("nan"), device=src.device)
    out_dst[src, rank] = dst
    out_prob[src, rank] = prob
    return out_dst, out_prob


@torch.no_grad()
def sparse_forecast(module: Any, x: torch.Tensor, edges: list[torch.Tensor], horizon: int, num_samples: int = 100,
                    top_k: int = 10, score_pairs: Optional[Sequence[torch.Tensor]] = None,
                    clusters: int = SPARSE_CLUSTERS, max_edges: int = 10 ** 8) -> dict[str, Any]:
    """Sample paths of the next ``horizon`` snapshots of a GraphSSM without N x N tensors (P4.4).

    The latents and features are drawn as in :meth:`GraphSSM.forecast` (the same random numbers up to the first
    step's edges), the edges as described in the module docstring.

    Args:
        module: a :class:`~dgm_pyro.models.GraphSSM`.
        x, edges: the history, features (T, N, F) and T edge indices (2, E_t).
        horizon, num_samples: H steps, S paths.
        top_k: how many most probable new edges to keep per node and step (0: none).
        score_pairs: for some of the first steps, a (2, P_h) index of pairs whose mean probability to return.
        clusters: k-means clusters of the dominating process.
        max_edges: refuse (``ValueError``) a forecast that would hold more drawn edges than this over all paths
            and steps (about 40 bytes each at the peak): a badly fitted model can expect millions per path.

    Returns:
        ``X`` (S, H, N, F) feature draws; ``edge_index`` (4, E) int32, the drawn edges as rows (path, step, src,
        dst), sorted by step, then path, then pair; ``top_k_dst`` and ``top_k_prob`` (H, N, k); ``pair_prob``
        a list of (P_h,) mean probabilities at ``score_pairs``; ``sampler`` per step the Poisson events drawn
        and the edges they gave.
    """
    if horizon < 1 or num_samples < 1:
        raise ValueError("horizon and num_samples must be >= 1")
    if getattr(module, "edge_proximity", False):
        raise ValueError("a GraphSSM with edge_proximity forecasts with its dense rollout (GraphSSM.forecast): the "
                         "Katz proximity is an N x N matrix")
    n = module.num_nodes
    memory = _PathMemory(module, edges)
    last = edges[-1]
    origin = torch.sort(last[0] * n + last[1]).values
    z = module.filter(x, edges, num_samples)
    last_x = x[-1]
    activity = module.forecast_activity(edges, num_samples)
    xs, pair_prob, sampler, tops = [], [], [], []
    for t in range(horizon):
        h_in = module.emission_input(z, last_x)
        xs.append(module.draw_features(h_in, last_x))
        g, h = module.edge_factors(h_in, activity)
        step = _Step(module, g, h, memory, t, activity)
        if score_pairs is not None and t < len(score_pairs):
            pair_prob.append(step.mean_probability(score_pairs[t][0], score_pairs[t][1]))
        drawn, stats = step.draw(module.directed, clusters, limit=max(1, max_edges // (num_samples * horizon)))
        sampler.append(stats)
        if top_k:
            tops.append(_top_k(step, drawn, origin, top_k, module.directed))
        memory.drawn.append(drawn)
        if activity is not None:
            activity = module.advance_activity(activity, _path_degrees(drawn, num_samples, n, module.directed))
        loc, scale = module.transition(z)
        z = loc + scale * torch.randn_like(loc)
    nn_ = n * n
    rows = []
    for t in range(horizon):  # each step's keys are sorted by path: rows sorted by step, then path
        d = memory.drawn.pop(0)
        key = d % nn_
        rows.append(torch.stack([(d // nn_).int(), torch.full(d.shape, t, dtype=torch.int32, device=d.device),
                                 (key // n).int(), (key % n).int()]))
        del d, key
    index = torch.cat(rows, 1)
    del rows
    out: dict[str, Any] = {"X": torch.stack(xs, 1), "edge_index": index, "pair_prob": pair_prob,
                           "sampler": sampler}
    if top_k:
        out["top_k_dst"] = torch.stack([d for d, _ in tops])
        out["top_k_prob"] = torch.stack([p for _, p in tops])
    return out
