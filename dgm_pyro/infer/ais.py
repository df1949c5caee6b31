"""Annealed importance sampling (Neal 2001) of log p(x) per datapoint, with HMC transitions.

From z_0 ~ q(z|x) (the guide), through the geometric path of densities

    f_b(z) = q(z|x)^(1 - b) p(x, z)^b,      0 = b_0 < b_1 < ... < b_T = 1,

each particle carries the log-weight  log w = sum_t (b_t - b_{t-1}) [log p(x, z_{t-1}) - log q(z_{t-1}|x)],
where z_t follows an HMC transition that leaves f_{b_t} invariant. (1/K) sum_k w_k is an unbiased
estimate of p(x) for any T (T = 0 is importance sampling with the guide, seed P1.7), and its log is a
lower bound in expectation that is much tighter than importance sampling when the guide is a poor
proposal. All datapoints (the batch plates) and particles are separate chains run together, each with its
own accept/reject; HMC works in the guide's scale (z = loc + sd * u) with one step size per datapoint,
adapted towards an acceptance rate of 0.65 from the previous transition's mean acceptance.
"""

from __future__ import annotations

import math
from typing import Callable

import pyro
import torch
from pyro import poutine

from ..errors import DgmPyroError
from .weights import latent_sites, reduce_to_batch, sample_sites, site_log_prob

__all__ = ["ais_log_weights", "hmc_transition", "sigmoid_schedule", "JointDensities"]

_PARTICLES = "_dgm_pyro_ais_particles"


def sigmoid_schedule(num_steps: int, steepness: float = 4.0) -> torch.Tensor:
    """b_0 = 0 < ... < b_T = 1 spaced as a rescaled sigmoid (dense at both ends; Grosse et al. 2015)."""
    if num_steps < 1:
        raise DgmPyroError(f"num_steps must be >= 1, got {num_steps}")
    s = torch.sigmoid(steepness * (2 * torch.linspace(0, 1, num_steps + 1, dtype=torch.float64) - 1))
    return (s - s[0]) / (s[-1] - s[0])


def _per_chain(t: torch.Tensor, event_dim: int, keep_dims: set[int], nesting: int) -> torch.Tensor:
    """Sum ``t`` over its event dims and its non-batch plate dims: shape (K, ...) like the log-weights."""
    return reduce_to_batch(t.sum(tuple(range(-event_dim, 0))) if event_dim else t, keep_dims, nesting)


class JointDensities:
    """log p(x, z) and log q(z|x) per chain (particle x datapoint) at given latent values, with their
    gradients: the model and guide run under ``poutine.condition`` inside a particle plate of ``num``."""

    def __init__(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, num: int, keep_dims: set[int],
                 nesting: int):
        plate = pyro.plate(_PARTICLES, num, dim=-(nesting + 1))
        self.model, self.guide = plate(model), plate(guide)
        self.args, self.kwargs, self.keep, self.nesting = args, kwargs, keep_dims, nesting

    def log_densities(self, z: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        guide_tr = poutine.trace(poutine.condition(self.guide, data=z)).get_trace(*self.args, **self.kwargs)
        model_tr = poutine.trace(poutine.condition(self.model, data=z)).get_trace(*self.args, **self.kwargs)
        log_q = sum(site_log_prob(guide_tr.nodes[n], self.keep, self.nesting) for n in z)
        log_p = sum(site_log_prob(s, self.keep, self.nesting) for s in sample_sites(model_tr).values())
        return log_p, log_q


def _leapfrog(target: JointDensities, z: dict, r: dict, sd: dict, eps: torch.Tensor, beta: float,
              steps: int) -> tuple[dict, dict, torch.Tensor]:
    """``steps`` leapfrog steps in the scaled coordinates u = z / sd; returns (z, r, potential) at the end."""

    def grad(z: dict) -> tuple[torch.Tensor, dict]:
        with torch.enable_grad():
            z = {n: v.detach().requires_grad_(True) for n, v in z.items()}
            log_p, log_q = target.log_densities(z)
            potential = -(beta * log_p + (1 - beta) * log_q)
            grads = torch.autograd.grad(potential.sum(), list(z.values()))
        return potential.detach(), {n: g * sd[n] for n, g in zip(z, grads)}

    def scale(n: str) -> torch.Tensor:
        return eps.reshape(eps.shape + (1,) * (sd[n].dim() - eps.dim()))

    _, g = grad(z)
    r = {n: r[n] - 0.5 * scale(n) * g[n] for n in z}
    for i in range(steps):
        z = {n: z[n] + scale(n) * sd[n] * r[n] for n in z}
        potential, g = grad(z)
        factor = 1.0 if i < steps - 1 else 0.5
        r = {n: r[n] - factor * scale(n) * g[n] for n in z}
    return z, r, potential


def hmc_transition(target: JointDensities, z: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], eps: torch.Tensor,
                   beta: float, steps: int, event_dims: dict[str, int],
                   densities: tuple[torch.Tensor, torch.Tensor] | None = None
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One HMC transition per chain that leaves f_beta(z) = q(z|x)^(1 - beta) p(x, z)^beta invariant: a fresh
    momentum, ``steps`` leapfrog steps of size ``eps`` (per datapoint, in the guide's scale ``sd``) and a
    Metropolis accept/reject of the whole trajectory. ``densities`` are (log p, log q) at ``z`` when known.
    Returns the new state and each chain's log acceptance probability (``num``, ...)."""
    keep, nesting = target.keep, target.nesting
    if densities is None:
        with torch.no_grad():
            densities = target.log_densities(z)
    log_p, log_q = densities
    r = {n: torch.randn_like(v) for n, v in z.items()}
    kinetic0 = sum(_per_chain(0.5 * r[n] ** 2, event_dims[n], keep, nesting) for n in z)
    potential0 = -(beta * log_p + (1 - beta) * log_q)
    z_new, r_new, potential1 = _leapfrog(target, z, r, sd, eps, beta, steps)
    kinetic1 = sum(_per_chain(0.5 * r_new[n] ** 2, event_dims[n], keep, nesting) for n in z)
    log_accept = (potential0 + kinetic0 - potential1 - kinetic1).nan_to_num(nan=-math.inf).clamp(max=0.0)
    accept = torch.rand_like(log_accept).log() < log_accept
    z = {n: torch.where(accept.reshape(accept.shape + (1,) * event_dims[n]), z_new[n], z[n]).detach() for n in z}
    return z, log_accept


def ais_log_weights(model: Callable, guide: Callable, args: tuple, kwargs: dict, num: int, keep_dims: set[int],
                    nesting: int, num_steps: int = 100, hmc_steps: int = 5, step_size: float = 0.5) -> torch.Tensor:
    """(num, ...) AIS log-weights, with size-1 dims where plates were summed (as
    :func:`~dgm_pyro.infer.weights.log_importance_weights`)."""
    betas = sigmoid_schedule(num_steps).tolist()
    target = JointDensities(model, guide, args, kwargs, num, keep_dims, nesting)
    with torch.no_grad():
        guide_tr = poutine.trace(target.guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(target.model, trace=guide_tr)).get_trace(*args, **kwargs)
    latents = latent_sites(guide_tr)
    unguided = sorted(latent_sites(model_tr) - latents)
    if unguided:
        raise DgmPyroError(f"AIS needs a guide site for every model latent; {', '.join(map(repr, unguided))} have none")
    for n in latents:
        fn = guide_tr.nodes[n]["fn"]
        if not fn.has_rsample or fn.support.is_discrete:
            raise DgmPyroError(f"AIS needs continuous latents; '{n}' is not")
    z = {n: guide_tr.nodes[n]["value"].detach() for n in latents}
    sd = {n: guide_tr.nodes[n]["fn"].stddev.detach().expand_as(z[n]) for n in latents}
    event_dims = {n: guide_tr.nodes[n]["fn"].event_dim for n in latents}
    with torch.no_grad():
        log_p, log_q = target.log_densities(z)
    log_w = torch.zeros_like(log_p)
    eps = torch.full_like(log_p, step_size).mean(0, keepdim=True)  # one step size per datapoint
    for b_prev, b in zip(betas[:-1], betas[1:]):
        # the weight increment is taken at z_{t-1}, before the move that leaves f_{b_t} invariant
        log_w = log_w + (b - b_prev) * (log_p - log_q)
        z, log_accept = hmc_transition(target, z, sd, eps, b, hmc_steps, event_dims, (log_p, log_q))
        with torch.no_grad():
            log_p, log_q = target.log_densities(z)
        rate = log_accept.exp().mean(0, keepdim=True)
        eps = torch.where(rate > 0.65, eps * 1.1, eps / 1.1).clamp(1e-4, 10.0)
    return log_w.detach()
