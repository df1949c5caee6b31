"""Posterior-collapse diagnostics (seed P3.1, P3.3): active units, KL per dimension, mutual information,
aggregate KL, and a report that gathers them with the importance-sampled NLL.

Every measure takes the encoder's posteriors as one torch distribution whose batch dimension runs over
the N datapoints (``Independent(Normal(loc, scale), 1)`` with ``loc`` of shape (N, d), or any
distribution with batch shape (N,) and event shape (d,)), so they work on models this project did not
write. The prior is a distribution with event shape (d,) and batch shape () (a VAE's p(z)) or (N,) (a
CVAE's p(z|y_i) for each datapoint).

For a CVAE the information that matters is conditional on y: collapse means q(z|x,y) = p(z|y). Pass
``groups`` (one integer per datapoint, e.g. the class label) and the aggregate posterior is formed
within each group, so :func:`mutual_information` estimates I(x; z | y) and :func:`aggregate_kl`
estimates E_y KL(q(z|y) || p(z|y)); the decomposition of P3.3 then reads

    E_{x,y}[KL(q(z|x,y) || p(z|y))] = I_q(x; z | y) + E_y[KL(q(z|y) || p(z|y))]

and it holds sample by sample for the Monte Carlo estimates here, which share their draws.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import Distribution, kl_divergence

from .divergences import univariate_base

__all__ = ["active_units", "kl_per_dimension", "kl_per_datapoint", "posterior_width_ratio", "WIDE_RATIO",
           "mutual_information", "mutual_information_minibatch",
           "aggregate_kl", "encoder_posteriors", "encoder_traces", "site_posteriors", "collapse_report",
           "CollapseReport"]


def _check(posteriors: Distribution) -> int:
    if len(posteriors.batch_shape) != 1 or len(posteriors.event_shape) != 1:
        raise ValueError("posteriors must have batch shape (N,) and event shape (d,), got "
                         f"{tuple(posteriors.batch_shape)} and {tuple(posteriors.event_shape)}")
    return posteriors.batch_shape[0]


def active_units(posteriors: Distribution, threshold: float = 0.01,
                 prior: Optional[Distribution] = None) -> tuple[int, torch.Tensor]:
    """Burda et al. (2016): unit u is active when A_u = Cov_x(E_q[z_u | x]) > ``threshold``.

    Args:
        posteriors: batch (N,), event (d,).
        threshold: 0.01 in Burda et al.
        prior: for a conditional prior p(z|y_i) (batch (N,)), the activity of E_q[z_u|x,y] - E_p[z_u|y],
            so that units that only follow y do not count as active.
    Returns:
        (number of active units, A of shape (d,)).
    """
    _check(posteriors)
    means = posteriors.mean
    if prior is not None and len(prior.batch_shape) == 1:
        means = means - prior.mean.expand_as(means)
    activity = means.var(0, unbiased=False)
    return int((activity > threshold).sum()), activity


def _kl_elementwise(posteriors: Distribution, prior: Distribution) -> torch.Tensor:
    """KL(q(z_u | x_i) || p(z_u)) for each datapoint i and dimension u, shape (N, d); needs factorised q and p."""
    _check(posteriors)
    return kl_divergence(univariate_base(posteriors), univariate_base(prior)).expand(posteriors.batch_shape +
                                                                             posteriors.event_shape)


def kl_per_dimension(posteriors: Distribution, prior: Distribution) -> torch.Tensor:
    """E_x[KL(q(z_u | x) || p(z_u))] for each latent dimension u, shape (d,); needs factorised q and p."""
    return _kl_elementwise(posteriors, prior).mean(0)


def kl_per_datapoint(posteriors: Distribution, prior: Distribution) -> torch.Tensor:
    """KL(q(z | x_i) || p(z)) for each datapoint i, shape (N,); needs factorised q and p.

    Its mean is the KL of the report; its median and tail tell whether a few datapoints carry that mean."""
    return _kl_elementwise(posteriors, prior).sum(-1)


#: a posterior wider than this many prior standard deviations in some dimension counts in ``wide_posteriors``
WIDE_RATIO = 2.0


def posterior_width_ratio(posteriors: Distribution, prior: Distribution) -> torch.Tensor:
    """max_u sd_q(z_u | x_i) / sd_p(z_u) for each datapoint i, shape (N,); needs factorised q and p.

    The ELBO's KL charges a posterior s times wider than the prior about s^2 / 2 nats, the CS divergence only
    about 1/2 log(s / 2) (P2.1: D_CS = 1/2 log((s_1^2 + s_2^2) / (2 s_1 s_2)) for equal means), so an encoder
    trained with the CS-ELBO can give some datapoints posteriors much wider than the prior; above
    :data:`WIDE_RATIO` they dominate the mean KL."""
    _check(posteriors)
    q, p = univariate_base(posteriors), univariate_base(prior)
    return (q.stddev / p.stddev).expand(posteriors.batch_shape + posteriors.event_shape).amax(-1)


def _groups(groups: Optional[torch.Tensor], n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(group id 0..G-1 of each datapoint, membership matrix (G, N)) on ``device``."""
    if groups is None:
        return torch.zeros(n, dtype=torch.long, device=device), torch.ones(1, n, dtype=torch.bool, device=device)
    groups = torch.as_tensor(groups, device=device)
    if groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {tuple(groups.shape)}")
    values, inverse = torch.unique(groups, return_inverse=True)
    return inverse, inverse[None, :] == torch.arange(len(values), device=inverse.device)[:, None]


def _aggregate_terms(posteriors: Distribution, prior: Optional[Distribution], num_samples: int,
                     groups: Optional[torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """At draws z ~ q(z|x_i), S per datapoint: log q(z|x_i), log q(z) with q(z) the mixture of the
    posteriors of the datapoints in x_i's group, and log p(z) under x_i's prior; each of shape (S, N)."""
    n = _check(posteriors)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    gid, member = _groups(groups, n, posteriors.mean.device)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        z = posteriors.sample((num_samples,))  # (S, N, d)
    log_member = torch.where(member, 0.0, -math.inf).to(z.dtype)  # (G, N)
    log_size = member.sum(1).to(z.dtype).log()  # (G,)
    out = {"log_q_cond": posteriors.log_prob(z)}
    if prior is not None:
        out["log_p"] = prior.log_prob(z)
    flat = z.reshape(-1, 1, z.shape[-1])
    rows = torch.arange(flat.shape[0], device=flat.device) % n  # datapoint of each draw
    agg = []
    chunk = max(1, 4_000_000 // (n * member.shape[0]))
    for start in range(0, flat.shape[0], chunk):
        lq = posteriors.log_prob(flat[start : start + chunk])  # (c, N): each draw under every posterior
        per_group = torch.logsumexp(lq[:, None, :] + log_member, dim=-1) - log_size  # (c, G)
        agg.append(per_group.gather(1, gid[rows[start : start + chunk]][:, None]).squeeze(1))
    out["log_q_agg"] = torch.cat(agg).reshape(num_samples, n)
    return out


def mutual_information(posteriors: Distribution, num_samples: int = 10, groups: Optional[torch.Tensor] = None,
                       seed: int = 0) -> float:
    """I_q(x; z) = E_x E_{q(z|x)}[log q(z|x) - log q(z)] (P3.3), with q(z) = (1/N) sum_j q(z|x_j) over the
    whole dataset (within each group if ``groups`` is given: I(x; z | y)). Monte Carlo with ``num_samples``
    draws per datapoint; at most log N (log of the group size)."""
    t = _aggregate_terms(posteriors, None, num_samples, groups, seed)
    return float((t["log_q_cond"] - t["log_q_agg"]).mean())


def aggregate_kl(posteriors: Distribution, prior: Distribution, num_samples: int = 10,
                 groups: Optional[torch.Tensor] = None, seed: int = 0) -> float:
    """KL(q(z) || p(z)) (P3.3) by Monte Carlo over the aggregate posterior q(z) = (1/N) sum_j q(z|x_j)
    (within each group and against that group's prior if ``groups`` is given)."""
    t = _aggregate_terms(posteriors, prior, num_samples, groups, seed)
    return float((t["log_q_agg"] - t["log_p"]).mean())


def mutual_information_minibatch(posteriors: Distribution, batch_size: int = 100, seed: int = 0) -> float:
    """The minibatch estimator of He et al. (2019): within each minibatch of B datapoints, one draw
    z_i ~ q(z|x_i) and log q(z_i) ~ log (1/B) sum_j q(z_i|x_j); averaged over the shuffled dataset.

    Because q(z_i) >= q(z_i|x_i) / B, every term log q(z_i|x_i) - log q(z_i) is at most log B: this
    estimator cannot exceed log B, whatever the true information (use :func:`mutual_information` over
    the whole dataset for values near log N). He et al. use the closed-form entropy for the first term;
    we use the same draw, so that the ceiling holds exactly rather than in expectation.
    """
    n = _check(posteriors)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    terms = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        order = torch.randperm(n)
        z = posteriors.sample()  # (N, d): one draw per datapoint
    for idx in order.split(batch_size):
        log_q = posteriors.log_prob(z[idx][:, None, :])[:, idx]  # (B, B): z_i under q(.|x_j), j in the batch
        terms.append(log_q.diagonal() - (torch.logsumexp(log_q, 1) - math.log(idx.shape[0])))
    return float(torch.cat(terms).mean())


def _describe_latents(tr: poutine.Trace) -> str:
    """``'z' (batch (N,), event (d,))`` for every latent sample site of a trace."""
    found = [f"{n!r} (batch {tuple(s['fn'].batch_shape)}, event {tuple(s['fn'].event_shape)})"
             for n, s in tr.nodes.items() if s["type"] == "sample" and not s["is_observed"]
             and not site_is_subsample(s)]
    return ", ".join(found) or "none"


def encoder_posteriors(model: Callable, guide: Callable, *args, site: str = "z",
                       **kwargs) -> tuple[Distribution, Distribution]:
    """The guide's and the model's distributions at latent ``site`` for a batch of data: runs the guide
    and replays the model, as any Pyro inference would, and returns (q(z|x) for each datapoint, p(z) or
    p(z|y) for each datapoint), each with batch shape (N,) and event shape (d,)."""
    return site_posteriors(*encoder_traces(model, guide, *args, **kwargs), site=site)


def encoder_traces(model: Callable, guide: Callable, *args, **kwargs) -> tuple[poutine.Trace, poutine.Trace]:
    """The guide's trace and the model's trace replayed on it, without gradients: what
    :func:`encoder_posteriors` reads, for a caller that also wants the model's other sites."""
    with torch.no_grad():
        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    return guide_tr, model_tr


def site_posteriors(guide_tr: poutine.Trace, model_tr: poutine.Trace, site: str = "z"
                    ) -> tuple[Distribution, Distribution]:
    """:func:`encoder_posteriors` from the traces of :func:`encoder_traces`."""
    if site not in guide_tr.nodes or site not in model_tr.nodes:
        raise ValueError(f"no latent site {site!r} in both the model and the guide; latent sites found: "
                         f"{_describe_latents(guide_tr)} (guide), {_describe_latents(model_tr)} (model); pass site=NAME")
    q, p = guide_tr.nodes[site]["fn"], model_tr.nodes[site]["fn"]
    if len(q.batch_shape) != 1 or len(q.event_shape) != 1:
        if not q.batch_shape:
            hint = "; sample it inside a plate over the datapoints"
        elif len(q.batch_shape) == 1:
            hint = "; give it a vector event, e.g. Normal(loc, scale).to_event(1) with loc of shape (N, d)"
        else:
            hint = (f"; declare the per-datapoint dimensions as an event, e.g. Normal(...).to_event("
                    f"{len(q.batch_shape) - 1 + len(q.event_shape)}) inside the data plate only")
        raise ValueError(f"latent site {site!r} has batch shape {tuple(q.batch_shape)} and event shape "
                         f"{tuple(q.event_shape)} in the guide; the collapse measures need batch shape (N,) (one "
                         f"plate over the datapoints) and event shape (d,){hint}")
    return q, p  # a model site in the same plate has batch (N,) like q's; one outside every plate, batch ()


@dataclass
class CollapseReport:
    """Posterior-collapse measures of one model on one dataset (nats)."""

    num_datapoints: int
    latent_dim: int
    active_units: int
    activity: list[float]
    kl: float
    kl_per_dimension: list[float]
    mutual_information: float
    mutual_information_ceiling: float
    mutual_information_minibatch: float
    minibatch_size: int
    aggregate_kl: float
    kl_median: Optional[float] = None
    wide_posteriors: Optional[float] = None
    nll: Optional[float] = None
    elbo: Optional[float] = None
    conditional: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def __str__(self) -> str:
        given = " | y" if self.conditional else ""
        rows = [
            ("datapoints N", f"{self.num_datapoints}"),
            ("NLL, importance-sampled", "-" if self.nll is None else f"{self.nll:.3f}"),
            ("-ELBO", "-" if self.elbo is None else f"{-self.elbo:.3f}"),
            (f"KL  E[KL(q(z|x{', y' if self.conditional else ''}) || p(z{given}))]", f"{self.kl:.3f}"),
            ("KL  median over the datapoints", "-" if self.kl_median is None else f"{self.kl_median:.3f}"),
            (f"posteriors wider than {WIDE_RATIO:g} prior sd", "-" if self.wide_posteriors is None else
             f"{100 * self.wide_posteriors:.1f} % of the datapoints"),
            (f"MI  I(x; z{given}) over the dataset", f"{self.mutual_information:.3f}  (ceiling "
                                                   f"{'mean log class size' if self.conditional else 'log N'} = "
                                                   f"{self.mutual_information_ceiling:.3f})"),
            (f"MI  I(x; z) minibatch estimate, B={self.minibatch_size}", f"{self.mutual_information_minibatch:.3f}  "
                                                                f"(ceiling log B = {math.log(self.minibatch_size):.3f})"),
            (f"aggregate KL(q(z{given}) || p(z{given}))", f"{self.aggregate_kl:.3f}"),
            ("active units (Cov > 0.01)", f"{self.active_units} of {self.latent_dim}"),
            ("KL per dimension", " ".join(f"{v:.2f}" for v in self.kl_per_dimension) or "-"),
        ]
        width = max(len(k) for k, _ in rows)
        text = "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
        return text + (f"\n  note: {self.extra['note']}" if self.extra.get("note") else "")


def collapse_report(model: Callable, guide: Callable, *args, site: str = "z", groups: Optional[torch.Tensor] = None,
                    num_samples: int = 10, minibatch_size: int = 100, threshold: float = 0.01,
                    particles: int = 0, seed: int = 0, **kwargs) -> CollapseReport:
    """All of the measures above for a model/guide pair on a batch of data (``*args`` as the model takes
    them), plus the importance-sampled NLL with ``particles`` draws (0 skips it)."""
    with torch.no_grad():
        return _collapse_report(model, guide, args, kwargs, site, groups, num_samples, minibatch_size, threshold,
                                particles, seed)


def _collapse_report(model, guide, args, kwargs, site, groups, num_samples, minibatch_size, threshold, particles,
                     seed) -> CollapseReport:
    from .infer.evidence import log_evidence

    q, p = encoder_posteriors(model, guide, *args, site=site, **kwargs)
    n = _check(q)
    conditional = len(p.batch_shape) == 1
    au, activity = active_units(q, threshold=threshold, prior=p if conditional else None)
    sizes = _groups(groups, n, q.mean.device)[1].sum(1).double()
    ceiling = float((sizes * sizes.log()).sum() / n)  # the mean over datapoints of log(size of its group)
    terms = _aggregate_terms(q, p, num_samples, groups, seed)  # shared by MI and aggregate KL (P3.3)
    try:
        kl_each = _kl_elementwise(q, p)  # (N, d): kl_per_dimension and kl_per_datapoint from one evaluation
        kl_dim, kl_point = kl_each.mean(0), kl_each.sum(-1)
        kl_total = float(kl_dim.sum())
        wide: Optional[float] = float((posterior_width_ratio(q, p) > WIDE_RATIO).double().mean())
        note = None
    except ValueError:  # a prior (or posterior) not factorised over its dimensions, e.g. a mixture prior
        # E_x KL(q(z|x) || p(z)) by Monte Carlo, at the draws the MI and the aggregate KL use
        kl_point = (terms["log_q_cond"] - terms["log_p"]).mean(0)
        kl_dim, kl_total, wide = torch.zeros(0), float(kl_point.mean()), None
        note = (f"the KL is a Monte Carlo estimate ({num_samples} draws per datapoint) and has no per-dimension "
                f"split: the prior ({type(p).__name__}) or the posterior is not factorised over the latent "
                "dimensions")
    report = CollapseReport(
        num_datapoints=n, latent_dim=q.event_shape[0], active_units=au, activity=activity.tolist(),
        kl=kl_total, kl_per_dimension=kl_dim.tolist(), kl_median=float(kl_point.median()), wide_posteriors=wide,
        mutual_information=float((terms["log_q_cond"] - terms["log_q_agg"]).mean()),
        mutual_information_ceiling=ceiling,
        mutual_information_minibatch=mutual_information_minibatch(q, min(minibatch_size, n), seed),
        minibatch_size=min(minibatch_size, n), aggregate_kl=float((terms["log_q_agg"] - terms["log_p"]).mean()),
        conditional=groups is not None)
    if note is not None:
        report.extra["note"] = note
    if particles:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            ev = log_evidence(model, guide, *args, num_particles=particles, diagnostics=False, warn=False, **kwargs)
        report.nll = -float(ev.log_evidence.mean())
        report.elbo = float(ev.elbo.mean())
    return report
