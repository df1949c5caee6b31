"""Baseline graph forecasters, scored on the same split as :class:`~dgm_pyro.models.GraphSSM`.

Each has ``forecast(history, horizon, num_samples) -> {"X": (S, H, N, F), "edge_prob": (H, N, N)}``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.graphs import GraphSequence, pair_index
from .gnn import SnapshotEncoder

__all__ = ["Persistence", "HistoricalMean", "GCNGRUForecaster"]


class Persistence:
    """Tomorrow looks like today: the last snapshot's edges (probability 0 or 1) and features (a point forecast)."""

    name = "persistence"

    def forecast(self, history: GraphSequence, horizon: int, num_samples: int = 1) -> dict[str, torch.Tensor]:
        t = history.num_steps - 1
        return {"X": history.x[t].expand(1, horizon, *history.x.shape[1:]).clone(),
                "edge_prob": history.adjacency(t).expand(horizon, -1, -1).clone()}


class HistoricalMean:
    """Climatology: each pair's edge frequency over the history, and each node's past feature values as an
    ensemble (one draw per past snapshot)."""

    name = "historical mean"

    def forecast(self, history: GraphSequence, horizon: int, num_samples: int = 1) -> dict[str, torch.Tensor]:
        freq = sum(history.adjacency(t) for t in range(history.num_steps)) / history.num_steps
        return {"X": history.x.unsqueeze(1).expand(-1, horizon, -1, -1).clone(),
                "edge_prob": freq.expand(horizon, -1, -1).clone()}


class GCNGRUForecaster(nn.Module):
    """Deterministic GCN + GRU predictor: a GCN encodes each snapshot, a GRU per node carries the history, and
    linear heads predict the next features and edge embeddings (edge probability sigma(<e_u, e_v> + b)).
    Trained on one-step-ahead squared error plus edge cross-entropy; for h > 1 it feeds back its own
    feature predictions with the last observed edges. Its feature forecast is a point (S = 1)."""

    name = "GCN+GRU"

    def __init__(self, num_nodes: int, num_features: int, hidden: int = 64, directed: bool = False,
                 embedding_dim: int = 16):
        super().__init__()
        self.num_nodes, self.num_features, self.directed = num_nodes, num_features, directed
        self.embedding = nn.Parameter(0.1 * torch.randn(num_nodes, embedding_dim))
        self.encoder = SnapshotEncoder(num_features + embedding_dim, hidden, "gcn")
        self.cell = nn.GRUCell(hidden, hidden)
        self.feature_head = nn.Linear(hidden, num_features)
        self.edge_head = nn.Linear(hidden, 16)
        self.edge_bias = nn.Parameter(torch.tensor(-3.0))
        self.register_buffer("shift", torch.zeros(num_features))
        self.register_buffer("scale", torch.ones(num_features))

    def _step(self, state: torch.Tensor, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, ...]:
        msg = e if self.directed else torch.cat([e, e.flip(0)], 1)
        h = self.encoder(torch.cat([(x - self.shift) / self.scale, self.embedding], -1), msg)
        state = self.cell(h, state)
        return state, self.shift + self.scale * self.feature_head(state), self.edge_head(state)

    def _logits(self, emb: torch.Tensor) -> torch.Tensor:
        return emb @ emb.T + self.edge_bias

    def fit(self, history: GraphSequence, steps: int = 300, lr: float = 1e-2, seed: int = 0) -> "GCNGRUForecaster":
        """One-step-ahead training on the whole history."""
        torch.manual_seed(seed)
        self.shift = history.x.mean((0, 1))
        self.scale = history.x.std((0, 1)).clamp_min(1e-6)
        u, v = pair_index(self.num_nodes, self.directed)
        targets = [history.adjacency(t)[u, v] for t in range(1, history.num_steps)]
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            state = torch.zeros(self.num_nodes, self.cell.hidden_size)
            loss = torch.zeros(())
            for t in range(history.num_steps - 1):
                state, x_hat, emb = self._step(state, history.x[t], history.edges[t])
                if self.num_features:
                    loss = loss + (((x_hat - history.x[t + 1]) / self.scale) ** 2).mean()
                loss = loss + nn.functional.binary_cross_entropy_with_logits(self._logits(emb)[u, v], targets[t])
            loss.backward()
            nn.utils.clip_grad_norm_(self.parameters(), 10.0)
            opt.step()
        return self

    @torch.no_grad()
    def forecast(self, history: GraphSequence, horizon: int, num_samples: int = 1) -> dict[str, torch.Tensor]:
        state = torch.zeros(self.num_nodes, self.cell.hidden_size)
        for t in range(history.num_steps):
            state, x_hat, emb = self._step(state, history.x[t], history.edges[t])
        xs, probs = [], []
        last_edges = history.edges[-1]
        for _ in range(horizon):
            xs.append(x_hat)
            p = torch.sigmoid(self._logits(emb)) * (1 - torch.eye(self.num_nodes))
            probs.append(p)
            state, x_hat, emb = self._step(state, x_hat, last_edges)
        return {"X": torch.stack(xs).unsqueeze(0), "edge_prob": torch.stack(probs)}
