"""What a graph's past adds to an edge's logit in the GraphSSM (seed P4): each pair's edge history
(:class:`PairHistory`: the edge before, its decayed memory and count) and each node's decayed past degree
(:func:`node_activity`) and each pair's proximity in the graph of all past edges (:func:`katz_proximity`), for the
observed snapshots and, step by step, for forecast paths.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..data.graphs import derived, sorted_lookup
from .link_heuristics import katz_index, past_union

__all__ = ["PairHistory", "node_activity", "katz_proximity", "proximity_history", "PROXIMITY_SCALE"]

#: the Katz index's scale in the proximity feature log(1 + K / scale): pairs about four hops apart and closer get
#: distinct values, unconnected pairs 0
PROXIMITY_SCALE = 1e-8


def katz_proximity(union: torch.Tensor, damping: float) -> torch.Tensor:
    """The proximity feature pi_uv = log(1 + K_uv / :data:`PROXIMITY_SCALE`) (..., N, N), float32, of symmetric 0/1
    graphs ``union`` (..., N, N): K the Katz index with beta = ``damping`` / the largest degree
    (:func:`~dgm_pyro.models.link_heuristics.katz_index`, in float64: K spans many orders of magnitude)."""
    return torch.log1p(katz_index(union, damping, normalise="degree") / PROXIMITY_SCALE).float()


def proximity_history(edges: list[torch.Tensor], num_nodes: int, damping: float, keys: torch.Tensor) -> torch.Tensor:
    """The proximity (:func:`katz_proximity`) of the pairs with keys u N + v ``keys`` (P,) before each snapshot:
    (T, P), row t from the union graph of snapshots 0..t-1 (0-based; row 0 all zero). One N x N inversion per
    snapshot, computed once per edge sequence (:func:`~dgm_pyro.data.graphs.derived`)."""

    def build() -> torch.Tensor:
        rows = [torch.zeros(keys.shape[0], device=keys.device)]
        for t in range(1, len(edges)):
            rows.append(katz_proximity(past_union(edges[:t], num_nodes), damping).flatten().index_select(0, keys))
        return torch.stack(rows) if edges else torch.zeros(0, keys.shape[0], device=keys.device)

    return derived(f"katz proximity {damping} over {keys.shape[0]} pairs", edges, num_nodes, build)


def node_activity(edges: list[torch.Tensor], num_nodes: int, directed: bool, decay: torch.Tensor) -> torch.Tensor:
    """The nodes' decayed past degrees before each snapshot and after the last: (T + 1, N, 2) with
    D_{v,t} = sum_{s < t} beta^{t-1-s} deg_s(v) for t = 0..T (0-based snapshots; row T is the state where
    forecasts start), column 0 the out-degree and column 1 the in-degree (both the degree when undirected). One
    (T + 1, T) matrix of powers of ``decay`` = beta times the per-snapshot degrees: differentiable in beta."""
    num_t = len(edges)
    device = decay.device

    def degrees() -> torch.Tensor:  # (T, N, 2), built once per edge sequence
        out = torch.zeros(num_t, num_nodes, 2, device=device)
        for t, e in enumerate(edges):
            out[t, :, 0] = torch.bincount(e[0], minlength=num_nodes).float()
            out[t, :, 1] = torch.bincount(e[1], minlength=num_nodes).float()
        if not directed:
            out = out.sum(-1, keepdim=True).expand(-1, -1, 2).contiguous()
        return out

    deg = derived(f"node degrees {directed}", edges, num_nodes, degrees)
    t = torch.arange(num_t + 1, device=device).unsqueeze(-1)
    s = torch.arange(num_t, device=device)
    lag = (t - 1 - s).clamp(min=0).float()
    weights = torch.where(s < t, decay ** lag, torch.zeros((), device=device))  # (T + 1, T)
    return (weights @ deg.flatten(1)).view(num_t + 1, num_nodes, 2)


class PairHistory:
    """The edge history before each snapshot, (A_{uv,t-1}, M_{uv,t-1}, C_{uv,t-1}, R_{uv,t-1}) for t = 1..T, for any
    pairs: the last edge, the count decayed by rho, the undecayed count and, given ``recent_decay``, a second count
    R decayed by that faster rate (None otherwise).

    Only pairs that ever have an edge can have a non-zero history, so they are kept as K sorted keys
    u N + v with a (T, K) presence matrix; the decayed counts before every snapshot follow from one
    recursion over time (differentiable in rho), and a lookup is one ``searchsorted``. Cost grows with the
    edges and T, not N^2. Attributes: ``keys`` (K,) and the states ``last``, ``decayed``, ``count``, ``recent``
    (T, K) of those pairs before every snapshot.
    """

    def __init__(self, edges: list[torch.Tensor], num_nodes: int, decay: torch.Tensor,
                 recent_decay: Optional[torch.Tensor] = None):
        self.num_nodes = num_nodes
        # what does not depend on rho is built once per edge sequence
        self.keys, presence, self.last, self.count = derived(
            "pair history", edges, num_nodes, lambda: self._presence(edges, num_nodes, decay.device))
        self.decayed = self._decayed(presence, decay)
        self.recent = None if recent_decay is None else self._decayed(presence, recent_decay)

    @staticmethod
    def _decayed(presence: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
        """M_t = rho M_{t-1} + presence[t - 1] before each snapshot t (0-based), M_0 = 0: a recursion over T vectors
        of length K (linear in T, differentiable in rho)."""
        decayed = [presence.new_zeros(presence.shape[1])]
        for t in range(1, presence.shape[0]):
            decayed.append(decay * decayed[-1] + presence[t - 1])
        return torch.stack(decayed) if presence.shape[0] else presence

    @staticmethod
    def _presence(edges: list[torch.Tensor], num_nodes: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The K keys, and (T, K) presence, last edge and count before each snapshot."""
        num_t = len(edges)
        keys = torch.cat([e[0] * num_nodes + e[1] for e in edges]) if edges else \
            torch.zeros(0, dtype=torch.long, device=device)
        keys, position = torch.unique(keys, return_inverse=True)
        presence = torch.zeros(num_t, keys.shape[0], device=device)
        time = torch.cat([torch.full_like(e[0], t) for t, e in enumerate(edges)]) if edges else position
        presence[time, position] = 1.0
        last = torch.cat([presence.new_zeros(1, presence.shape[1]), presence[:-1]]) if num_t else presence
        return keys, presence, last, presence.cumsum(0) - presence

    @classmethod
    def after(cls, edges: list[torch.Tensor], num_nodes: int, decay: torch.Tensor,
              recent_decay: Optional[torch.Tensor] = None) -> "PairHistory":
        """The history with one empty snapshot appended: its :meth:`at` time ``len(edges)`` is the state after the
        last snapshot, (A_T, M_T, C_T, R_T), where forecasts start."""
        empty = torch.zeros(2, 0, dtype=torch.long, device=decay.device)
        return cls(list(edges) + [empty], num_nodes, decay, recent_decay)

    def at(self, time: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        """(last edge, decayed count, count, recent count or None) (M,) of the pairs (src[i], dst[i]) before
        snapshot ``time[i]`` (0-based)."""
        idx, found = sorted_lookup(self.keys, src * self.num_nodes + dst)
        found = found.float()
        if self.keys.numel() == 0:
            return found, found, found, None if self.recent is None else found
        states = (self.last, self.decayed, self.count, self.recent)
        return tuple(None if x is None else found * x[time, idx] for x in states)
