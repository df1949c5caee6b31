"""Pyro's ``TraceMeanField_ELBO`` that says when it is not closed-form.

The mean-field ELBO (seed P1.4) E_q[log p(x|z)] - KL(q(z|x) || p(z)) takes each latent site's KL in closed form
where ``torch.distributions.kl_divergence`` has one, and Pyro's implementation silently falls back to the
Monte Carlo estimate log q(z|x) - log p(z) elsewhere (a mixture prior, a normalising flow). Its value is right
either way; its variance is not what "closed-form KL" promises. :class:`MeanFieldELBO` warns once per site that
falls back, naming it and the two distributions, and refuses a model latent without a guide site by name.
"""

from __future__ import annotations

import warnings
from typing import Any

from pyro.infer import TraceMeanField_ELBO
from torch.distributions import kl_divergence

from ..errors import DgmPyroError

__all__ = ["MeanFieldELBO"]


class MeanFieldELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` (same arguments, same values and gradients) that warns once per latent site whose
    KL has no closed form and is estimated by sampling."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._checked: set[str] = set()

    def _differentiable_loss_particle(self, model_trace: Any, guide_trace: Any) -> Any:
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or name in self._checked:
                continue
            guide_site = guide_trace.nodes.get(name)
            if guide_site is None:  # Pyro's mean-field ELBO would fail with a bare KeyError
                raise DgmPyroError(f"meanfield: model latent site '{name}' has no guide site; the mean-field ELBO "
                                   "needs one for every latent (objective 'elbo' draws it from its prior)")
            self._checked.add(name)
            try:
                kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:
                warnings.warn(f"meanfield: the KL of latent site '{name}' ({type(guide_site['fn']).__name__} against "
                              f"{type(site['fn']).__name__}) has no closed form; it is estimated by sampling, "
                              "as objective 'elbo' does", RuntimeWarning, stacklevel=2)
        return super()._differentiable_loss_particle(model_trace, guide_trace)
