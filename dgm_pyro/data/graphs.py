"""Graph sequences for forecasting (seed P4): the container, pair indexing, and a dynamic SBM with its oracle.
The real graphs and user files are read by :mod:`dgm_pyro.data.graph_files`.

A :class:`GraphSequence` holds T snapshots of one node set: node features ``x`` of shape (T, N, F) and,
per snapshot, the edges as a (2, E_t) index tensor. Undirected edges are stored once with u < v;
directed ones as (src, dst) with src != dst. Adjacency matrices are only formed on request, so a
sequence of a 10k-node graph costs memory in its edges, not N^2.
"""

from __future__ import annotations

import functools

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..errors import DgmPyroError

__all__ = ["GraphSequence", "dynamic_sbm", "degree_features", "pair_index", "dsbm_step", "canonical_edges"]



@functools.lru_cache(maxsize=8)
def pair_index(num_nodes: int, directed: bool) -> torch.Tensor:
    """All node pairs a graph can have as edges: (2, P) with u < v (undirected, P = N(N-1)/2) or u != v. Built once
    per (N, directed) and shared (a training step asks for it every time: 16 ms at N = 1000, directed): do not
    modify it in place."""
    if directed:
        u, v = torch.meshgrid(torch.arange(num_nodes), torch.arange(num_nodes), indexing="ij")
        keep = u != v
        return torch.stack([u[keep], v[keep]])
    return torch.triu_indices(num_nodes, num_nodes, offset=1)


def sorted_lookup(sorted_keys: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each ``query`` key is in the ascending ``sorted_keys``: its index there (clamped, meaningless where
    absent) and whether it is there (bool), both shaped like ``query``."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(query), torch.zeros(query.shape, dtype=torch.bool, device=query.device)
    idx = torch.searchsorted(sorted_keys, query).clamp(max=sorted_keys.numel() - 1)
    return idx, sorted_keys[idx] == query


def uniform_nonedges(edge_keys: torch.Tensor, num_nodes: int, directed: bool, count: int,
                     generator: Optional[torch.Generator] = None, oversample: float = 2.0) -> torch.Tensor:
    """``count`` keys u N + v of pairs drawn uniformly with replacement from the pairs (u < v when undirected,
    u != v otherwise) that are not among ``edge_keys``: rejection sampling, ``oversample`` x the pairs still
    needed per round (plus 16), from ``generator`` or torch's global one."""
    n, parts, have = num_nodes, [], 0
    while have < count:
        k = int(oversample * (count - have)) + 16
        u = torch.randint(n, (k,), generator=generator, device=edge_keys.device)
        v = torch.randint(n, (k,), generator=generator, device=edge_keys.device)
        if not directed:
            u, v = torch.minimum(u, v), torch.maximum(u, v)
        key = (u * n + v)[u != v]
        key = key[~torch.isin(key, edge_keys)][:count - have]
        parts.append(key)
        have += key.numel()
    return torch.cat(parts) if parts else edge_keys.new_zeros(0)


#: how many edge sequences' values :func:`derived` keeps per name, unless told otherwise
DERIVED_CACHE_SIZE = 4
_DERIVED: dict[str, "OrderedDict[tuple, tuple[torch.Tensor, Any]]"] = {}


def derived(name: str, edges: Sequence[torch.Tensor], num_nodes: int, build: Callable[[], Any],
            keep: int = DERIVED_CACHE_SIZE) -> Any:
    """``build()``, a value that depends only on the edge sequence ``edges`` (and ``name``), computed once and
    reused while an equal sequence comes back (compared edge by edge, so a changed graph is never served a stale
    value): training evaluates the same history's constants at every step. Keeps the last ``keep`` values of
    each name."""
    if not edges:
        return build()
    stamp = torch.cat([t * num_nodes * num_nodes + e[0] * num_nodes + e[1] for t, e in enumerate(edges)])
    key = (num_nodes, len(edges), stamp.shape[0], str(stamp.device), int(stamp.sum()))
    cache = _DERIVED.setdefault(name, OrderedDict())
    hit = cache.get(key)
    if hit is not None and torch.equal(hit[0], stamp):
        cache.move_to_end(key)
        return hit[1]
    value = build()
    cache[key] = (stamp, value)
    while len(cache) > keep:
        cache.popitem(last=False)
    return value


def edge_indicator(edges: list[torch.Tensor], keys: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """A_t on the pairs with ascending keys u N + v ``keys`` (P,) (those of :func:`pair_index`): a (T, P) 0/1
    float tensor for the T edge indices ``edges`` (2, E_t), built once per edge sequence and pair set
    (:func:`derived`) and shared: do not modify it in place. The models observe this very tensor, which
    :class:`~dgm_pyro.models.graph_likelihood.DenseGraphBernoulli` recognises and scores from the edges."""
    size = keys.shape[0]

    def build() -> torch.Tensor:
        out = torch.zeros(len(edges) * size, device=keys.device)
        if edges:
            out[torch.cat([t * size + torch.searchsorted(keys, e[0] * num_nodes + e[1])
                           for t, e in enumerate(edges)])] = 1.0
        return out.view(len(edges), size)

    return derived(f"edge indicator over {size} pairs", edges, num_nodes, build)


@dataclass
class GraphSequence:
    """T snapshots of a graph over a fixed set of N nodes.

    Attributes:
        x: node features (T, N, F); F may be 0.
        edges: per snapshot a (2, E_t) long tensor; u < v for undirected graphs.
        directed: whether edges are ordered pairs.
        name: where the data came from.
        node_ids: the original node identifiers (length N).
        truth: for synthetic data, the generating state (for example ``communities`` (T, N)).
        feature_names: one name per feature (default ``feature 0``, ...; ``nodes.csv``'s column names).
        static: one flag per feature: declared static by the data (``nodes.csv`` without a ``time``
            column), so a model conditions on it instead of forecasting it.
    """

    x: torch.Tensor
    edges: list[torch.Tensor]
    directed: bool = False
    name: str = "graphs"
    node_ids: list[Any] = field(default_factory=list)
    truth: dict[str, Any] = field(default_factory=dict)
    feature_names: list[str] = field(default_factory=list)
    static: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.x.dim() != 3:
            raise DgmPyroError(f"node features must have shape (T, N, F); got {tuple(self.x.shape)}")
        if len(self.edges) != self.x.shape[0]:
            raise DgmPyroError(f"{len(self.edges)} edge snapshots for {self.x.shape[0]} feature snapshots")
        if not self.node_ids:
            self.node_ids = list(range(self.num_nodes))
        if not self.feature_names:
            self.feature_names = [f"feature {i}" for i in range(self.num_features)]
        if not self.static:
            self.static = [False] * self.num_features
        if len(self.feature_names) != self.num_features or len(self.static) != self.num_features:
            raise DgmPyroError(f"{self.num_features} features but {len(self.feature_names)} names and "
                               f"{len(self.static)} static flags")

    @property
    def num_steps(self) -> int:
        return self.x.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.x.shape[1]

    @property
    def num_features(self) -> int:
        return self.x.shape[2]

    @property
    def num_pairs(self) -> int:
        n = self.num_nodes
        return n * (n - 1) if self.directed else n * (n - 1) // 2

    def adjacency(self, t: int) -> torch.Tensor:
        """Dense 0/1 adjacency (N, N) of snapshot t (symmetric for undirected graphs)."""
        a = torch.zeros(self.num_nodes, self.num_nodes)
        u, v = self.edges[t]
        a[u, v] = 1.0
        if not self.directed:
            a[v, u] = 1.0
        return a

    def message_index(self, t: int) -> torch.Tensor:
        """Snapshot t's edges as a message-passing ``edge_index`` (both directions for undirected graphs)."""
        e = self.edges[t]
        return e if self.directed else torch.cat([e, e.flip(0)], dim=1)

    def slice(self, start: int, stop: int) -> "GraphSequence":
        """Snapshots ``start:stop`` (truth arrays with a time axis are sliced too)."""
        truth = {k: (v[start:stop] if k in self.truth.get("_time_axis", ()) else v) for k, v in self.truth.items()}
        return GraphSequence(self.x[start:stop], self.edges[start:stop], self.directed, self.name,
                             list(self.node_ids), truth, list(self.feature_names), list(self.static))

    def split(self, test_steps: int) -> tuple["GraphSequence", "GraphSequence"]:
        """(history, held-out future): the last ``test_steps`` snapshots are held out."""
        if not 1 <= test_steps < self.num_steps - 1:
            raise DgmPyroError(f"test_steps must be between 1 and {self.num_steps - 2} for {self.num_steps} "
                               f"snapshots; got {test_steps}")
        cut = self.num_steps - test_steps
        return self.slice(0, cut), self.slice(cut, self.num_steps)

    def summary(self) -> dict[str, Any]:
        e = [int(ei.shape[1]) for ei in self.edges]
        return {"name": self.name, "snapshots": self.num_steps, "nodes": self.num_nodes,
                "features": self.num_features, "directed": self.directed, "edges_mean": float(np.mean(e)),
                "edges_min": min(e), "edges_max": max(e)}


def canonical_edges(edges: torch.Tensor, num_nodes: int, directed: bool) -> torch.Tensor:
    """Drop duplicates; for undirected graphs order each pair as u < v."""
    if edges.numel() == 0:
        return torch.zeros(2, 0, dtype=torch.long)
    u, v = edges
    if not directed:
        u, v = torch.minimum(u, v), torch.maximum(u, v)
    key = torch.unique(u * num_nodes + v)
    return torch.stack([key // num_nodes, key % num_nodes])


# --------------------------------------------------------------------------------------------------
# dynamic stochastic block model


def dynamic_sbm(num_nodes: int = 200, num_communities: int = 4, num_steps: int = 30, num_features: int = 4,
                p_in: float = 0.25, p_out: float = 0.02, switch_prob: float = 0.05, feature_spread: float = 2.0,
                feature_noise: float = 0.4, persistence: float = 0.5, seed: int = 0) -> GraphSequence:
    """An attributed dynamic stochastic block model with Markov community switches.

    Each node v has a community c_{v,t}; between steps it keeps it with probability 1 - ``switch_prob``
    and otherwise moves to one of the other communities uniformly. Edges are independent given the
    communities, A_{uv,t} ~ Bernoulli(B[c_{u,t}, c_{v,t}]) with B = ``p_in`` on the diagonal and ``p_out``
    off it. Features drift towards the current community's centre,

        x_{v,t} = r x_{v,t-1} + (1 - r) mu_{c_{v,t}} + L eps,   eps ~ N(0, I_F),

    with r = ``persistence``, centres mu_k ~ N(0, spread^2 I) and a correlated noise factor L (so a
    full covariance matters). ``truth`` holds ``communities`` (T, N) and every parameter; the
    :class:`dgm_pyro.models.DSBMOracle` forecasts with them.
    """
    for name, p in (("p_in", p_in), ("p_out", p_out), ("switch_prob", switch_prob), ("persistence", persistence)):
        if not 0 <= p <= 1:
            raise DgmPyroError(f"dynamic_sbm: {name} must be in [0, 1], got {p}")
    if num_nodes < 2 or num_communities < 1 or num_steps < 2 or num_features < 0:
        raise DgmPyroError("dynamic_sbm: needs num_nodes >= 2, num_communities >= 1, num_steps >= 2, num_features >= 0")
    g = torch.Generator().manual_seed(seed)
    k, f = num_communities, num_features
    centres = feature_spread * torch.randn(k, f, generator=g)
    a = torch.randn(f, f, generator=g) * 0.5
    noise_cov = feature_noise**2 * (torch.eye(f) + a @ a.T / max(f, 1))
    noise_tril = torch.linalg.cholesky(noise_cov) if f else torch.zeros(0, 0)
    blocks = torch.full((k, k), p_out)
    blocks.fill_diagonal_(p_in)
    transition = torch.full((k, k), switch_prob / max(k - 1, 1))
    transition.fill_diagonal_(1 - switch_prob if k > 1 else 1.0)
    params = {"centres": centres, "noise_tril": noise_tril, "blocks": blocks, "transition": transition,
              "persistence": persistence}
    c = torch.randint(k, (num_nodes,), generator=g)
    x = centres[c] + torch.randn(num_nodes, f, generator=g) @ noise_tril.T
    comms, feats, edges = [], [], []
    for _ in range(num_steps):
        c, x, e = dsbm_step(c, x, params, g)
        comms.append(c)
        feats.append(x)
        edges.append(e)
    truth = {"communities": torch.stack(comms), "_time_axis": ("communities",), **params}
    return GraphSequence(torch.stack(feats), edges, directed=False, name="dsbm", truth=truth)


def dsbm_step(c: torch.Tensor, x: torch.Tensor, params: dict[str, Any],
               g: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the DSBM from communities ``c`` (..., N) and features ``x`` (..., N, F)."""
    trans = params["transition"]
    c = torch.multinomial(trans[c.reshape(-1)], 1, generator=g).reshape(c.shape)
    r = params["persistence"]
    eps = torch.randn(*x.shape, generator=g)
    x = r * x + (1 - r) * params["centres"][c] + eps @ params["noise_tril"].T
    n = c.shape[-1]
    pairs = torch.triu_indices(n, n, offset=1)
    prob = params["blocks"][c[..., pairs[0]], c[..., pairs[1]]]
    keep = torch.rand(prob.shape, generator=g) < prob
    return c, x, pairs[:, keep] if c.dim() == 1 else keep


# --------------------------------------------------------------------------------------------------
# real and user data


#: the names of :func:`degree_features`, undirected and directed
DEGREE_FEATURES = {False: ["log(1 + degree)"], True: ["log(1 + out-degree)", "log(1 + in-degree)"]}


def degree_features(edges: list[torch.Tensor], num_nodes: int, directed: bool) -> torch.Tensor:
    """log(1 + degree) per node and snapshot (T, N, 1), or (T, N, 2) out/in for directed graphs: the node
    features of graphs that come without any."""
    out = []
    for e in edges:
        cols = [torch.bincount(e[0], minlength=num_nodes)]
        cols.append(torch.bincount(e[1], minlength=num_nodes))
        deg = torch.stack(cols, -1).float() if directed else (cols[0] + cols[1]).float().unsqueeze(-1)
        out.append(torch.log1p(deg))
    return torch.stack(out)
