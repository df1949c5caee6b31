"""Adaptive importance sampling of log p(x) per datapoint: the guide, then Gaussians fitted to its weighted draws.

A guide trained by an ELBO or an importance-weighted bound is often a poor proposal on its own: a diagonal
Gaussian cannot follow a correlated posterior, and an IWAE-trained encoder is broader than the posterior
(Rainforth et al. 2018), so a few draws carry all the weight and PSIS k-hat exceeds 0.7. Population Monte
Carlo (Cappe et al. 2004) repairs the proposal per datapoint. Round 0 is plain importance sampling with the
guide q (seed P1.7). Each later round r fits, for every datapoint and every latent site, a Gaussian g_r to
the previous round's self-normalised draws in the site's unconstrained space (weighted mean and
covariance, shrunk by D / (ESS + D) towards the variances of the previous round's Gaussian, or in round
1 of the guide's draws), and proposes from the
defensive mixture

    r(z) = a q(z|x) + (1 - a) prod_sites g_r(z_site),        w = p(x, z) / r(z),

whose weights stay bounded by p(x, z) / (a q(z|x)) wherever the guide covers the posterior (Hesterberg
1995). The estimate log (1/K) sum_k w_k of the last round is unbiased for p(x) in the same sense as
importance sampling with the guide: its proposal was fitted on earlier, independent draws.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import pyro.distributions as dist
from pyro import poutine
from torch.distributions import biject_to

from ..errors import DgmPyroError
from .ais import JointDensities
from .weights import latent_sites, log_importance_weights, reduce_to_batch

__all__ = ["adaptive_log_weights", "adaptive_unsupported", "FULL_COVARIANCE_MAX_DIM"]

#: Largest unconstrained event size of a site that gets a full covariance per datapoint (above it, diagonal).
FULL_COVARIANCE_MAX_DIM = 256


class _SiteFit:
    """A Gaussian per datapoint (and per element of any other plate) in one site's unconstrained space."""

    def __init__(self, fn: dist.Distribution, z: torch.Tensor, log_w: torch.Tensor,
                 previous: "_SiteFit | None" = None, jitter: float = 1e-6):
        self.transform = biject_to(fn.support)
        self.event_dim = fn.event_dim
        self.batch_dims = z.dim() - self.event_dim  # (K, *plates)
        u = self.transform.inv(z)
        self.u_event_shape = u.shape[self.batch_dims:]
        flat = u.reshape(u.shape[:self.batch_dims] + (-1,)).double()  # (K, *plates, D)
        d = flat.shape[-1]
        w = torch.softmax(log_w.double(), 0)
        w = w.reshape(w.shape + (1,) * (flat.dim() - 1 - w.dim())).expand(flat.shape[:-1])  # (K, *plates)
        ess = 1.0 / w.pow(2).sum(0)
        mean = (w[..., None] * flat).sum(0)
        centred = flat - mean
        # shrinkage target: the previous fitted Gaussian's variances, or in round 1 the guide draws' spread
        spread = (flat.var(0) if previous is None else previous.variance) + jitter
        lam = (d / (ess + d))[..., None]
        if d <= FULL_COVARIANCE_MAX_DIM:
            cov = torch.einsum("k...i,k...j->...ij", w[..., None] * centred, centred)
            cov = (1 - lam[..., None]) * cov + lam[..., None] * torch.diag_embed(spread)
            cov = cov + jitter * torch.eye(d, dtype=cov.dtype, device=cov.device)
            self.gauss = dist.MultivariateNormal(mean, scale_tril=torch.linalg.cholesky(cov))
        else:
            var = (1 - lam) * (w[..., None] * centred.pow(2)).sum(0) + lam * spread
            self.gauss = dist.Normal(mean, var.sqrt()).to_event(1)
        self.variance = self.gauss.variance
        self.dtype = z.dtype

    def sample(self, num: int) -> torch.Tensor:
        if isinstance(self.gauss, dist.MultivariateNormal):
            # loc + L eps without broadcasting L (*plates, D, D) over the num draws (MultivariateNormal.rsample
            # materialises num x *plates x D x D: 32 GB for 10 draws of 10,000 datapoints at D = 200)
            eps = torch.randn((num,) + self.gauss.loc.shape, dtype=self.gauss.loc.dtype, device=self.gauss.loc.device)
            u = (self.gauss.loc + torch.einsum("...ij,k...j->k...i", self.gauss.scale_tril, eps)).to(self.dtype)
        else:
            u = self.gauss.sample((num,)).to(self.dtype)
        return self.transform(u.reshape(u.shape[:-1] + self.u_event_shape))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log g(z) per (K, *plates), with the change of variables to the site's support."""
        u = self.transform.inv(z)
        flat = u.reshape(u.shape[:self.batch_dims] + (-1,)).double()
        ladj = self.transform.log_abs_det_jacobian(u, z)
        extra = ladj.dim() - self.batch_dims  # event dims of the site the transform leaves unsummed
        if extra > 0:
            ladj = ladj.sum(tuple(range(-extra, 0)))
        return (self.gauss.log_prob(flat) - ladj.double()).to(self.dtype)


def adaptive_unsupported(model: Callable, guide: Callable, *args, **kwargs) -> "str | None":
    """Why adaptive importance sampling cannot estimate this model's evidence (``None``: it can): a model latent
    without a guide site, or a discrete latent. One guide trace and one model replay, with the random state
    restored, so the caller's draws are unchanged."""
    import pyro
    from pyro.util import get_rng_state, set_rng_state

    state = get_rng_state()
    try:
        with torch.no_grad(), pyro.validation_enabled(False):
            g_tr = poutine.trace(guide).get_trace(*args, **kwargs)
            m_tr = poutine.trace(poutine.replay(model, trace=g_tr)).get_trace(*args, **kwargs)
    finally:
        set_rng_state(state)
    guided = latent_sites(g_tr)
    unguided = sorted(latent_sites(m_tr) - guided)
    if unguided:
        return f"the model latent(s) {', '.join(map(repr, unguided))} have no guide site"
    discrete = [n for n in sorted(guided) if g_tr.nodes[n]["fn"].support.is_discrete]
    return f"the latent(s) {', '.join(map(repr, discrete))} are discrete" if discrete else None


def adaptive_log_weights(model: Callable, guide: Callable, args: tuple, kwargs: dict, num: int, keep_dims: set[int],
                         nesting: int, num_rounds: int = 3, defensive: float = 0.2,
                         chunk_size: int | None = None, on_chunk: Callable[[int, int], None] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(num, ...) log-weights of the last round of adaptive importance sampling, and those of round 0 (the
    guide alone), with size-1 dims where plates were summed (as
    :func:`~dgm_pyro.infer.weights.log_importance_weights`).

    Args:
        num_rounds: R >= 1 adapted rounds after the guide's round 0; each costs about 2.5 importance-sampling
            passes of ``num`` particles (a guide draw, the guide and the fitted Gaussians evaluated at the
            mixture's draws, the model).
        defensive: a in (0, 1], the guide's share of the mixture.
        chunk_size: particles evaluated at once (default: all).
        on_chunk: called after each chunk with the draws made so far and in all, (R + 1) ``num`` (for progress).
    """
    if num_rounds < 1:
        raise DgmPyroError(f"adaptive importance sampling needs num_rounds >= 1, got {num_rounds}")
    if not 0 < defensive <= 1:
        raise DgmPyroError(f"the defensive share must lie in (0, 1], got {defensive}")
    if num < 2:
        raise DgmPyroError(f"adaptive importance sampling needs num_particles >= 2 to fit a proposal, got {num}")
    chunk_size = num if chunk_size is None else max(1, chunk_size)
    latents: list[str] = []
    fns: dict[str, dist.Distribution] = {}

    def check(g_tr: poutine.Trace, k: int) -> None:
        latents.extend(sorted(latent_sites(g_tr)))
        plated = JointDensities(model, guide, args, kwargs, k, keep_dims, nesting).model
        m_tr = poutine.trace(poutine.replay(plated, trace=g_tr)).get_trace(*args, **kwargs)
        unguided = sorted(latent_sites(m_tr) - set(latents))
        if unguided:
            raise DgmPyroError("adaptive importance sampling needs a guide site for every model latent; "
                               f"{', '.join(map(repr, unguided))} have none (use method='is')")
        for n in latents:
            fns[n] = g_tr.nodes[n]["fn"]
            if fns[n].support.is_discrete:
                raise DgmPyroError(f"adaptive importance sampling needs continuous latents; '{n}' is discrete "
                                   "(use method='is')")

    def guide_round(k: int) -> tuple[torch.Tensor, dict]:
        """Round 0: importance sampling with the guide (the same draws as ``method="is"``)."""
        log_w, (g_tr,) = log_importance_weights(model, guide, args, kwargs, k, True, keep_dims, nesting)
        if not latents:
            check(g_tr, k)
        return log_w, {n: g_tr.nodes[n]["value"] for n in latents}

    def mixture_round(k: int, fits: dict[str, _SiteFit], like: torch.Tensor) -> tuple[torch.Tensor, dict]:
        target = JointDensities(model, guide, args, kwargs, k, keep_dims, nesting)
        g_tr = poutine.trace(target.guide).get_trace(*args, **kwargs)
        # one mixture component per chain (particle and datapoint), shared by every site
        pick = torch.rand((k,) + like.shape[1:], device=like.device) >= defensive
        z = {}
        for n in latents:
            z_q, z_g = g_tr.nodes[n]["value"], fits[n].sample(k)
            z_g = z_g.expand(torch.broadcast_shapes(z_g.shape, z_q.shape))
            chosen = pick.reshape(pick.shape + (1,) * fits[n].event_dim)
            z[n] = torch.where(chosen, z_g, z_q.expand_as(z_g))
        log_p, log_q = target.log_densities(z)
        log_g = sum(reduce_to_batch(fits[n].log_prob(z[n]), keep_dims, nesting) for n in latents)
        log_r = torch.logaddexp(math.log(defensive) + log_q,
                                (math.log1p(-defensive) if defensive < 1 else -math.inf) + log_g)
        return log_p - log_r, z

    def run(step: Callable[[int], tuple], before: int) -> tuple[torch.Tensor, dict]:
        lws, zs = [], []
        done = 0
        while done < num:
            k = min(chunk_size, num - done)
            out = step(k)
            lws.append(out[0])
            zs.append(out[1])
            done += k
            if on_chunk is not None:
                on_chunk(before + done, (num_rounds + 1) * num)
        return torch.cat(lws, 0), {n: torch.cat([z[n] for z in zs], 0) for n in latents}

    with torch.no_grad():
        log_w0, z = run(guide_round, 0)
        log_w = log_w0
        fits: dict = {}
        for r in range(num_rounds):
            fits = {n: _SiteFit(fns[n], z[n], log_w, fits.get(n)) for n in latents}
            log_w, z = run(lambda k: mixture_round(k, fits, log_w0), (r + 1) * num)
    return log_w.detach(), log_w0.detach()
