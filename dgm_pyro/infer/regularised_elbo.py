"""The shared walk over sample sites behind :class:`CSELBO` and :class:`FreeBitsELBO`.

Both objectives have the form

    L = E_q[log p(x|z)] - R(q, p),    R = sum over latent sites s of R_s(q_s, p_s)

with the reconstruction term by Monte Carlo (the observed sites' log-densities at the guide's sample)
and each latent site's regulariser computed from the *distributions* of the guide site and the model
site of the same name, as ``pyro.infer.TraceMeanField_ELBO`` does for the KL. Sites are paired by name
after the model is replayed against the guide's sample, so conditional priors p(z|y) and Markov priors
p(z_t | z_{t-1}) are evaluated at the guide's values of their parents (for a Markov chain the sum is a
one-sample estimate of E_q[sum_t R(q(z_t|...) || p(z_t|z_{t-1}))]). Each site's scale (subsampling,
annealing) and mask apply to its regulariser exactly as they apply to its log-density.

Like ``TraceMeanField_ELBO`` this needs reparameterised guide sites and a guide whose sites factorise
the way the model's do (mean field, or the same dependency structure).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Optional

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled, torch_item
from pyro.util import warn_if_nan

__all__ = ["RegularisedELBO"]


def site_mask(guide_site: dict[str, Any], model_site: dict[str, Any]) -> Optional[torch.Tensor]:
    """The mask of a latent site: the guide's and the model's masks combined (``None`` if neither)."""
    masks = [m for m in (guide_site["mask"], model_site["mask"]) if m is not None]
    if not masks:
        return None
    return masks[0] if len(masks) == 1 else masks[0] & masks[1]


class RegularisedELBO(Trace_ELBO, ABC):
    """Base class: E_q[log p(x|z)] - sum_s R_s, with R_s from :meth:`_site_regulariser`.

    Args:
        num_particles: particles for the Monte Carlo reconstruction term (and for any Monte Carlo
            regulariser).
        vectorize_particles: draw the particles in one vectorised run, as in ``Trace_ELBO``.
        max_plate_nesting: as in ``Trace_ELBO``.
    """

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = False,
                 max_plate_nesting: float = float("inf")):
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles,
                         max_plate_nesting=max_plate_nesting)

    @abstractmethod
    def _site_regulariser(self, name: str, guide_site: dict[str, Any], model_site: dict[str, Any]) -> torch.Tensor:
        """The scaled, masked regulariser of one latent site, summed to a scalar."""

    def _terms(self, model_trace, guide_trace) -> tuple[torch.Tensor, torch.Tensor]:
        reconstruction: Any = 0.0
        regulariser: Any = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                reconstruction = reconstruction + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes.get(name)
            if guide_site is None or guide_site["type"] != "sample":
                raise ValueError(f"{type(self).__name__}: latent site {name!r} of the model has no guide site")
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            regulariser = regulariser + self._site_regulariser(name, guide_site, model_site)
        for name, guide_site in guide_trace.nodes.items():
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                raise ValueError(f"{type(self).__name__}: guide site {name!r} has no model site "
                                 "(auxiliary guide variables are not supported)")
        return torch.as_tensor(reconstruction), torch.as_tensor(regulariser)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        reconstruction, regulariser = self._terms(model_trace, guide_trace)
        surrogate = regulariser - reconstruction
        loss = surrogate.detach() if torch._C._get_tracing_state() else torch_item(surrogate)
        return loss, surrogate

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """The objective's value, negated and averaged over particles (a float)."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle, _ = self._differentiable_loss_particle(model_trace, guide_trace)
            loss += particle / self.num_particles
        warn_if_nan(loss, "loss")
        return loss

    def components(self, model: Callable, guide: Callable, *args, **kwargs) -> dict[str, float]:
        """The two terms separately, averaged over particles: ``{"reconstruction": E_q[log p(x|z)]``
        (summed over the batch at each site's scale), ``"regulariser": R}``; the objective is their difference."""
        out = {"reconstruction": 0.0, "regulariser": 0.0}
        with torch.no_grad():
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                rec, reg = self._terms(model_trace, guide_trace)
                out["reconstruction"] += float(rec) / self.num_particles
                out["regulariser"] += float(reg) / self.num_particles
        return out


def scaled_sum(value: torch.Tensor, guide_site: dict[str, Any], model_site: dict[str, Any]) -> torch.Tensor:
    """Sum of a per-element site quantity with the guide site's scale and the sites' mask applied."""
    return scale_and_mask(value, scale=guide_site["scale"], mask=site_mask(guide_site, model_site)).sum()
