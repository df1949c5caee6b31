"""Closed-form Cauchy-Schwarz divergence (seed P2.1), with KL re-exported beside it.

    D_CS(p || q) = -log INT p q dx + 1/2 log INT p^2 dx + 1/2 log INT q^2 dx          (P2.1)

in nats (natural log). Some papers (e.g. Jenssen et al. 2006) define it as twice this value. D_CS is
symmetric, non-negative, zero iff p = q, invariant under a shared invertible affine map, and additive
over independent factors. For two Gaussians it never exceeds either KL direction (P2.1); for mixtures
that can fail (see ``tests/test_divergences.py::test_mixture_counterexample_to_kl_bound``).

Closed forms come from a registry of *log inner products* log INT p q, keyed on the two distribution
types, in the spirit of ``torch.distributions.kl.register_kl``:

    @register_cs(MyDist, MyDist)
    def _(p, q):
        return ...  # log INT p(x) q(x) dx, batched

Registered: ``Normal`` (elementwise), ``Independent`` (sums the base over reinterpreted dims),
``MultivariateNormal`` (full covariance, Cholesky of Sigma_p + Sigma_q), ``LowRankMultivariateNormal``
and diagonal ``Independent(Normal, 1)`` against either, and ``MixtureSameFamily`` of any of these
(log-sum-exp over all K_p x K_q component pairs). Everything is computed in log space, so scales from
1e-6 to 1e6 and distant means neither underflow nor give NaN. Pairs without a closed form raise
``NotImplementedError``; :func:`cs_divergence_mc` estimates any pair by Monte Carlo when asked.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.distributions import (
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    kl_divergence,
    register_kl,
)

__all__ = ["cs_divergence", "cs_divergence_mc", "log_inner_product", "register_cs", "kl_divergence", "register_kl",
           "has_cs_closed_form"]

_REGISTRY: dict[tuple[type, type], Callable[[Distribution, Distribution], torch.Tensor]] = {}


def univariate_base(d: Distribution) -> Distribution:
    """The elementwise base of nested ``Independent`` wrappers (``Normal(loc, scale).to_event(1)`` gives the
    ``Normal`` with batch shape (..., d)); raises ``ValueError`` where the base is not univariate."""
    while isinstance(d, Independent):
        d = d.base_dist
    if d.event_shape != ():
        raise ValueError(f"{type(d).__name__} is not factorised over its dimensions")
    return d


def register_cs(type_p: type, type_q: type):
    """Decorator registering ``fn(p, q) -> log INT p q`` for ``(type_p, type_q)``; the reverse pair is
    served by symmetry."""

    def decorator(fn):
        _REGISTRY[(type_p, type_q)] = fn
        return fn

    return decorator


def _lookup(p: Distribution, q: Distribution):
    for tp in type(p).__mro__:
        for tq in type(q).__mro__:
            if (tp, tq) in _REGISTRY:
                return _REGISTRY[(tp, tq)], False
            if (tq, tp) in _REGISTRY:
                return _REGISTRY[(tq, tp)], True
    return None, False


def has_cs_closed_form(p: Distribution, q: Distribution) -> bool:
    """Whether :func:`log_inner_product` has a closed form for this pair (types only; shapes unchecked)."""
    fn, _ = _lookup(p, q)
    if fn is None:
        return False
    if fn is _full_pair:  # a full-covariance Gaussian with another Gaussian, or with an Independent of something else
        return _is_gaussian(p) and _is_gaussian(q)
    if isinstance(p, Independent) and isinstance(q, Independent):
        return has_cs_closed_form(p.base_dist, q.base_dist)
    if isinstance(p, MixtureSameFamily) or isinstance(q, MixtureSameFamily):
        pc = p.component_distribution if isinstance(p, MixtureSameFamily) else p
        qc = q.component_distribution if isinstance(q, MixtureSameFamily) else q
        return has_cs_closed_form(pc, qc)
    return True


def log_inner_product(p: Distribution, q: Distribution) -> torch.Tensor:
    """log INT p(x) q(x) dx in closed form, with batch shape ``broadcast(p.batch_shape, q.batch_shape)``."""
    fn, swap = _lookup(p, q)
    if fn is None:
        raise NotImplementedError(f"no closed-form Cauchy-Schwarz divergence for {type(p).__name__} and "
                                  f"{type(q).__name__}; use cs_divergence_mc or register_cs")
    return fn(q, p) if swap else fn(p, q)


def cs_divergence(p: Distribution, q: Distribution) -> torch.Tensor:
    """D_CS(p || q) = -log INT pq + 1/2 log INT p^2 + 1/2 log INT q^2 (seed P2.1), batched like
    ``torch.distributions.kl_divergence``.

    Args:
        p, q: distributions with the same event shape and broadcastable batch shapes.
    Returns:
        Tensor of shape ``broadcast(p.batch_shape, q.batch_shape)``, >= 0, in nats.
    """
    d = -log_inner_product(p, q) + 0.5 * log_inner_product(p, p) + 0.5 * log_inner_product(q, q)
    return d.clamp_min(0.0)


def cs_divergence_mc(p: Distribution, q: Distribution, num_samples: int = 10_000) -> torch.Tensor:
    """Monte Carlo D_CS for any pair with ``sample`` and ``log_prob``, using INT pq = E_p[q(x)],
    INT p^2 = E_p[p(x)], INT q^2 = E_q[q(x)]. Consistent but biased for finite samples (the log of a mean);
    use it for pairs without a closed form, or to check one."""

    def log_mean_exp(t):
        return torch.logsumexp(t, 0) - math.log(t.shape[0])

    # reparameterised draws where available, so the estimate can be differentiated
    xp = p.rsample((num_samples,)) if p.has_rsample else p.sample((num_samples,))
    xq = q.rsample((num_samples,)) if q.has_rsample else q.sample((num_samples,))
    return -log_mean_exp(q.log_prob(xp)) + 0.5 * log_mean_exp(p.log_prob(xp)) + 0.5 * log_mean_exp(q.log_prob(xq))


# ----------------------------------------------------------------------------------------------- closed forms
@register_cs(Normal, Normal)
def _normal_normal(p: Normal, q: Normal) -> torch.Tensor:
    # INT N(x; m1, s1^2) N(x; m2, s2^2) dx = N(m1; m2, s1^2 + s2^2)   (P2.1)
    var = p.scale**2 + q.scale**2
    return -0.5 * (math.log(2 * math.pi) + var.log() + (p.loc - q.loc) ** 2 / var)


def _mvn_log_inner(loc_p, cov_p, loc_q, cov_q) -> torch.Tensor:
    # INT N(x; m1, S1) N(x; m2, S2) dx = N(m1; m2, S1 + S2)
    cov = cov_p + cov_q
    return MultivariateNormal(loc_q, covariance_matrix=cov).log_prob(loc_p)


def _is_gaussian(d: Distribution) -> bool:
    """A Gaussian over one event dimension: full, low-rank or diagonal (``Normal(...).to_event(1)``)."""
    return isinstance(d, (MultivariateNormal, LowRankMultivariateNormal)) or (
        isinstance(d, Independent) and isinstance(d.base_dist, Normal) and d.reinterpreted_batch_ndims == 1)


def _as_full(d: Distribution) -> tuple[torch.Tensor, torch.Tensor]:
    if not _is_gaussian(d):  # only an Independent gets here: the registry pairs these with (low-rank) MVNs
        raise NotImplementedError(f"no closed-form Cauchy-Schwarz divergence between a multivariate normal and "
                                  f"Independent({type(d.base_dist).__name__}, {d.reinterpreted_batch_ndims}); "
                                  "use cs_divergence_mc or register_cs")
    if isinstance(d, Independent):
        return d.base_dist.loc, torch.diag_embed(d.base_dist.scale**2)
    return d.loc, d.covariance_matrix


def _full_pair(p, q) -> torch.Tensor:
    lp, cp = _as_full(p)
    lq, cq = _as_full(q)
    return _mvn_log_inner(lp, cp, lq, cq)


for _pair in [(MultivariateNormal, MultivariateNormal), (LowRankMultivariateNormal, LowRankMultivariateNormal),
              (MultivariateNormal, LowRankMultivariateNormal), (MultivariateNormal, Independent),
              (LowRankMultivariateNormal, Independent)]:
    register_cs(*_pair)(_full_pair)


@register_cs(Independent, Independent)
def _independent(p: Independent, q: Independent) -> torch.Tensor:
    if p.reinterpreted_batch_ndims != q.reinterpreted_batch_ndims:
        raise NotImplementedError("Independent distributions with different reinterpreted dims")
    inner = log_inner_product(p.base_dist, q.base_dist)  # independent factors: log INT pq adds up
    n = p.reinterpreted_batch_ndims
    return inner.sum(tuple(range(-n, 0))) if n else inner


def _expand_component(d: Distribution, dim: int) -> Distribution:
    """Insert a singleton batch dimension at ``dim`` (counted from the right of the batch shape)."""
    shape = list(d.batch_shape)
    shape.insert(len(shape) + dim + 1, 1)
    if isinstance(d, Normal):
        return Normal(d.loc.reshape(shape), d.scale.reshape(shape))
    if isinstance(d, Independent):
        n = d.reinterpreted_batch_ndims
        return Independent(_expand_component(d.base_dist, dim - n), n)
    if isinstance(d, MultivariateNormal):
        return MultivariateNormal(d.loc.reshape(shape + list(d.event_shape)),
                                  scale_tril=d.scale_tril.reshape(shape + list(d.event_shape) * 2))
    if isinstance(d, LowRankMultivariateNormal):
        e = list(d.event_shape)
        return LowRankMultivariateNormal(d.loc.reshape(shape + e), d.cov_factor.reshape(shape + e + [-1]),
                                         d.cov_diag.reshape(shape + e))
    raise NotImplementedError(f"mixtures of {type(d).__name__} have no closed-form Cauchy-Schwarz divergence")


def _mixture_parts(d: Distribution):
    """(log mixture weights (..., K) or None, component distribution with batch (..., K) or d itself)."""
    if isinstance(d, MixtureSameFamily):
        return d.mixture_distribution.logits.log_softmax(-1), d.component_distribution
    return None, d


def _mixture_log_inner(p: MixtureSameFamily, q: Distribution) -> torch.Tensor:
    # INT (sum_i w_i p_i)(sum_j v_j q_j) = sum_ij w_i v_j INT p_i q_j   -> log-sum-exp over K_p x K_q pairs.
    # The registry puts the mixture first (a pair (q, mixture) comes here swapped).
    lw_p, comp_p = _mixture_parts(p)
    lw_q, comp_q = _mixture_parts(q)
    if lw_q is not None:
        inner = log_inner_product(_expand_component(comp_p, -1), _expand_component(comp_q, -2))  # (..., Kp, Kq)
        return torch.logsumexp(lw_p.unsqueeze(-1) + lw_q.unsqueeze(-2) + inner, dim=(-2, -1))
    inner = log_inner_product(comp_p, _expand_component(comp_q, -1))  # (..., Kp)
    return torch.logsumexp(lw_p + inner, -1)


register_cs(MixtureSameFamily, Distribution)(_mixture_log_inner)
