"""A Markov latent state-space model over graph sequences (seed P4), a plain Pyro model and guide.

Generative model (P4.1), for snapshots t = 1..T of one set of N nodes, with per-node latents Z_t (N, d)::

    Z_0                      learned (one row per node)
    X_t, A_t | Z_{t-1}       node features Gaussian with a full per-node covariance (or, per feature, a
                             hurdle log-normal for count-like features), edges Bernoulli  (P4.2)
    Z_t | Z_{t-1}            Normal(Z_{t-1} + f(Z_{t-1}, c(Z_{t-1})), diag s(Z_{t-1}, c(Z_{t-1}))^2)

where c is a pooled context (the mean over nodes of a learned map of every node's latent), so each node's
move depends on the whole graph's state. The edge decoder is autoregressive in the graph: the logit of
a pair is

    sum_k g_k(z_u) lambda_k g_k(z_v) + b + alpha A_{uv,t-1} + gamma log(1 + M_{uv,t-1}) [+ eta log(1 + C_{uv,t-1})]
        [+ omega log(1 + R_{uv,t-1})]
        + kappa (log(1 + D_{u,t-1}) + log(1 + D_{v,t-1})) + mu (log(1 + K_{u,t-1}) + log(1 + K_{v,t-1}))
        [+ 1{C_{uv,t-1} > 0} (kappa' (log(1 + D_{u,t-1}) + log(1 + D_{v,t-1}))
                              + mu' (log(1 + K_{u,t-1}) + log(1 + K_{v,t-1})))]
        [+ phi pi_{uv,t-1}],
    M_{uv,t-1} = sum_{s <= t-1} rho^{t-1-s} A_{uv,s}      (a decayed count of the pair's past edges)
    C_{uv,t-1} = sum_{s <= t-1} A_{uv,s}                  (the undecayed count: the pair's long-run frequency)
    R_{uv,t-1} = sum_{s <= t-1} tau^{t-1-s} A_{uv,s}      (a second, faster-decaying count: recency beyond lag 1)
    D_{v,t-1}  = sum_{s <= t-1} beta^{t-1-s} deg_s(v)     (the node's decayed past degree: its recent activity)
    K_{v,t-1}  = sum_{s <= t-1} deg_s(v)                  (its undecayed past degree: its long-run activity)
    pi_{uv,t-1} = log(1 + Katz_uv(U_{t-1}) / 1e-8)        (the pair's proximity in the union graph U_{t-1} of
                                                            snapshots 1..t-1: paths of every length, damped)

(undirected; two maps g, h for directed graphs, and there the source's out-degrees and the destination's
in-degrees with their own kappa and mu), over pairs u < v (undirected) or all ordered pairs u != v (directed);
alpha, gamma, eta, omega, kappa, mu and rho, tau, beta in (0, 1) are learned, ``edge_memory=False`` drops the
pair memory terms, ``edge_frequency=True`` adds the undecayed pair count, ``edge_recency=True`` the fast count R
(the memory then has two timescales: the one-step likelihood drives rho towards 1 on bursty data, and with only
A_{t-1} for recency an edge two steps back adds nothing to a forecast two steps ahead) and
``node_activity=False`` drops the two activity terms (node-level propensities: how active a node was lately, and
over the whole history); ``edge_proximity=True`` adds the proximity term (pairs that share neighbours, or are a
few hops apart, link more: triadic closure) and ``memory_activity=True`` gives pairs with a past edge their own
activity weights kappa + kappa', mu + mu' (how active u and v were lately says less about a pair that has met before,
whose own history speaks, than about a new one). So p(X_t, A_t | Z_{t-1}, A_{1:t-1}): the chain rule keeps this an
exact likelihood, and forecasts feed their own sampled edges back.

Guide (P4.1): q(Z_t | Z_{t-1}, X_{1:t}, A_{1:t}) = Normal(mu, diag sigma^2) with (mu, sigma) from an MLP of
Z_{t-1} and s_t, where s_t is a GRU summary over time of a torch-geometric GNN encoding of each snapshot
(GCNConv, GATConv or SAGEConv) of the node features and a learned node embedding. Z_t emits snapshot t + 1, so
this guide is a filter: it never sees the snapshot a latent explains. ``guide_lookahead=True`` feeds it s_{t+1}
instead (s_T for Z_T, which explains no snapshot): q(Z_t | Z_{t-1}, X_{1:t+1}, A_{1:t+1}).

Site names: the latent path ``z`` (T, N, d), one site in model and guide whose distribution is a
:class:`~dgm_pyro.models.markov.MarkovNormal` (drawn step by step; given a path, its T transition log-densities
are one batched network call, in the guide too); given it the emissions of all snapshots are conditionally
independent and observed in batched sites:
features ``x`` (T, N, F) in plates ``time`` x ``nodes``, edges ``a`` (T, P) (dense: one event of a
:class:`~dgm_pyro.models.graph_likelihood.DenseGraphBernoulli`) or
``a_edges`` and ``a_nonedges`` (sparse). The ELBO of P4.1 is Pyro's ``Trace_ELBO`` on this model and guide.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn
from torch.distributions.utils import vec_to_tril_matrix

from ..data.graphs import edge_indicator, pair_index, uniform_nonedges
from .emissions import FeatureBlocks, HurdleLogNormal
from .graph_likelihood import DenseGraphBernoulli
from .markov import MarkovNormal
from .gnn import SnapshotEncoder
from .graph_memory import PairHistory, katz_proximity, node_activity, proximity_history
from .link_heuristics import past_union
from .nn import MLP, cat_broadcast, register_module

__all__ = ["GraphSSM", "EDGE_LIKELIHOODS", "FINAL_STATES"]

EDGE_LIKELIHOODS = ("dense", "sparse")
FEATURE_EMISSIONS = ("gaussian", "hurdle", "negbin")
#: how a forecast draws the last latent Z_T (:meth:`GraphSSM.filter`)
FINAL_STATES = ("transition", "guide")
_MIN_SCALE = 1e-3


class GraphSSM(PyroModule):
    """Markov latent graph state-space model with a GNN guide (seed P4.1-P4.5).

    Args:
        num_nodes: N, the fixed node set.
        num_features: F, node feature width (0 for graphs without features).
        latent_dim: d, per-node latent width.
        hidden: width of every hidden layer and of the GNN/GRU summaries.
        directed: ordered edges (all pairs u != v) or undirected (pairs u < v).
        gnn: ``gcn``, ``gat`` or ``sage`` (torch-geometric layers) for the guide's snapshot encoder.
        edge_likelihood: ``dense``: the exact Bernoulli likelihood over all N(N-1)/2 pairs; ``sparse``: all
            observed edges plus ``negatives_per_edge`` x E uniformly sampled non-edges whose terms are
            reweighted by (#non-edges / #sampled), an unbiased estimate whose cost grows with E, not N^2.
        negatives_per_edge: sampled non-edges per observed edge in sparse mode (at least 100 per snapshot).
        deterministic_features: replace the learned feature covariance by ``fixed_scale``^2 I (P4.3): only to
            show what a (near-)deterministic decoder breaks.
        fixed_scale: that scale.
        feature_emission: ``gaussian`` (a full per-node covariance, P4.2), ``hurdle``: each dynamic feature
            is 0 or, above it, log-normal (:class:`~dgm_pyro.models.emissions.HurdleLogNormal`), for count-like
            features with many exact zeros (they must be >= 0), or ``negbin``: each dynamic feature negative
            binomial, for counts (non-negative integers); or a list of these, one per modelled feature (the
            Gaussian ones share a full covariance; kinds are independent given z_v).
        name: prefix of the parameters in Pyro's parameter store (``model`` and ``guide`` register every
            parameter there with ``pyro.module``, so ``SVI`` with ``pyro.optim`` trains them).
        feature_shift, feature_scale: per-feature centring and scaling of x (F,), used inside the networks; the
            likelihood stays on the original scale.
        static: which of the F features are static node covariates (a bool per feature; default none): they
            are conditioned on, not modelled. The emission networks read [z_v, c_v] with c_v the node's
            (scaled) static features, only the other F_d features have a likelihood, and forecasts repeat
            the static values.
        node_activity: add the activity terms kappa (log(1 + D_u) + log(1 + D_v)) + mu (log(1 + K_u) +
            log(1 + K_v)) of each endpoint's decayed and undecayed past degree to the edge logits (node-level
            propensities; :func:`node_activity`).
        final_state: how forecasts draw the last latent Z_T given the history (:meth:`filter`): ``transition``
            (its exact conditional posterior p(Z_T | Z_{T-1}): no observed snapshot is emitted from Z_T) or
            ``guide`` (the guide's q(Z_T | Z_{T-1}, X_{1:T}, A_{1:T}), as forecasts did before this option).
        edge_proximity: add phi pi_uv, the pair's Katz proximity in the graph of all past edges
            (:func:`~dgm_pyro.models.graph_memory.katz_proximity`, damping ``proximity_damping`` over the largest
            degree), to the edge logits. Dense likelihood only (an N x N inversion per snapshot and, in forecasts,
            per path and step after the first).
        memory_activity: with ``edge_memory`` and ``node_activity``, add kappa' and mu' to the activity weights
            of the pairs with a past edge (:meth:`pair_activity`; the term rides with the memory term, at the pairs
            that have one, in training and in dense and sparse forecasts).
    """

    def __init__(self, num_nodes: int, num_features: int, latent_dim: int = 8, hidden: int = 64,
                 directed: bool = False, gnn: str = "gcn", edge_likelihood: str = "dense",
                 negatives_per_edge: float = 5.0, deterministic_features: bool = False, fixed_scale: float = 1e-2,
                 feature_shift: Optional[torch.Tensor] = None, feature_scale: Optional[torch.Tensor] = None,
                 embedding_dim: int = 16, edge_dim: int = 8, edge_memory: bool = True,
                 static: Optional[Sequence[bool]] = None, edge_frequency: bool = False, edge_recency: bool = False,
                 feature_emission: Union[str, Sequence[str]] = "gaussian", node_activity: bool = True,
                 final_state: str = "transition", edge_proximity: bool = False, proximity_damping: float = 0.5,
                 guide_lookahead: bool = False, memory_activity: bool = False,
                 name: str = "graph_ssm"):
        super().__init__(name)
        if edge_likelihood not in EDGE_LIKELIHOODS:
            raise ValueError(f"edge_likelihood must be one of {EDGE_LIKELIHOODS}")
        if final_state not in FINAL_STATES:
            raise ValueError(f"final_state must be one of {FINAL_STATES}; got {final_state!r}")
        self.final_state = final_state
        self.guide_lookahead = guide_lookahead
        if edge_proximity and edge_likelihood != "dense":
            raise ValueError("edge_proximity needs the dense edge likelihood (an N x N Katz index per snapshot)")
        if not 0 < proximity_damping < 1:
            raise ValueError(f"proximity_damping must be in (0, 1); got {proximity_damping}")
        n, f, d = num_nodes, num_features, latent_dim
        self.num_nodes, self.num_features, self.latent_dim = n, f, d
        self.directed, self.edge_likelihood = directed, edge_likelihood
        self.negatives_per_edge = float(negatives_per_edge)
        self.deterministic_features, self.fixed_scale = deterministic_features, float(fixed_scale)
        self.register_buffer("feature_shift", torch.zeros(f) if feature_shift is None else feature_shift.float())
        self.register_buffer("feature_scale", torch.ones(f) if feature_scale is None else feature_scale.float())
        mask = torch.zeros(f, dtype=torch.bool) if static is None else torch.as_tensor(list(static), dtype=torch.bool)
        if mask.shape != (f,):
            raise ValueError(f"static needs one flag per feature ({f}); got {tuple(mask.shape)}")
        self.register_buffer("static_mask", mask)
        self.num_static = fs = int(mask.sum())
        self.num_dynamic = fd = f - fs
        one = isinstance(feature_emission, str)
        kinds = (feature_emission,) * fd if one else tuple(feature_emission)
        if (one and feature_emission not in FEATURE_EMISSIONS) or len(kinds) != fd or \
                any(k not in FEATURE_EMISSIONS for k in kinds):
            raise ValueError(f"feature_emission must be one of {FEATURE_EMISSIONS} or a list of them, one per "
                             f"modelled feature ({fd}); got {feature_emission!r}")
        if deterministic_features and any(k != "gaussian" for k in kinds):
            raise ValueError(f"deterministic_features fixes a Gaussian covariance; it does not apply to the "
                             f"{feature_emission} emission")
        #: the emission of each modelled feature, and the modelled features (positions in x[..., ~static]) of each kind
        self.feature_emissions = kinds
        self.emission_features = {k: [i for i, j in enumerate(kinds) if j == k] for k in FEATURE_EMISSIONS}
        #: the one emission of every modelled feature, or ``mixed``
        self.feature_emission = feature_emission if one else kinds[0] if len(set(kinds)) == 1 else "mixed"
        self.num_pairs = n * (n - 1) if directed else n * (n - 1) // 2
        # Z_0 (P4.1): learned, one row per node
        self.z0 = nn.Parameter(0.1 * torch.randn(n, d))
        # transition p(Z_t | Z_{t-1}) with a pooled context
        self.context = MLP(d, [hidden], hidden)
        self.transition_net = MLP(d + hidden, [hidden], 2 * d)
        # emission p(X_t, A_t | Z_{t-1}, static covariates)
        fg, fh, fn = (len(self.emission_features[k]) for k in FEATURE_EMISSIONS)
        # the network's outputs: the Gaussian block, then the hurdle's, then the negative binomial's
        outputs = fg + fg * (fg + 1) // 2 + 3 * fh + 2 * fn
        self.feature_net = MLP(d + fs, [hidden], outputs) if fd else None
        self.edge_src = MLP(d + fs, [hidden], edge_dim)
        self.edge_dst = MLP(d + fs, [hidden], edge_dim) if directed else None
        self.edge_weight = nn.Parameter(torch.ones(edge_dim))
        self.edge_bias = nn.Parameter(torch.tensor(-3.0))
        self.edge_memory = edge_memory
        if edge_memory:
            self.memory_last = nn.Parameter(torch.tensor(0.0))
            self.memory_weight = nn.Parameter(torch.tensor(0.0))
            self.memory_decay_logit = nn.Parameter(torch.tensor(1.4))  # rho = 0.8
        self.edge_frequency = edge_memory and edge_frequency
        if self.edge_frequency:
            self.memory_count = nn.Parameter(torch.tensor(0.0))
        self.edge_recency = edge_memory and edge_recency
        if self.edge_recency:
            self.memory_recent = nn.Parameter(torch.tensor(0.0))
            self.recent_decay_logit = nn.Parameter(torch.tensor(-1.0))  # tau = 0.27, well below rho
        self.node_activity = node_activity
        if node_activity:
            # kappa (recent) and mu (long-run): one weight each (undirected) or one for the source's out- and one
            # for the destination's in-degree (directed)
            self.activity_weight = nn.Parameter(torch.zeros(2 if directed else 1))
            self.activity_count_weight = nn.Parameter(torch.zeros(2 if directed else 1))
            self.activity_decay_logit = nn.Parameter(torch.tensor(0.0))  # beta = 0.5
        self.memory_activity = edge_memory and node_activity and memory_activity
        if self.memory_activity:
            # kappa' and mu', what the activity weights change by for a pair with a past edge: rows the decayed and
            # the undecayed degree, columns one weight (undirected) or the source's and the destination's (directed)
            self.memory_activity_weight = nn.Parameter(torch.zeros(2, 2 if directed else 1))
        self.edge_proximity, self.proximity_damping = edge_proximity, float(proximity_damping)
        if edge_proximity:
            self.proximity_weight = nn.Parameter(torch.tensor(0.0))
        # guide q(Z_t | Z_{t-1}, X_{1:t}, A_{1:t})
        self.embedding = nn.Parameter(0.1 * torch.randn(n, embedding_dim))
        self.encoder = SnapshotEncoder(f + embedding_dim, hidden, gnn)
        self.rnn = nn.GRU(hidden, hidden)
        self.posterior_net = MLP(hidden + d, [hidden], 2 * d)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # weights saved before static covariates existed have no mask: every feature was modelled
        state_dict.setdefault(prefix + "static_mask", torch.zeros(self.num_features, dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ networks

    def transition(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loc and scale (..., N, d) of p(Z_t | Z_{t-1} = z) for z of shape (..., N, d)."""
        ctx = self.context(z).mean(-2, keepdim=True)
        out = self.transition_net(cat_broadcast(z, ctx))
        delta, raw = out.split(self.latent_dim, -1)
        return z + delta, nn.functional.softplus(raw - 2.0) + _MIN_SCALE

    def emission_input(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """[z_v, c_v] (..., N, d + F_s): the latents with the nodes' scaled static features from ``x`` (..., N, F)
        (any snapshot: they do not change); ``z`` itself for a model without static features."""
        if not self.num_static:
            return z
        c = ((x - self.feature_shift) / self.feature_scale)[..., self.static_mask]
        return cat_broadcast(z, c)

    def dynamic(self, x: torch.Tensor) -> torch.Tensor:
        """The modelled (non-static) features of ``x`` (..., F) -> (..., F_d)."""
        return x[..., ~self.static_mask] if self.num_static else x

    def feature_params(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (..., N, F_g) and Cholesky factor (..., N, F_g, F_g) of p(x_v | z_v, c_v) (P4.2, node term) for
        the emission input ``z`` = [z_v, c_v] of :meth:`emission_input`: the Gaussian block, over the F_g
        modelled features with a Gaussian emission (all of them by default)."""
        return self._gaussian_params(self.feature_net(z))

    def _gaussian_params(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.emission_features["gaussian"]
        f = len(index)
        shift, scale = self.dynamic(self.feature_shift)[index], self.dynamic(self.feature_scale)[index]
        loc = shift + scale * out[..., :f]
        if self.deterministic_features:
            tril = self.fixed_scale * torch.eye(f, device=loc.device).expand(*loc.shape, f)
        else:
            tril = vec_to_tril_matrix(out[..., f:f + f * (f + 1) // 2])
            diag = nn.functional.softplus(tril.diagonal(dim1=-2, dim2=-1)) + _MIN_SCALE
            tril = tril.tril(-1) + torch.diag_embed(diag)
            tril = scale.unsqueeze(-1) * tril
        return loc, tril

    def feature_distribution(self, z: torch.Tensor) -> dist.Distribution:
        """p(x_v | z_v, c_v) with event shape (F_d,) for the emission input ``z`` (..., N, d + F_s), per modelled
        feature as ``feature_emission`` says: ``gaussian`` features jointly Gaussian with the full covariance
        of :meth:`feature_params`; each ``hurdle`` feature a :class:`HurdleLogNormal` (zero, or log-normal above
        it); each ``negbin`` feature negative binomial with mean mu and dispersion r (variance mu + mu^2 / r).
        Different kinds are independent given z_v (:class:`FeatureBlocks`)."""
        out = self.feature_net(z)
        blocks = []
        index = self.emission_features["gaussian"]
        offset = len(index) + len(index) * (len(index) + 1) // 2
        if index:
            loc, tril = self._gaussian_params(out)
            blocks.append((index, dist.MultivariateNormal(loc, scale_tril=tril)))
        index = self.emission_features["hurdle"]
        if index:
            k = len(index)
            logits, loc, raw = out[..., offset:offset + 3 * k].split(k, -1)
            blocks.append((index, HurdleLogNormal(logits, loc, nn.functional.softplus(raw) + _MIN_SCALE).to_event(1)))
            offset += 3 * k
        index = self.emission_features["negbin"]
        if index:
            k = len(index)
            log_mean, raw = out[..., offset:offset + 2 * k].split(k, -1)
            r = nn.functional.softplus(raw) + _MIN_SCALE
            # torch's NegativeBinomial(r, logits) has mean r exp(logits): logits = log mu - log r
            blocks.append((index, dist.NegativeBinomial(total_count=r, logits=log_mean - r.log()).to_event(1)))
        return blocks[0][1] if len(blocks) == 1 else FeatureBlocks(blocks, self.num_dynamic)

    def edge_factors(self, z: torch.Tensor, activity: Optional[torch.Tensor] = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(g, h) (..., N, e) of the emission inputs ``z``: the edge logit is <g_u, h_v> + b + memory. With the
        activity terms and the nodes' past degrees ``activity`` (..., N, 4) of :meth:`activity` (decayed out, in,
        undecayed out, in), they are folded in as two more columns, g = [g, a, 1] and h = [h, 1, c] with
        a_u = kappa_out log(1 + D_u) + mu_out log(1 + K_u) and c_v = kappa_in log(1 + D'_v) + mu_in log(1 + K'_v),
        so that every user of the factors (dense, sparse, sampled) includes them."""
        g = self.edge_src(z)
        h = self.edge_dst(z) if self.directed else g
        g = g * self.edge_weight
        if not self.node_activity or activity is None:
            return g, h
        a = torch.log1p(activity[..., :2]) * self.activity_weight.expand(2) + \
            torch.log1p(activity[..., 2:]) * self.activity_count_weight.expand(2)
        a = a.expand(*g.shape[:-1], 2)
        one = a.new_ones(*g.shape[:-1], 1)
        return torch.cat([g, a[..., :1], one], -1), torch.cat([h, one, a[..., 1:]], -1)

    @property
    def activity_decay(self) -> torch.Tensor:
        return torch.sigmoid(self.activity_decay_logit)

    def activity(self, edges: list[torch.Tensor]) -> Optional[torch.Tensor]:
        """The nodes' past degrees before each snapshot and after the last, (T + 1, N, 4): :func:`node_activity`
        with the learned decay beta (out, in) and undecayed (out, in); None without the activity terms."""
        if not self.node_activity:
            return None
        one = torch.ones((), device=self.z0.device)
        return torch.cat([node_activity(edges, self.num_nodes, self.directed, self.activity_decay),
                          node_activity(edges, self.num_nodes, self.directed, one)], -1)

    def forecast_activity(self, edges: list[torch.Tensor], num_samples: int) -> Optional[torch.Tensor]:
        """The activity after the history, where forecasts start, for ``num_samples`` paths: (S, N, 4) (None
        without the activity terms)."""
        activity = self.activity(edges)
        return None if activity is None else activity[-1].expand(num_samples, -1, -1)

    def advance_activity(self, activity: Optional[torch.Tensor], degrees: torch.Tensor) -> Optional[torch.Tensor]:
        """The activity (..., N, 4) after one more snapshot whose (out-, in-)degrees are ``degrees`` (..., N, 2): the
        decayed columns become beta D + deg, the undecayed ones K + deg."""
        if activity is None:
            return None
        b = self.activity_decay
        decays = torch.stack([b, b, torch.ones_like(b), torch.ones_like(b)])
        return decays * activity + torch.cat([degrees, degrees], -1)

    @property
    def memory_decay(self) -> torch.Tensor:
        return torch.sigmoid(self.memory_decay_logit)

    @property
    def recent_decay(self) -> Optional[torch.Tensor]:
        """tau, the decay of the fast pair count R (None without ``edge_recency``)."""
        return torch.sigmoid(self.recent_decay_logit) if self.edge_recency else None

    def pair_activity(self, activity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The source and destination parts (..., N) of the activity term of pairs with a past edge
        (``memory_activity``): kappa' log(1 + D_u) + mu' log(1 + K_u) for the source u (its out-degrees when
        directed) and the same of the destination v (in-degrees), from the activity (..., N, 4) of :meth:`activity`.
        A pair's term is their sum where its past edge count C_{uv,t-1} > 0, zero elsewhere."""
        w = self.memory_activity_weight
        logs = torch.log1p(activity)
        return logs[..., 0] * w[0, 0] + logs[..., 2] * w[1, 0], logs[..., 1] * w[0, -1] + logs[..., 3] * w[1, -1]

    def memory_term(self, last: torch.Tensor, decayed: torch.Tensor, count: torch.Tensor,
                    recent: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The edge-memory part of the logit for a pair's (A_{t-1}, M_{t-1}, C_{t-1}, R_{t-1}) (R None without
        ``edge_recency``); zero for a pair without past edges."""
        term = self.memory_last * last + self.memory_weight * torch.log1p(decayed)
        if self.edge_frequency:
            term = term + self.memory_count * torch.log1p(count)
        return term + self.memory_recent * torch.log1p(recent) if self.edge_recency else term

    def advance_memory(self, memory: tuple[Optional[torch.Tensor], ...], a: torch.Tensor
                       ) -> tuple[Optional[torch.Tensor], ...]:
        """The memory (A, M, C, R) after one more snapshot ``a`` (0/1, the shape of each state)."""
        _, decayed, count, recent = memory  # the last snapshot is replaced by a
        return (a, self.memory_decay * decayed + a, count + a,
                None if recent is None else self.recent_decay * recent + a)

    def edge_logits(self, z: torch.Tensor, time: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                    history: Optional["PairHistory"] = None,
                    activity: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (M,) of the pairs (src[i], dst[i]) in snapshots ``time[i]`` (0-based), given the emission
        inputs (T, N, d) of every snapshot, the edge history and the node activity (T, N, 4) before each."""
        g, h = self.edge_factors(z, activity)
        logits = (g[time, src] * h[time, dst]).sum(-1) + self.edge_bias
        if self.edge_memory and history is not None:
            state = history.at(time, src, dst)
            logits = logits + self.memory_term(*state)
            if self.memory_activity and activity is not None:
                a_src, a_dst = self.pair_activity(activity)
                logits = logits + (state[2] > 0) * (a_src[time, src] + a_dst[time, dst])
        return logits

    def edge_probabilities(self, z: torch.Tensor, memory: Optional[tuple[torch.Tensor, ...]] = None,
                           activity: Optional[torch.Tensor] = None,
                           proximity: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Dense edge probabilities (..., N, N) with a zero diagonal (small graphs only); ``memory`` is the
        dense (A_{t-1}, M_{t-1}, C_{t-1}, R_{t-1}) of (..., N, N) tensors (R None without ``edge_recency``),
        ``activity`` (..., N, 4) the nodes' past degrees (:meth:`activity`), ``proximity`` (..., N, N) the pairs'
        pi (:func:`katz_proximity`)."""
        g, h = self.edge_factors(z, activity)
        logits = g @ h.transpose(-1, -2) + self.edge_bias
        if self.edge_memory and memory is not None:
            logits = logits + self.memory_term(*memory)
            if self.memory_activity and activity is not None:
                a_src, a_dst = self.pair_activity(activity)
                logits = logits + (memory[2] > 0) * (a_src.unsqueeze(-1) + a_dst.unsqueeze(-2))
        if self.edge_proximity and proximity is not None:
            logits = logits + self.proximity_weight * proximity
        return torch.sigmoid(logits) * (1 - torch.eye(self.num_nodes, device=logits.device))

    def dense_memory(self, edges: list[torch.Tensor]) -> tuple[Optional[torch.Tensor], ...]:
        """(A_T, M_T, C_T, R_T) as dense (N, N) tensors after the snapshots ``edges`` (symmetric when undirected;
        R None without ``edge_recency``)."""
        n, device = self.num_nodes, self.z0.device
        zeros = torch.zeros(n, n, device=device)
        memory: tuple[Optional[torch.Tensor], ...] = (zeros, zeros, zeros, zeros if self.edge_recency else None)
        for e in edges:
            a = torch.zeros(n, n, device=device)
            a[e[0], e[1]] = 1.0
            if not self.directed:
                a[e[1], e[0]] = 1.0
            memory = self.advance_memory(memory, a)
        return memory

    def summaries(self, x: torch.Tensor, edges: list[torch.Tensor]) -> torch.Tensor:
        """GRU summaries s_t (T, N, hidden) of the GNN encodings (:meth:`SnapshotEncoder.encode_sequence`) of
        snapshots 1..t."""
        xs = (x - self.feature_shift) / self.feature_scale
        inputs = torch.cat([xs, self.embedding.expand(len(edges), *self.embedding.shape)], -1)
        return self.rnn(self.encoder.encode_sequence(inputs, edges, self.directed))[0]

    def guide_inputs(self, x: torch.Tensor, edges: list[torch.Tensor]) -> torch.Tensor:
        """The s_t parts (T, N, hidden) of the guide's steps to Z_1..Z_T (:meth:`_posterior_inputs`): of s_1..s_T,
        or with ``guide_lookahead`` of s_2..s_T, s_T (each latent sees the snapshot it emits)."""
        s = self.summaries(x, edges)
        if self.guide_lookahead:
            s = torch.cat([s[1:], s[-1:]])
        return self._posterior_inputs(s)

    def posterior(self, s: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loc and scale of q(Z_t | Z_{t-1} = z, s_t): an MLP of [s_t, z]."""
        return self._posterior_step(z, self._posterior_inputs(s))

    def _posterior_inputs(self, s: torch.Tensor) -> torch.Tensor:
        """The s_t part W_s s_t + b (..., N, hidden) of the posterior MLP's first layer W [s_t, z] + b: computed
        for every t in one call, so that a step of the guide's recursion multiplies only (N, d) by (d, hidden)."""
        first = self.posterior_net[0]
        return nn.functional.linear(s, first.weight[:, :s.shape[-1]], first.bias)

    def _posterior_step(self, z: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`posterior` from ``pre`` = :meth:`_posterior_inputs` of s_t."""
        first = self.posterior_net[0]
        hidden = pre + nn.functional.linear(z, first.weight[:, first.in_features - self.latent_dim:])
        for layer in list(self.posterior_net)[1:]:
            hidden = layer(hidden)
        loc, raw = hidden.split(self.latent_dim, -1)
        return loc, nn.functional.softplus(raw) + _MIN_SCALE

    # ------------------------------------------------------------------ model and guide

    def _emit_all(self, zs: torch.Tensor, x: torch.Tensor, edges: list[torch.Tensor], nodes: pyro.plate) -> None:
        """Observe X_t and A_t given Z_{t-1}, the static covariates and the past edges (P4.2), for t = 1..T.

        Given the latents ``zs`` (T, N, d) = Z_{0:T-1} the emissions of all snapshots are conditionally
        independent, so they are computed in batched calls over time and observed as single sites: ``x``
        (T, N, F_d) in plates ``time`` x ``nodes`` and ``a`` (T, P), one event (:class:`DenseGraphBernoulli`; sparse:
        ``a_edges`` over every edge of every snapshot, ``a_nonedges`` over the sampled non-edges)."""
        num_t, n = len(edges), self.num_nodes
        h = self.emission_input(zs, x)
        time = pyro.plate("time", num_t, dim=-2)
        activity = self.activity(edges)
        activity = activity[:num_t] if activity is not None else None
        if self.num_dynamic:
            with time, nodes:
                pyro.sample("x", self.feature_distribution(h), obs=self.dynamic(x))
        history = PairHistory(edges, n, self.memory_decay, self.recent_decay) if self.edge_memory else None
        if self.edge_likelihood == "dense":
            pairs = pair_index(n, self.directed).to(zs.device)
            keys = pairs[0] * n + pairs[1]  # ascending
            g, hd = self.edge_factors(h, activity)
            memory = None
            if history is not None and history.keys.numel():
                memory = self.memory_term(history.last, history.decayed, history.count, history.recent)
                if self.memory_activity:
                    a_src, a_dst = self.pair_activity(activity)
                    memory = memory + (history.count > 0) * (a_src[:, history.keys // n] + a_dst[:, history.keys % n])
            proximity = proximity_history(edges, n, self.proximity_damping, keys) if self.edge_proximity else None
            # the 0/1 targets, built once per edge sequence: the distribution scores this very tensor from the
            # edges and a blocked sum over all pairs, without (T, P) logits (graph_likelihood)
            observed = edge_indicator(edges, keys, n)
            pyro.sample("a", DenseGraphBernoulli(g, hd, self.edge_bias, keys, n, memory=memory,
                                                 memory_keys=None if memory is None else history.keys,
                                                 proximity=proximity,
                                                 weight=self.proximity_weight if self.edge_proximity else None,
                                                 observed=edges, indicator=observed), obs=observed)
            return
        # sparse: every edge of every snapshot, and per snapshot m_t non-edges drawn uniformly from its
        # num_non_t, each weighted num_non_t / m_t: an unbiased estimate of the sum over all non-edges
        edge_time = torch.cat([torch.full_like(e[0], t) for t, e in enumerate(edges)])
        edge_src, edge_dst = torch.cat([e[0] for e in edges]), torch.cat([e[1] for e in edges])
        steps, src, dst, weights = [], [], [], []
        for t, e in enumerate(edges):
            num_non = self.num_pairs - e.shape[1]
            m = min(num_non, max(100, int(self.negatives_per_edge * e.shape[1])))
            if m > 0:
                u, v = self.sample_nonedges(e, m)
                steps.append(torch.full_like(u, t))
                src.append(u)
                dst.append(v)
                weights.append(torch.full((m,), num_non / m, device=zs.device))
        with pyro.plate("edges", edge_time.shape[0]):
            logits = self.edge_logits(h, edge_time, edge_src, edge_dst, history, activity)
            pyro.sample("a_edges", dist.Bernoulli(logits=logits), obs=torch.ones_like(logits))
        if steps:
            non_time, weight = torch.cat(steps), torch.cat(weights)
            total = sum(self.num_pairs - e.shape[1] for e in edges)
            # a subsampled plate (so that the evidence estimator refuses it), rescaled per snapshot
            with pyro.plate("nonedges", total, subsample=torch.arange(non_time.shape[0], device=zs.device)), \
                    poutine.scale(scale=weight * non_time.shape[0] / total):
                logits = self.edge_logits(h, non_time, torch.cat(src), torch.cat(dst), history, activity)
                pyro.sample("a_nonedges", dist.Bernoulli(logits=logits), obs=torch.zeros_like(logits))

    def sample_nonedges(self, e: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``m`` pairs drawn uniformly (with replacement) from the pairs that are not edges of ``e``."""
        n = self.num_nodes
        key = uniform_nonedges(e[0] * n + e[1], n, self.directed, m, oversample=1.2)
        return key // n, key % n

    def model(self, x: torch.Tensor, edges: list[torch.Tensor], teacher_forcing: float = 1.0) -> None:
        """p(X_{1:T}, A_{1:T}, Z_{1:T} | Z_0) (P4.1), with scheduled sampling (P4.5) when ``teacher_forcing`` < 1.

        Args:
            x: node features (T, N, F).
            edges: T edge indices (2, E_t) (u < v for undirected graphs).
            teacher_forcing: eps, the probability that the transition to Z_{t+1} is fed the guide's Z_t;
                otherwise it is fed its own prediction Z^_t ~ p(Z_t | Z~_{t-1}) (a reparameterised draw, so the
                objective is the ELBO only at eps = 1).
        """
        register_module(self._pyro_name, self)
        nodes = pyro.plate("nodes", self.num_nodes, dim=-1)
        chain = MarkovNormal(self.z0, lambda z, _: self.transition(z), len(edges), teacher_forcing=teacher_forcing)
        z = pyro.sample("z", chain)  # (T, N, d): given a path, its T transition terms are one batched call
        # given Z_{0:T-1}, the emissions of all snapshots are batched over time as well
        self._emit_all(torch.cat([self.z0.unsqueeze(0), z[:-1]]), x, edges, nodes)

    def guide(self, x: torch.Tensor, edges: list[torch.Tensor], teacher_forcing: float = 1.0) -> None:
        """q(Z_{1:T} | X_{1:T}, A_{1:T}) = prod_t q(Z_t | Z_{t-1}, X_{1:t}, A_{1:t}) (P4.1; up to t + 1 with
        ``guide_lookahead``)."""
        register_module(self._pyro_name, self)
        pre = self.guide_inputs(x, edges)
        pyro.sample("z", MarkovNormal(self.z0, self._posterior_step, len(edges), inputs=pre))

    # ------------------------------------------------------------------ forecasting (P4.4)

    @torch.no_grad()
    def final_state_distributions(self, x: torch.Tensor, edges: list[torch.Tensor], num_samples: int
                                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Z_1..Z_{T-1} drawn from the guide given the whole history (``num_samples`` paths), then the loc and
        scale (S, N, d) of the last latent Z_T under each of :data:`FINAL_STATES`: ``transition``, its exact
        posterior p(Z_T | Z_{T-1}) (snapshot t is emitted from Z_{t-1}, P4.1, so no observed snapshot depends on
        Z_T), and ``guide``, the guide's q(Z_T | Z_{T-1}, X_{1:T}, A_{1:T}), which only approximates it (the
        amortization gap of P4.5: one network serves every t; on the dynamic SBM and CollegeMsg its scale at T
        measured 0.89-0.99 of the transition's, see docs/graphs.md)."""
        pre = self.guide_inputs(x, edges)
        z = self.z0.expand(num_samples, *self.z0.shape)
        for t in range(len(edges) - 1):
            loc, scale = self._posterior_step(z, pre[t])
            z = loc + scale * torch.randn_like(loc)
        return {"transition": self.transition(z), "guide": self._posterior_step(z, pre[-1])}

    @torch.no_grad()
    def filter(self, x: torch.Tensor, edges: list[torch.Tensor], num_samples: int) -> torch.Tensor:
        """``num_samples`` draws (S, N, d) of the last latent Z_T given the whole history, where forecasts start
        (P4.4): from the distribution ``final_state`` names (:meth:`final_state_distributions`; by default the
        transition, Z_T's exact posterior given Z_{T-1})."""
        loc, scale = self.final_state_distributions(x, edges, num_samples)[self.final_state]
        return loc + scale * torch.randn_like(loc)

    @torch.no_grad()
    def rollout(self, x: torch.Tensor, edges: list[torch.Tensor], steps: int,
                num_samples: int) -> Iterator[dict[str, Any]]:
        """Yield ``steps`` forecast steps (P4.4) of ``num_samples`` paths, each a dict with the latent ``z``
        (S, N, d) it is emitted from, feature draws ``x`` (S, N, F), ``edge_prob`` and edge draws ``A``
        (S, N, N), and the edge ``memory`` (A_{t-1}, M_{t-1}, C_{t-1}, R_{t-1}), node ``activity`` (S, N, 4) and pair
        ``proximity`` (N, N) or (S, N, N) (None without these terms) it used.
        Draws Z_T given the history first (:meth:`filter`), then alternately emits from Z and moves
        Z ~ p(Z' | Z), feeding the sampled edges back."""
        z = self.filter(x, edges, num_samples)
        last_x = x[-1]
        memory = None
        if self.edge_memory:
            memory = tuple(None if m is None else m.expand(num_samples, -1, -1) for m in self.dense_memory(edges))
        activity = self.forecast_activity(edges, num_samples)
        # the union of past edges: the history's, then each path's with its own draws
        union = past_union(edges, self.num_nodes).to(z.device) if self.edge_proximity else None
        for step in range(steps):
            h = self.emission_input(z, last_x)
            x_draw = self.draw_features(h, last_x)
            proximity = None if union is None else katz_proximity(union, self.proximity_damping)
            p = self.edge_probabilities(h, memory, activity, proximity)
            a = torch.bernoulli(p)
            if not self.directed:
                a = a.triu(1)
                a = a + a.transpose(-1, -2)
            yield {"z": z, "h": h, "x": x_draw, "edge_prob": p, "A": a, "memory": memory, "activity": activity,
                   "proximity": proximity}
            if union is not None and step + 1 < steps:
                union = torch.maximum(union, torch.maximum(a, a.transpose(-1, -2)))
            if memory is not None:
                memory = self.advance_memory(memory, a)
            # out-degree (row sums) and in-degree (column sums); equal when undirected
            activity = self.advance_activity(activity, torch.stack([a.sum(-1), a.sum(-2)], -1))
            loc, scale = self.transition(z)
            z = loc + scale * torch.randn_like(loc)

    def draw_features(self, h: torch.Tensor, last_x: torch.Tensor) -> torch.Tensor:
        """Feature draws (S, N, F) from p(x_v | z_v, c_v) for the emission inputs ``h`` (S, N, d + F_s); the static
        features repeat ``last_x`` (N, F)."""
        x_draw = last_x.expand(h.shape[0], *last_x.shape).clone()
        if self.num_dynamic and self.feature_emission != "gaussian":
            x_draw[..., ~self.static_mask] = self.feature_distribution(h).sample()
        elif self.num_dynamic:  # explicit draws: the same random numbers as forecasts made before the hurdle
            loc, tril = self.feature_params(h)
            x_draw[..., ~self.static_mask] = loc + (tril @ torch.randn_like(loc).unsqueeze(-1)).squeeze(-1)
        return x_draw

    @torch.no_grad()
    def forecast(self, x: torch.Tensor, edges: list[torch.Tensor], horizon: int, num_samples: int = 100,
                 future: Optional[tuple[torch.Tensor, list[torch.Tensor]]] = None) -> dict[str, torch.Tensor]:
        """Sample paths of the next ``horizon`` snapshots (P4.4).

        Returns ``X`` (S, H, N, F), ``Z`` (S, H, N, d) (the latent each step is emitted from), ``edge_prob``
        (S, H, N, N) and ``A`` (S, H, N, N) 0/1 draws (symmetric for undirected graphs). With ``future``
        (features (H', N, F) and H' edge indices), also ``log_lik`` (min(H, H'),): the held-out predictive
        log-likelihood log (1/S) sum_s p(X_{T+h}, A_{T+h} | Z_s, A_s) of each true snapshot, over the paths.
        Dense: for large graphs :func:`~dgm_pyro.models.sparse_forecast` draws the same model's edges as COO lists.
        """
        if horizon < 1 or num_samples < 1:
            raise ValueError("horizon and num_samples must be >= 1")
        # each step is written into the outputs and scored, then dropped with its (S, N, N) memory tensors: keeping
        # every step and stacking them held about three times the outputs (13.3 GB at N = 1000, S = 100, H = 5)
        keys = {"X": "x", "Z": "z", "edge_prob": "edge_prob", "A": "A"}
        out: dict[str, torch.Tensor] = {}
        lls = []
        scored = 0 if future is None else min(horizon, len(future[1]))
        for h, step in enumerate(self.rollout(x, edges, horizon, num_samples)):
            if h == 0:
                out = {key: step[name].new_empty(step[name].shape[0], horizon, *step[name].shape[1:])
                       for key, name in keys.items()}
            for key, name in keys.items():
                out[key][:, h] = step[name]
            if h < scored:
                lp = self._emission_log_prob(step, future[0][h], future[1][h])
                lls.append(torch.logsumexp(lp, 0) - math.log(num_samples))
            del step
        if future is not None:
            out["log_lik"] = torch.stack(lls) if lls else x.new_zeros(0)
        return out

    def _emission_log_prob(self, step: dict[str, Any], x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """log p(X, A | Z, memory) of one true snapshot for each path of a rollout step: shape (S,)."""
        z = step["z"]
        total = z.new_zeros(z.shape[0])
        if self.num_dynamic:
            total = total + self.feature_distribution(step["h"]).log_prob(self.dynamic(x)).sum(-1)
        u, v = pair_index(self.num_nodes, self.directed).to(z.device)
        p = step["edge_prob"][:, u, v].clamp(1e-7, 1 - 1e-7)
        obs = z.new_zeros(self.num_nodes, self.num_nodes)
        obs[e[0], e[1]] = 1.0
        obs = obs[u, v]
        return total + (obs * p.log() + (1 - obs) * torch.log1p(-p)).sum(-1)
