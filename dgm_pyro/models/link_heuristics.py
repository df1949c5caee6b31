"""The link-prediction baselines that dynamic link prediction papers report beside learned models (EdgeBank of
DyGLib/TGB, the exponentially weighted moving average of the past adjacency, and the neighbourhood heuristics of
Liben-Nowell and Kleinberg 2007): each scores every pair from the history alone, with the interface of
:mod:`~dgm_pyro.models.graph_baselines` (``forecast(history, horizon)``, ``edge_probability_at(history, pairs)``).

Two kinds of score:

- *probabilities* (``probabilistic = True``): EWMA, a weighted share of past snapshots with the edge, and
  EdgeBank's 0/1 memory. Every edge metric applies (AUC, AP, Brier, ECE, log-likelihood).
- *ranking scores* (``probabilistic = False``): common neighbours, Adamic-Adar, preferential attachment and
  Katz on the history's union graph. Only the ranking metrics (AUC, AP) apply; the others are NaN.

None of them forecasts node features (their feature columns are NaN). All are dense (N x N), for graphs up to
:data:`~dgm_pyro.metrics.FORECAST_MAX_NODES` nodes; ``edge_probability_at`` scores a list of pairs of larger graphs
where the heuristic allows it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..data.graphs import GraphSequence, pair_index
from ..errors import DgmPyroError

__all__ = ["EWMA", "EdgeBank", "CommonNeighbours", "AdamicAdar", "PreferentialAttachment", "Katz",
           "katz_index", "past_union", "link_heuristics", "EWMA_DECAYS"]

#: the decays EWMA chooses from (on the history alone)
EWMA_DECAYS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def _adjacencies(history: GraphSequence) -> torch.Tensor:
    """The history's adjacency matrices (T, N, N), symmetric when undirected."""
    return torch.stack([history.adjacency(t) for t in range(history.num_steps)])


def past_union(edges: Sequence[torch.Tensor], num_nodes: int) -> torch.Tensor:
    """The symmetric 0/1 graph (N, N) of every edge in ``edges`` (a directed edge links both ways), no self-loops."""
    device = edges[0].device if edges else None
    union = torch.zeros(num_nodes, num_nodes, device=device)
    for e in edges:
        union[e[0], e[1]] = 1.0
        union[e[1], e[0]] = 1.0
    return union.fill_diagonal_(0.0)


def _symmetric_union(history: GraphSequence) -> torch.Tensor:
    """The union graph of the history (N, N), 0/1 in float64 (:func:`past_union`)."""
    return past_union(history.edges, history.num_nodes).double()


class _Heuristic:
    """A score per pair for every horizon step (the same at every step: the history is all they see)."""

    name = ""
    probabilistic = False

    def scores(self, history: GraphSequence) -> torch.Tensor:
        """The score of every ordered pair (N, N)."""
        raise NotImplementedError

    def forecast(self, history: GraphSequence, horizon: int, num_samples: int = 1) -> dict[str, Optional[torch.Tensor]]:
        """``{"X": None, "edge_prob": (H, N, N)}``: no feature forecast, the scores at every step."""
        return {"X": None, "edge_prob": self.scores(history).float().expand(horizon, -1, -1).clone()}

    def edge_probability_at(self, history: GraphSequence, pairs: torch.Tensor) -> torch.Tensor:
        """The scores (P,) of the pairs (2, P)."""
        return self.scores(history)[pairs[0], pairs[1]].float()


class EWMA(_Heuristic):
    """Exponentially weighted moving average of the past adjacency: p_uv = sum_s w_s A_uv,s / sum_s w_s with
    w_s = decay^(T-1-s), a probability. The decay is chosen on the history alone: the one of ``decays`` whose
    one-step-ahead forecasts of snapshots 1..T-1 (each from the snapshots before it) have the lowest Brier score
    over all pairs. ``decay`` fixes it instead."""

    name = "EWMA"
    probabilistic = True

    def __init__(self, decay: Optional[float] = None, decays: Sequence[float] = EWMA_DECAYS):
        if decay is not None and not 0 < decay <= 1:
            raise DgmPyroError(f"EWMA: decay must be in (0, 1], got {decay}")
        self.decay, self.decays = decay, tuple(decays)
        self.chosen: Optional[float] = decay

    @staticmethod
    def average(adjacency: torch.Tensor, decay: float) -> torch.Tensor:
        """The EWMA (N, N) of adjacency matrices (T, N, N), the last weighted 1."""
        t = adjacency.shape[0]
        w = torch.tensor([decay ** (t - 1 - s) for s in range(t)], dtype=torch.float64)
        return torch.einsum("t,tuv->uv", w, adjacency.double()) / w.sum()

    def choose_decay(self, history: GraphSequence) -> float:
        """The decay with the lowest one-step Brier score inside the history (the first of ties, ``decays[0]``
        when the history has a single snapshot)."""
        a = _adjacencies(history).double()
        if a.shape[0] < 2:
            return self.decays[0]
        u, v = pair_index(history.num_nodes, history.directed)
        pairs = a[:, u, v]  # (T, P)

        def brier(decay: float) -> float:
            return sum(float(((self.average(pairs[:t, None], decay)[0] - pairs[t]) ** 2).mean())
                       for t in range(1, pairs.shape[0]))

        return min(self.decays, key=brier)

    def scores(self, history: GraphSequence) -> torch.Tensor:
        self.chosen = self.decay if self.decay is not None else self.choose_decay(history)
        return self.average(_adjacencies(history), self.chosen)


class EdgeBank(_Heuristic):
    """EdgeBank (Poursafaei et al. 2022): 1 for a pair with an edge in the last ``window`` snapshots (all of the
    history when ``None``), else 0."""

    name = "EdgeBank"
    probabilistic = True

    def __init__(self, window: Optional[int] = None):
        if window is not None and window < 1:
            raise DgmPyroError(f"EdgeBank: window must be >= 1, got {window}")
        self.window = window
        if window is not None:
            self.name = f"EdgeBank (last {window})"

    def scores(self, history: GraphSequence) -> torch.Tensor:
        a = _adjacencies(history)
        return (a[-self.window:] if self.window is not None else a).amax(0).double()


class CommonNeighbours(_Heuristic):
    """|N(u) & N(v)| in the history's union graph: (A A)_uv."""

    name = "common neighbours"

    def scores(self, history: GraphSequence) -> torch.Tensor:
        a = _symmetric_union(history)
        return a @ a


class AdamicAdar(_Heuristic):
    """sum over common neighbours w of 1 / log deg(w) in the history's union graph (a neighbour of degree 1 is
    no common neighbour of two nodes, so log deg(w) > 0 where it counts)."""

    name = "Adamic-Adar"

    def scores(self, history: GraphSequence) -> torch.Tensor:
        a = _symmetric_union(history)
        deg = a.sum(0)
        inv = torch.where(deg > 1, 1.0 / deg.clamp_min(2).log(), torch.zeros_like(deg))
        return (a * inv) @ a


class PreferentialAttachment(_Heuristic):
    """deg(u) deg(v) in the history's union graph."""

    name = "preferential attachment"

    def scores(self, history: GraphSequence) -> torch.Tensor:
        deg = _symmetric_union(history).sum(0)
        return torch.outer(deg, deg)


def katz_index(adjacency: torch.Tensor, damping: float = 0.5, normalise: str = "eigenvalue") -> torch.Tensor:
    """The Katz index K = sum_{l >= 1} beta^l A^l = (I - beta A)^-1 - I (..., N, N), float64, of symmetric 0/1
    adjacency matrices A (..., N, N) (a batch of graphs allowed), with beta = ``damping`` / r and r the largest
    eigenvalue of A (``normalise="eigenvalue"``) or its largest degree (``"degree"``: an upper bound of that
    eigenvalue, cheap for a batch of graphs), so that the series converges. Zero for a graph without edges."""
    if normalise not in ("eigenvalue", "degree"):
        raise ValueError(f"normalise must be 'eigenvalue' or 'degree', got {normalise!r}")
    a = adjacency.double()
    n = a.shape[-1]
    if n == 0:
        return a.clone()
    r = torch.linalg.eigvalsh(a)[..., -1] if normalise == "eigenvalue" else a.sum(-1).amax(-1)
    beta = torch.where(r > 0, damping / r.clamp_min(1e-12), torch.zeros_like(r))
    eye = torch.eye(n, dtype=a.dtype, device=a.device)
    return torch.linalg.inv(eye - beta[..., None, None] * a) - eye


class Katz(_Heuristic):
    """sum_{l >= 1} beta^l (A^l)_uv = ((I - beta A)^-1 - I)_uv in the history's union graph, with beta =
    ``damping`` / (the largest eigenvalue of A), so that the series converges (:func:`katz_index`)."""

    name = "Katz"

    def __init__(self, damping: float = 0.5):
        if not 0 < damping < 1:
            raise DgmPyroError(f"Katz: damping must be in (0, 1), got {damping}")
        self.damping = damping

    def scores(self, history: GraphSequence) -> torch.Tensor:
        return katz_index(_symmetric_union(history), self.damping)


def link_heuristics() -> list[_Heuristic]:
    """One of each baseline, in the order of the tables (new objects: EWMA keeps the decay it chose)."""
    return [EWMA(), EdgeBank(), CommonNeighbours(), AdamicAdar(), PreferentialAttachment(), Katz()]
