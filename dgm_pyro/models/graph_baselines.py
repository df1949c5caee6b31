"""Baseline graph forecasters, scored on the same split as :class:`~dgm_pyro.models.GraphSSM`.

Each has ``forecast(history, horizon, num_samples) -> {"X": (S, H, N, F), "edge_prob": (H, N, N)}``.
"""

from __future__ import annotations

import math
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from ..errors import DgmPyroError
from ..data.graphs import GraphSequence, dsbm_step, edge_indicator, pair_index
from .gnn import SnapshotEncoder
from .graph_likelihood import DenseGraphBernoulli
from .graph_memory import PairHistory
from .nn import register_module

__all__ = ["Persistence", "HistoricalMean", "GCNGRUForecaster", "DSBMOracle"]


class Persistence:
    """Tomorrow looks like today: the last snapshot's edges (probability 0 or 1) and features (a point forecast)."""

    name = "persistence"

    def features(self, history: GraphSequence, horizon: int) -> torch.Tensor:
        """Feature draws (1, H, N, F): the last snapshot's."""
        return history.x[-1].expand(1, horizon, *history.x.shape[1:]).clone()

    def forecast(self, history: GraphSequence, horizon: int, num_samples: int = 1) -> dict[str, torch.Tensor]:
        t = history.num_steps - 1
        return {"X": self.features(history, horizon), "edge_prob": history.adjacency(t).expand(horizon, -1, -1).clone()}

    def edge_probability_at(self, history: GraphSequence, pairs: torch.Tensor) -> torch.Tensor:
        """The edge probability (P,) of the pairs (2, P) (canonical), at every horizon: 1 for an edge of the last
        snapshot, else 0."""
        n, last = history.num_nodes, history.edges[-1]
        return torch.isin(pairs[0] * n + pairs[1], last[0] * n + last[1]).float()


class HistoricalMean:
    """Climatology: each pair's edge frequency over the history, and each node's past feature values as an
    ensemble (one draw per past snapshot)."""

    name = "historical mean"

    def features(self, history: GraphSequence, horizon: int) -> torch.Tensor:
        """Feature draws (T, H, N, F): each past snapshot is one draw."""
        return history.x.unsqueeze(1).expand(-1, horizon, -1, -1).clone()

    def forecast(self, history: GraphSequence, horizon: int, num_samples: int = 1) -> dict[str, torch.Tensor]:
        freq = sum(history.adjacency(t) for t in range(history.num_steps)) / history.num_steps
        return {"X": self.features(history, horizon), "edge_prob": freq.expand(horizon, -1, -1).clone()}

    def edge_probability_at(self, history: GraphSequence, pairs: torch.Tensor) -> torch.Tensor:
        """The edge probability (P,) of the pairs (2, P) (canonical), at every horizon: the share of past
        snapshots with that edge."""
        t = history.num_steps
        count = PairHistory.after(history.edges, history.num_nodes, torch.tensor(1.0)).at(
            torch.full_like(pairs[0], t), pairs[0], pairs[1])[2]
        return count / t


class GCNGRUForecaster(PyroModule):
    """Deterministic GCN + GRU predictor: a GCN encodes each snapshot, a GRU per node carries the history, and
    linear heads predict the next features and edge embeddings (edge probability sigma(<e_u, e_v> + b)).

    Trained one step ahead on the mean squared error of the standardised features plus the mean edge
    cross-entropy, written as a Pyro program without latent variables (``model`` observes ``x`` and ``a``,
    snapshots 2..T in plate ``time``, with scales that make -log p equal that loss up to a constant; ``guide``
    is empty), so the one training loop trains it. For h > 1 it feeds back its own feature predictions with the
    last observed edges. Its feature forecast is a point (S = 1).
    """

    name = "GCN+GRU"

    def __init__(self, num_nodes: int, num_features: int, hidden: int = 64, directed: bool = False,
                 embedding_dim: int = 16, feature_shift: Optional[torch.Tensor] = None,
                 feature_scale: Optional[torch.Tensor] = None, pyro_name: str = "gcn_gru"):
        super().__init__(pyro_name)
        self.num_nodes, self.num_features, self.directed = num_nodes, num_features, directed
        self.embedding = nn.Parameter(0.1 * torch.randn(num_nodes, embedding_dim))
        self.encoder = SnapshotEncoder(num_features + embedding_dim, hidden, "gcn")
        self.cell = nn.GRUCell(hidden, hidden)
        self.feature_head = nn.Linear(hidden, num_features)
        self.edge_head = nn.Linear(hidden, 16)
        self.edge_bias = nn.Parameter(torch.tensor(-3.0))
        self.register_buffer("shift", torch.zeros(num_features) if feature_shift is None else feature_shift.float())
        self.register_buffer("scale", torch.ones(num_features) if feature_scale is None else feature_scale.float())

    def _step(self, state: torch.Tensor, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, ...]:
        msg = e if self.directed else torch.cat([e, e.flip(0)], 1)
        h = self.encoder(torch.cat([(x - self.shift) / self.scale, self.embedding], -1), msg)
        state = self.cell(h, state)
        return state, self.shift + self.scale * self.feature_head(state), self.edge_head(state)

    def _logits(self, emb: torch.Tensor) -> torch.Tensor:
        return emb @ emb.transpose(-1, -2) + self.edge_bias

    def model(self, x: torch.Tensor, edges: list[torch.Tensor]) -> None:
        """One-step-ahead predictions of snapshots 2..T from 1..T-1: x (T, N, F), T edge indices (2, E_t).
        The GNN encodings of all snapshots are one batched computation; only the GRU cell runs per step."""
        register_module(self._pyro_name, self)
        n, f, num = self.num_nodes, self.num_features, len(edges) - 1
        inputs = torch.cat([(x[:num] - self.shift) / self.scale, self.embedding.expand(num, -1, -1)], -1)
        encoded = self.encoder.encode_sequence(inputs, edges[:num], self.directed).unbind(0)
        state, states = x.new_zeros(n, self.cell.hidden_size), []
        for h in encoded:
            state = self.cell(h, state)
            states.append(state)
        states = torch.stack(states)  # (T - 1, N, hidden)
        time = pyro.plate("time", num, dim=-1)
        if f:
            x_hat = self.shift + self.scale * self.feature_head(states)
            # N(x_hat, scale^2 / 2): -log p = mean squared standardised error + const under the scale 1/(N F)
            with time, poutine.scale(scale=1.0 / (n * f)):
                pyro.sample("x", dist.Normal(x_hat, self.scale / math.sqrt(2)).to_event(2), obs=x[1:])
        pairs = pair_index(n, self.directed).to(x.device)
        keys = pairs[0] * n + pairs[1]
        emb = self.edge_head(states)
        # every pair of snapshots 2..T, one event; scored without (T, N^2) logits (graph_likelihood)
        observed = edge_indicator(edges[1:], keys, n)
        with poutine.scale(scale=1.0 / keys.shape[0]):
            pyro.sample("a", DenseGraphBernoulli(emb, emb, self.edge_bias, keys, n, observed=edges[1:],
                                                 indicator=observed), obs=observed)

    def guide(self, x: torch.Tensor, edges: list[torch.Tensor]) -> None:
        """No latent variables: the empty guide."""

    @torch.no_grad()
    def forecast(self, history: GraphSequence, horizon: int, num_samples: int = 1) -> dict[str, torch.Tensor]:
        state = history.x.new_zeros(self.num_nodes, self.cell.hidden_size)
        for t in range(history.num_steps):
            state, x_hat, emb = self._step(state, history.x[t], history.edges[t])
        xs, probs = [], []
        last_edges = history.edges[-1]
        for _ in range(horizon):
            xs.append(x_hat)
            p = torch.sigmoid(self._logits(emb)) * (1 - torch.eye(self.num_nodes, device=emb.device))
            probs.append(p)
            state, x_hat, emb = self._step(state, x_hat, last_edges)
        return {"X": torch.stack(xs).unsqueeze(0), "edge_prob": torch.stack(probs)}


class DSBMOracle:
    """The forecaster that knows the DSBM's parameters and its true state at the forecast origin.

    Its edge probabilities are exact: with p_{v,h} = onehot(c_{v,T}) Pi^h the community distribution of v
    after h steps (nodes switch independently), P(A_{uv,T+h} = 1) = p_{u,h}^T B p_{v,h}. Its feature
    samples are draws of the true process. No model can be better calibrated on this data.
    """

    def __init__(self, history: GraphSequence):
        if "blocks" not in history.truth:
            raise DgmPyroError("the oracle needs a dynamic-SBM sequence with its truth")
        self.params = history.truth
        self.c_last = history.truth["communities"][-1]
        self.x_last = history.x[-1]

    def forecast(self, horizon: int, num_samples: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """``{"X": (S, H, N, F), "edge_prob": (H, N, N)}``."""
        g = torch.Generator().manual_seed(seed)
        p = self.params
        n = self.c_last.shape[0]
        c = self.c_last.expand(num_samples, n).clone()
        x = self.x_last.expand(num_samples, *self.x_last.shape).clone()
        xs, probs = [], []
        dist_c = torch.nn.functional.one_hot(self.c_last, p["blocks"].shape[0]).float()
        for _ in range(horizon):
            c, x, _ = dsbm_step(c, x, p, g)
            xs.append(x)
            dist_c = dist_c @ p["transition"]
            prob = dist_c @ p["blocks"] @ dist_c.T
            prob.fill_diagonal_(0.0)
            probs.append(prob)
        return {"X": torch.stack(xs, 1), "edge_prob": torch.stack(probs)}
