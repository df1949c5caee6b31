"""The importance-weighted ELBO (IWAE) as a Pyro loss, with doubly-reparameterised gradients (DReG).

For each datapoint, with K draws z_k ~ q(z|x) and log-weights log w_k = log p(x, z_k) - log q(z_k|x),

    L_K = log (1/K) sum_k w_k  <=  log p(x),       L_1 = ELBO,   L_K increases to log p(x) with K

(Burda et al. 2016; the estimator of seed P1.7 used as a training objective). The loss is
-sum over datapoints of L_K; the datapoints are the batch plates that every sample site shares (as in
``RenyiELBO`` and :func:`~dgm_pyro.infer.log_evidence`), so each datapoint has its own bound.

Gradients, with normalised weights v_k = w_k / sum_j w_j:

- ``estimator="iwae"``: the reparameterised gradient of L_K, sum_k v_k grad log w_k. Its signal-to-noise
  ratio for the guide's parameters falls as K grows (Rainforth et al. 2018).
- ``estimator="dreg"`` (Tucker et al. 2019, "Doubly reparameterized gradient estimators"): the same for the
  model's parameters, and for the guide's parameters phi the unbiased estimator
  sum_k v_k^2 (d log w_k / d z_k) (d z_k / d phi), in which log q is evaluated with its parameters held
  fixed. It has the same expectation as the IWAE gradient and a lower variance (tests and
  docs/benchmarks.md measure both).

Both need reparameterisable guide sites. Scales (``poutine.scale``, KL annealing, subsampling) are not
applied: the bound is the per-datapoint L_K at scale 1, summed over the batch.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from pyro.infer import ELBO
from pyro.poutine.util import site_is_subsample

from ..errors import DgmPyroError
from .weights import batch_plates, log_importance_weights

__all__ = ["IWELBO", "ESTIMATORS"]

ESTIMATORS = ("iwae", "dreg")


class IWELBO(ELBO):
    """-sum_datapoints log (1/K) sum_k p(x, z_k) / q(z_k|x), usable as ``SVI(model, guide, optim, IWELBO(K))``.

    Args:
        num_particles: K >= 1 (K = 1 is the ELBO).
        estimator: ``"iwae"`` or ``"dreg"`` (see the module docstring).
    """

    def __init__(self, num_particles: int = 10, estimator: str = "dreg"):
        if num_particles < 1:
            raise DgmPyroError(f"num_particles must be >= 1, got {num_particles}")
        if estimator not in ESTIMATORS:
            raise DgmPyroError(f"estimator must be one of {', '.join(ESTIMATORS)}, got '{estimator}'")
        super().__init__(num_particles=num_particles, vectorize_particles=True)
        self.estimator = estimator
        self._plates: dict[tuple[Callable, Callable], tuple[set[int], int]] = {}

    def __repr__(self) -> str:
        return (f"IWELBO(num_particles={self.num_particles}, estimator={self.estimator!r}): "
                "log (1/K) sum_k p(x, z_k) / q(z_k|x) per datapoint")

    def _batch(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[set[int], int]:
        # keyed by the callables themselves: a bound method is a new object (and id) on every attribute access,
        # and equal to the next one of the same instance and function
        key = (model, guide)
        if key not in self._plates:
            shared, nesting, _ = batch_plates(model, guide, args, kwargs)
            self._plates[key] = ({d for _, d in shared}, nesting)
        return self._plates[key]

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """-sum of the per-datapoint bounds; its gradient is the chosen estimator's."""
        keep, nesting = self._batch(model, guide, args, kwargs)
        K, dreg = self.num_particles, self.estimator == "dreg"
        log_w, traces = log_importance_weights(model, guide, args, kwargs, K, True, keep, nesting, detach_guide=dreg)
        bound = torch.logsumexp(log_w, 0) - math.log(K)
        latents = [s for s in traces[0].nodes.values() if s["type"] == "sample" and not s["is_observed"]
                   and not site_is_subsample(s)]
        for site in latents:
            if not site["fn"].has_rsample:
                raise DgmPyroError(f"IWELBO needs reparameterisable guide sites; '{site['name']}' is not")
        if not dreg:
            return -bound.sum()
        v = torch.softmax(log_w.detach(), 0)  # normalised weights per datapoint, (K, ...)
        for site in latents:
            if site["value"].requires_grad:
                # the guide's parameters see the gradient through z only, weighted once more by v_k
                scale = v.reshape(v.shape + (1,) * site["fn"].event_dim)
                site["value"].register_hook(lambda g, s=scale: g * s)
        surrogate = (v * log_w).sum()
        return -(bound.detach().sum() + surrogate - surrogate.detach())

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError("IWELBO draws its particles in one vectorised trace; see differentiable_loss")

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())
