"""Free bits (Kingma et al. 2016, "Improved variational inference with inverse autoregressive flow",
appendix C) as a Pyro loss: a remedy for posterior collapse (seed P3.5)."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import Distribution, kl_divergence

from ..divergences import univariate_base
from .regularised_elbo import RegularisedELBO, site_mask

__all__ = ["FreeBitsELBO"]


class FreeBitsELBO(RegularisedELBO):
    """L = E_q[log p(x|z)] - sum_g max(lam, E_batch[KL_g(q(z|x) || p(z))])   (Kingma et al. 2016)

    The latent dimensions are split into groups g (``per="dim"``: each dimension of each latent site;
    ``per="site"``: each latent site); each group's KL is averaged over the minibatch (every batch
    dimension of the site, particles included) and replaced by ``lam`` where it is smaller, so a
    group below ``lam`` nats gets no gradient pushing it further towards the prior. The regulariser
    is therefore at least (number of groups) x lam per datapoint.

    The KL is in closed form where ``torch.distributions.kl_divergence`` has one; elsewhere, with
    ``mc_samples=N``, a Monte Carlo estimate from N fresh draws of q (the clamp at ``lam`` makes any noisy
    estimate biased upwards, E max(lam, X) >= max(lam, E X), so a larger N is better), and without it a
    ``NotImplementedError`` names the site. ``per="dim"`` needs factorised
    sites (``Normal(...).to_event(1)`` and the like). The scale of a site (subsampling, annealing)
    multiplies its term; a tensor scale enters through its mean over the batch.

    Args:
        lam: free nats per group, >= 0 (``lam=0`` is the ELBO with a closed-form KL).
        per: ``"dim"`` or ``"site"``.
        mc_samples: draws for sites without a closed-form KL (see above).
        num_particles, vectorize_particles, max_plate_nesting: as in ``Trace_ELBO``.
    """

    def __init__(self, lam: float = 0.5, per: str = "dim", num_particles: int = 1, vectorize_particles: bool = False,
                 max_plate_nesting: float = float("inf"), mc_samples: int | None = None):
        if not lam >= 0:
            raise ValueError(f"FreeBitsELBO: lam must be >= 0, got {lam}")
        if per not in ("dim", "site"):
            raise ValueError(f"FreeBitsELBO: per must be 'dim' or 'site', got {per!r}")
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles,
                         max_plate_nesting=max_plate_nesting)
        if mc_samples is not None and mc_samples < 1:
            raise ValueError(f"FreeBitsELBO: mc_samples must be >= 1, got {mc_samples}")
        self.lam, self.per, self.mc_samples = float(lam), per, mc_samples

    def _elementwise_kl(self, name: str, q: Distribution, p: Distribution, value: torch.Tensor) -> torch.Tensor:
        """KL with shape batch_shape (``per="site"``) or batch_shape + event_shape (``per="dim"``)."""
        shape = q.batch_shape + (q.event_shape if self.per == "dim" else torch.Size())
        if self.per == "dim":
            try:
                q, p = univariate_base(q), univariate_base(p)
            except ValueError:
                raise ValueError(f"FreeBitsELBO(per='dim'): site {name!r} is not factorised over its dimensions "
                                 f"({type(q).__name__} vs {type(p).__name__}); use per='site' (command line: "
                                 "--free-bits-per site)") from None
        try:
            kl = kl_divergence(q, p)
        except NotImplementedError:
            if self.mc_samples is None:
                raise NotImplementedError(f"FreeBitsELBO: no closed-form KL for site {name!r} ({type(q).__name__} vs "
                                          f"{type(p).__name__}); pass mc_samples=N (command line: --kl-samples "
                                          "N) for a Monte Carlo estimate") from None
            z = q.rsample((self.mc_samples,)) if q.has_rsample else q.sample((self.mc_samples,))
            kl = (q.log_prob(z) - p.log_prob(z)).mean(0)
        return kl.expand(shape)

    def _site_regulariser(self, name: str, guide_site: dict[str, Any], model_site: dict[str, Any]) -> torch.Tensor:
        q, p = guide_site["fn"], model_site["fn"]
        batch_shape = q.batch_shape
        kl = self._elementwise_kl(name, q, p, guide_site["value"])
        batch_ndim = len(batch_shape)
        group_ndim = kl.dim() - batch_ndim  # 0 for per="site", the site's event dims for per="dim"
        weight = torch.ones(batch_shape, dtype=kl.dtype, device=kl.device)
        mask = site_mask(guide_site, model_site)
        if mask is not None:  # a tensor, or a Python bool from poutine.mask(mask=False)
            weight = weight * torch.as_tensor(mask, device=kl.device).to(kl.dtype)
        scale = guide_site["scale"]
        if torch.is_tensor(scale):
            scale = (torch.broadcast_to(scale, batch_shape) * weight).sum() / weight.sum().clamp_min(1.0)
        count = weight.sum()
        batch_dims = tuple(range(batch_ndim))
        w = weight.reshape(batch_shape + (1,) * group_ndim)
        mean_kl = (kl * w).sum(batch_dims) / count.clamp_min(1.0) if batch_ndim else kl
        return scale * count * mean_kl.clamp(min=self.lam).sum()

    def __repr__(self) -> str:
        groups = "latent dimensions" if self.per == "dim" else "latent sites"
        return (f"FreeBitsELBO(lam={self.lam:g}, per={self.per!r}, num_particles={self.num_particles}): "
                f"E_q[log p(x|z)] - sum_g max({self.lam:g}, E_batch KL_g(q(z|x) || p(z))), g over {groups}")
