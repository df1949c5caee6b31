"""The Cauchy-Schwarz ELBO of seed P2.2 as a Pyro loss."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..divergences import cs_divergence, cs_divergence_mc, has_cs_closed_form
from .regularised_elbo import RegularisedELBO, scaled_sum

__all__ = ["CSELBO"]


class CSELBO(RegularisedELBO):
    """L_CS = E_q[log p(x|z)] - lam * D_CS(q(z|x) || p(z))                              (seed P2.2)

    with D_CS(q || p) = -log INT q p + 1/2 log INT q^2 + 1/2 log INT p^2 (P2.1, natural log) in closed form
    for every latent site whose guide and model distributions have one (Gaussian: scalar, diagonal,
    full and low-rank covariance, Gaussian mixtures; see :mod:`dgm_pyro.divergences`), and the
    reconstruction term by Monte Carlo. Usable with any model/guide pair:
    ``SVI(model, guide, optim, loss=CSELBO(lam=2.0))``.

    It is **not** a lower bound on log p(x): P2.2 gives
    L_CS = log p(x) - KL(q(z|x) || p(z|x)) + [KL(q || p(z)) - lam D_CS(q || p(z))], and for Gaussians
    D_CS <= KL (P2.1), so for lam <= 1 the bracket is >= 0 and L_CS can exceed log p(x). Report
    :func:`~dgm_pyro.infer.log_evidence` for the likelihood of a model trained with it.

    Args:
        lam: weight lambda >= 0 of the divergence.
        num_particles: particles for the reconstruction term.
        mc_samples: if set, sites without a closed form use :func:`~dgm_pyro.divergences.cs_divergence_mc`
            with this many samples (consistent, biased for finite samples: the log of a mean); by default
            such a site raises ``NotImplementedError``.
        vectorize_particles, max_plate_nesting: as in ``Trace_ELBO``.
    """

    def __init__(self, lam: float = 1.0, num_particles: int = 1, mc_samples: Optional[int] = None,
                 vectorize_particles: bool = False, max_plate_nesting: float = float("inf")):
        if not lam >= 0:
            raise ValueError(f"CSELBO: lam must be >= 0, got {lam}")
        if mc_samples is not None and mc_samples < 1:
            raise ValueError(f"CSELBO: mc_samples must be >= 1, got {mc_samples}")
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles,
                         max_plate_nesting=max_plate_nesting)
        self.lam = float(lam)
        self.mc_samples = mc_samples

    def _site_regulariser(self, name: str, guide_site: dict[str, Any], model_site: dict[str, Any]) -> torch.Tensor:
        q, p = guide_site["fn"], model_site["fn"]
        if has_cs_closed_form(q, p):
            d = cs_divergence(q, p)
        elif self.mc_samples is not None:
            d = cs_divergence_mc(q, p, self.mc_samples)
        else:
            raise NotImplementedError(f"CSELBO: no closed-form D_CS for site {name!r} ({type(q).__name__} vs "
                                      f"{type(p).__name__}); pass mc_samples=N (command line: --kl-samples N) for "
                                      "a Monte Carlo estimate")
        return self.lam * scaled_sum(d, guide_site, model_site)

    def __repr__(self) -> str:
        return (f"CSELBO(lam={self.lam:g}, num_particles={self.num_particles}): "
                f"E_q[log p(x|z)] - {self.lam:g} * D_CS(q(z|x) || p(z))")
