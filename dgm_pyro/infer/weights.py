"""Per-datapoint importance log-weights of any Pyro model/guide pair, and the trace-site helpers that the
evidence estimators (:mod:`~dgm_pyro.infer.evidence`, :mod:`~dgm_pyro.infer.adaptive`, :mod:`~dgm_pyro.infer.ais`)
and the IWELBO objective share: one module below all of them, so that none imports another's internals.

log w = log p(x, z|y) - log q(z|x,y) for z ~ q (seed P1.3), summed within each datapoint: the batch plates are
the plates every sample site shares, found from one checked trace (:func:`batch_plates`).
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import detach, scale_and_mask
from pyro.poutine.util import site_is_subsample

from ..errors import DgmPyroError

__all__ = ["log_importance_weights", "batch_plates", "check_model_and_guide", "site_log_prob", "reduce_to_batch",
           "sample_sites", "latent_sites"]

_PARTICLE_PLATE = "_dgm_pyro_evidence_particles"


def _shared_plates(traces: list[poutine.Trace]) -> tuple[list[tuple[str, int]], int]:
    """Plates (name, dim) shared by every sample site, and the largest plate nesting seen."""
    shared: Optional[set] = None
    nesting = 0
    num_sites = 0
    for tr in traces:
        for site in tr.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["infer"].get("enumerate"):
                raise DgmPyroError(f"site '{site['name']}' is enumerated; log_evidence needs sampled or observed sites only")
            frames = {(f.name, f.dim) for f in site["cond_indep_stack"] if f.vectorized}
            nesting = max([nesting] + [-d for _, d in frames])
            shared = frames if shared is None else shared & frames
            num_sites += 1
    if not num_sites:
        raise DgmPyroError("the model has no sample sites; nothing to estimate")
    return sorted(shared or (), key=lambda nd: nd[1]), nesting


def site_log_prob(site: dict, keep_dims: set[int], nesting: int) -> torch.Tensor:
    """log q or log p of one site at scale 1 (mask applied), summed over every non-kept plate dim.

    Returns a tensor with ``nesting + 1`` dims (particles first), size 1 in summed dims.
    """
    lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    lp = scale_and_mask(lp, scale=1.0, mask=site["mask"])
    if not torch.is_tensor(lp):
        lp = torch.as_tensor(float(lp), device=site["value"].device)
    return reduce_to_batch(lp, keep_dims, nesting)


def reduce_to_batch(t: torch.Tensor, keep_dims: set[int], nesting: int) -> torch.Tensor:
    """Sum a per-site tensor (batch dims only) over every plate dim but the kept (batch) ones: ``nesting + 1``
    dims, particles first, size 1 in summed dims."""
    while t.dim() < nesting + 1:
        t = t.unsqueeze(0)
    for d in range(-nesting, 0):
        if d not in keep_dims and t.shape[d] != 1:
            t = t.sum(d, keepdim=True)
    return t


def sample_sites(tr: poutine.Trace) -> dict[str, dict]:
    return {n: s for n, s in tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}


def latent_sites(tr: poutine.Trace) -> set[str]:
    return {n for n, s in sample_sites(tr).items() if not s["is_observed"]}


def check_model_and_guide(model_tr: poutine.Trace, guide_tr: poutine.Trace, batch_plates: set[str]) -> None:
    """Refuse, with one line naming the sites, what importance sampling cannot estimate correctly: guide
    sites the model lacks (or observes), and sites in subsampled plates other than the batch plates (a
    subsampled batch plate is fine: each datapoint of the subsample gets its own estimate)."""
    model_sites, guide_latents = sample_sites(model_tr), latent_sites(guide_tr)
    missing = sorted(guide_latents - set(model_sites))
    if missing:
        raise DgmPyroError(f"guide site(s) {', '.join(map(repr, missing))} have no site of that name in the model "
                           f"(model latent sites: {', '.join(map(repr, sorted(latent_sites(model_tr)))) or 'none'}); the "
                           "guide must sample the model's latent sites under the same names")
    observed = sorted(n for n in guide_latents if model_sites[n]["is_observed"])
    if observed:
        raise DgmPyroError(f"guide site(s) {', '.join(map(repr, observed))} are observed in the model; a guide "
                           "samples latent sites only")
    sub = sorted({(n, f.name) for tr in (model_tr, guide_tr) for n, s in sample_sites(tr).items()
                  for f in s["cond_indep_stack"]
                  if f.full_size is not None and f.size != f.full_size and f.name not in batch_plates})
    if sub:
        names = ", ".join(f"'{n}' (plate '{p}')" for n, p in sub[:4]) + (", ..." if len(sub) > 4 else "")
        raise DgmPyroError(f"site(s) {names} are subsampled: per-datapoint evidence needs every likelihood term (a "
                           "subsample's scaled sum is unbiased for log p, not for p); use the full plate (for "
                           "GraphSSM, the dense edge likelihood)")


def log_importance_weights(model: Callable, guide: Callable, args: tuple, kwargs: dict, num: int, vectorize: bool,
                           keep_dims: set[int], nesting: int, detach_guide: bool = False
                           ) -> tuple[torch.Tensor, list[poutine.Trace]]:
    """(num, ...) log-weights log p(x, z|y) - log q(z|x,y), with size-1 dims where plates were summed, and the
    guide traces they came from (one vectorised trace, or ``num`` traces).

    Model latents without a guide site are drawn from their prior under replay: they are part of the
    proposal, and their prior terms cancel, so neither side counts them. With ``detach_guide`` log q is
    evaluated with the guide's distribution parameters detached (the gradient then reaches the guide only
    through the reparameterised draws, as doubly-reparameterised estimators need).
    """
    traces = []

    def once(m, g):
        guide_tr = poutine.trace(g).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(m, trace=guide_tr)).get_trace(*args, **kwargs)
        traces.append(guide_tr)
        proposed = latent_sites(guide_tr)
        lw = 0.0
        for name, site in sample_sites(model_tr).items():
            if site["is_observed"] or name in proposed:
                lw = lw + site_log_prob(site, keep_dims, nesting)
        for name in proposed:
            site = guide_tr.nodes[name]
            if detach_guide:
                site = {**site, "fn": detach(site["fn"])}
            lw = lw - site_log_prob(site, keep_dims, nesting)
        return lw

    if vectorize:
        plate = pyro.plate(_PARTICLE_PLATE, num, dim=-(nesting + 1))
        return once(plate(model), plate(guide)).expand(num, *([-1] * nesting)), traces
    return torch.cat([once(model, guide) for _ in range(num)], dim=0), traces


def batch_plates(model: Callable, guide: Callable, args: tuple, kwargs: dict,
                 warn: bool = False) -> tuple[list[tuple[str, int]], int, int]:
    """The batch plates (name, dim) of a model/guide pair (the plates every sample site shares, outermost
    first), its plate nesting and the number of datapoints, from one checked trace (see
    :func:`check_model_and_guide`). With ``warn``, model latents without a guide site are named in a
    warning: they are proposed from their prior, which is correct but can be a poor proposal (or a guide
    site under another name)."""
    with torch.no_grad():
        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    shared, nesting = _shared_plates([model_tr, guide_tr])
    check_model_and_guide(model_tr, guide_tr, {name for name, _ in shared})
    unguided = sorted(latent_sites(model_tr) - latent_sites(guide_tr))
    if warn and unguided:
        warnings.warn(f"model latent site(s) {', '.join(map(repr, unguided))} have no guide site: they are drawn from "
                      "their prior as part of the proposal (their prior terms cancel, so the estimate stays correct, "
                      "but it needs many particles when the prior is far from their posterior)", stacklevel=3)
    size = 1
    for name, _ in shared:
        size *= next(f.size for s in model_tr.nodes.values() if s["type"] == "sample" for f in s["cond_indep_stack"]
                     if f.name == name)
    return shared, nesting, size
