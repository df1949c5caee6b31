"""Importance-sampled evidence log p(x|y) per datapoint, for any Pyro model/guide pair (seed P1.7).

With K particles z_k ~ q(z|x,y) (the guide) and weights w_k = p(x, z_k|y) / q(z_k|x,y) (seed P1.3,
the "A" inside the expectation), the estimator

    log p(x|y) ~= log (1/K) sum_k w_k                                                     (P1.7)

is consistent, and in expectation a lower bound that tightens as K grows (Burda et al. 2016, IWAE);
the plain average (1/K) sum_k log w_k is the ELBO (P1.4) and the gap between the two estimates the
KL(q || p(z|x,y)) of seed P1.5. Each datapoint gets its own estimate: the batch plates are the plates
every sample site shares (as ``pyro.infer.RenyiELBO`` keeps per-plate bounds), so a user's model with
a plate of any name works, unlike ``pyro.infer.importance.vectorized_importance_weights``, which sums
the whole batch into one joint estimate.

The estimator always runs at scale 1: ``poutine.scale`` (KL annealing) and the scale of a subsampled
batch plate are ignored, and masks
(``poutine.mask``, ``obs_mask``, ``pyro.deterministic``) are honoured. A model latent that the guide does
not sample is drawn from its prior inside the proposal, so its prior term cancels from the weight (the
proposal is q(z|x) p(w|z)); a guide site that the model lacks, and a site in a subsampled plate that is
summed within a datapoint, are refused with a one-line error (a subsample's scaled sum is unbiased for
log p, not for p).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import pyro
import torch

from ..errors import DgmPyroError
from ..progress import Heartbeat
from .weights import (
    batch_plates,
    check_model_and_guide,
    latent_sites,
    log_importance_weights,
    reduce_to_batch,
    sample_sites,
    site_log_prob,
)

__all__ = ["log_evidence", "log_evidence_blocks", "resolve_method",
           "EvidenceResult", "KHAT_WARN", "METHODS", "log_importance_weights", "batch_plates",
           "check_model_and_guide", "site_log_prob", "reduce_to_batch", "sample_sites", "latent_sites", "psis_khat"]

log = logging.getLogger(__name__)

#: Pareto k-hat above which importance-sampling estimates are unreliable (Vehtari et al. 2024).
KHAT_WARN = 0.7
#: Fewest particles for which PSIS k-hat is estimated (below, k-hat is NaN).
MIN_PARTICLES_FOR_KHAT = 100
#: Estimators of :func:`log_evidence`.
METHODS = ("is", "adaptive", "ais", "auto")
#: Datapoints estimated at once by :func:`log_evidence_blocks` (each datapoint's estimate is its own).
BLOCK_SIZE = 1000
#: Elements of the largest (particles, datapoints, *x) tensor of one chunk of :func:`log_evidence_blocks`: 7e6
#: float32 (28 MB) stay under glibc's 32 MB ceiling for reusing freed heap memory; larger tensors are mapped afresh
#: on every chunk, which made a third of an MNIST evaluation's time system time (page faults).
MAX_CHUNK_ELEMENTS = 7_000_000


@dataclass
class EvidenceResult:
    """Per-datapoint importance-sampling results; every tensor has the batch shape of the shared plates.
    Apart from ``elbo``, the statistics describe the weights that make ``log_evidence`` (with
    ``method="adaptive"``, its last round).

    Attributes:
        log_evidence: log (1/K) sum_k w_k, the importance-sampled log p(x|y) (P1.7).
        stderr: delta-method standard error of ``log_evidence``: std(w) / (sqrt(K) mean(w)).
        elbo: (1/K) sum_k log w_k, the Monte Carlo ELBO (P1.4), a lower bound in expectation; always the
            guide's (with ``method="adaptive"`` from its round 0; with ``"ais"`` the mean AIS log-weight).
        elbo_stderr: std(log w) / sqrt(K).
        ess: effective sample size (sum w)^2 / sum w^2, between 1 and K.
        khat: PSIS Pareto shape of the weights (arviz); > 0.7 means the estimate is unreliable,
            -inf where the weights are constant (the guide is the exact posterior), NaN when
            K < 100 or ``diagnostics=False``.
        num_particles: K.
        plates: names of the batch plates kept, outermost first.
        log_weights: the (K, *batch) log-weights, when asked for with ``keep_log_weights=True``.
        method: the estimator that made ``log_evidence`` (``"auto"`` resolved to ``"adaptive"`` or ``"is"``).
    """

    log_evidence: torch.Tensor
    stderr: torch.Tensor
    elbo: torch.Tensor
    elbo_stderr: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    num_particles: int
    plates: tuple[str, ...]
    log_weights: Optional[torch.Tensor] = None
    method: str = "is"

    @classmethod
    def cat(cls, parts: Sequence["EvidenceResult"]) -> "EvidenceResult":
        """The results of consecutive blocks of datapoints (along the outermost batch plate) as one result."""
        first = parts[0]
        if any((p.num_particles, p.plates, p.method) != (first.num_particles, first.plates, first.method)
               for p in parts):
            raise ValueError("EvidenceResult.cat: the parts differ in particles, plates or method")
        fields = ("log_evidence", "stderr", "elbo", "elbo_stderr", "ess", "khat")
        kept = None if first.log_weights is None else torch.cat([p.log_weights for p in parts], 1)
        return cls(**{f: torch.cat([getattr(p, f) for p in parts], 0) for f in fields},
                   num_particles=first.num_particles, plates=first.plates, log_weights=kept, method=first.method)

    def summary(self) -> dict[str, Any]:
        """Averages over datapoints, as plain floats (non-finite values become ``None``)."""
        n = self.log_evidence.numel()

        def f(v: torch.Tensor | float) -> Optional[float]:
            v = float(v)
            return v if math.isfinite(v) else None

        finite_k = self.khat[torch.isfinite(self.khat)]
        has_k = not bool(torch.isnan(self.khat).all())
        return {
            "num_datapoints": n,
            "num_particles": self.num_particles,
            "log_evidence": f(self.log_evidence.mean()),
            "log_evidence_stderr": f(self.stderr.pow(2).sum().sqrt() / n),
            "elbo": f(self.elbo.mean()),
            "elbo_stderr": f(self.elbo_stderr.pow(2).sum().sqrt() / n),
            "ess_mean": f(self.ess.mean()),
            "ess_min": f(self.ess.min()),
            "khat_max": f(finite_k.max()) if finite_k.numel() else (None if not has_k else f(self.khat.max())),
            "khat_frac_above_0.5": f((self.khat > 0.5).double().mean()) if has_k else None,
            "khat_frac_above_0.7": f((self.khat > KHAT_WARN).double().mean()) if has_k else None,
        }


def psis_khat(log_w: torch.Tensor) -> torch.Tensor:
    """PSIS k-hat for each datapoint of (K, B) log-weights via ``arviz.psislw``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

        spread = log_w.max(0).values - log_w.min(0).values
        _, khat = az.psislw(log_w.T.double().numpy())
    khat = torch.as_tensor(khat, dtype=torch.float64).reshape(log_w.shape[1:])
    # Constant weights (the exact posterior as proposal, up to float rounding) have no tail at all.
    return torch.where(spread < 1e-4, torch.full_like(khat, -math.inf), khat)


def resolve_method(method: str, model: Callable, guide: Callable, *args, num_particles: int = 1000,
                   **kwargs) -> str:
    """The estimator ``method`` names: itself, or for ``"auto"`` ``"adaptive"`` where adaptive importance sampling
    applies (continuous latents, each with a guide site, ``num_particles`` >= 2) and ``"is"`` otherwise (with a
    log line that says why). Draws nothing: the caller's random state is unchanged."""
    if method != "auto":
        return method
    from .adaptive import adaptive_unsupported

    why_not = "K = 1" if num_particles < 2 else adaptive_unsupported(model, guide, *args, **kwargs)
    if why_not is not None:
        log.info("method auto: importance sampling with the guide (adaptive does not apply: %s)", why_not)
    return "is" if why_not is not None else "adaptive"


def log_evidence(model: Callable, guide: Callable, *args, num_particles: int = 1000,
                 chunk_size: Optional[int] = None, vectorize: bool = True, diagnostics: bool = True,
                 keep_log_weights: bool = False, warn: bool = True, progress: bool = False, method: str = "is",
                 num_steps: int = 100, hmc_steps: int = 5, step_size: float = 0.5, num_rounds: int = 3,
                 defensive: float = 0.2, **kwargs) -> EvidenceResult:
    """Importance-sampled per-datapoint log evidence with the guide as proposal (seed P1.7), adaptive
    importance sampling from the guide mixed with Gaussians fitted per datapoint (``method="adaptive"``,
    :mod:`dgm_pyro.infer.adaptive`), or annealed importance sampling from the guide to the posterior
    (``method="ais"``, :mod:`dgm_pyro.infer.ais`).

    Args:
        model, guide: a Pyro model and guide taking ``*args, **kwargs``. Every sample site of both must
            sit in the batch plate(s) (found automatically: the plates all sites share). Model latents the
            guide does not sample are proposed from their prior.
        num_particles: K, the number of importance samples per datapoint.
        chunk_size: particles drawn at once (default: about 1e5 / batch size), bounding memory so that
            K = 5000 fits; results do not depend on it beyond random draws.
        vectorize: draw a chunk of particles in one vectorised run (needs a model that broadcasts,
            as ``Trace_ELBO(vectorize_particles=True)`` does); ``False`` loops over particles.
        diagnostics: estimate the PSIS k-hat with arviz (needs K >= 100).
        keep_log_weights: keep the (K, *batch) log-weights in the result.
        warn: warn when any datapoint has k-hat > 0.7.
        progress: show a progress bar over particles (for a terminal); without it a line goes to the
            ``dgm_pyro.infer.evidence`` logger (INFO) every 30 s of a long run.
        method: ``"is"`` (importance sampling), ``"adaptive"`` (``num_rounds`` rounds of K particles after
            the guide's, from the mixture of the guide, share ``defensive``, and per-datapoint Gaussians fitted
            to the previous round's weighted draws; the last round's weights make the estimate and k-hat;
            continuous latents, each with a guide site; always vectorised; keeps every round's draws in
            memory), ``"ais"`` (annealed importance sampling with ``num_steps`` temperatures and HMC
            transitions of ``hmc_steps`` leapfrog steps of initial size ``step_size`` in the guide's scale;
            continuous latents, each with a guide site; always vectorised), or ``"auto"``: adaptive where it
            applies (continuous latents, each with a guide site, K >= 2), else importance sampling; the
            result's ``method`` says which.

    Returns:
        :class:`EvidenceResult` with per-datapoint ``log_evidence``, ``stderr``, ``elbo``, ``ess``, ``khat``.
    """
    if num_particles < 1:
        raise DgmPyroError(f"num_particles must be >= 1, got {num_particles}")
    if method not in METHODS:
        raise DgmPyroError(f"method must be one of {', '.join(map(repr, METHODS))}, got '{method}'")
    method = resolve_method(method, model, guide, *args, num_particles=num_particles, **kwargs)
    shared, nesting, numel = batch_plates(model, guide, args, kwargs, warn=warn)
    keep = {d for _, d in shared}
    with torch.no_grad():
        if chunk_size is None:
            chunk_size = max(1, 100_000 // numel)
        chunks = []
        guide_log_w = None  # the guide's own weights where the estimate uses another proposal (the ELBO)
        done = 0
        what = {"ais": "annealed importance sampling", "adaptive": "adaptive importance sampling"}.get(
            method, "importance sampling")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_particles, desc=what, unit="particle", leave=False)
        clock = Heartbeat(log, num_particles)  # without a bar: a log line every 30 s
        if method == "adaptive":
            from .adaptive import adaptive_log_weights

            def on_chunk(drawn: int, total: int) -> None:  # without a bar: a log line every 30 s
                if bar is None and drawn < total:
                    clock.beat(drawn / total * num_particles,
                               f"{what}: {drawn} of {total} draws (the guide's round and {num_rounds} adapted) "
                               f"for {numel} datapoint(s)")

            with pyro.validation_enabled(False):
                lw, lw_guide = adaptive_log_weights(model, guide, args, kwargs, num_particles, keep, nesting,
                                                    num_rounds=num_rounds, defensive=defensive,
                                                    chunk_size=chunk_size, on_chunk=on_chunk)
            chunks.append(lw.double())
            guide_log_w = lw_guide.double()
            if bar is not None:
                bar.update(num_particles)
        while method != "adaptive" and done < num_particles:
            k = min(chunk_size, num_particles - done)
            # the trace above ran with the caller's validation setting; argument checks on every
            # chunk would cost a third of the time (constraint checks over K x N x D tensors)
            with pyro.validation_enabled(False):
                if method == "ais":
                    from .ais import ais_log_weights

                    lw = ais_log_weights(model, guide, args, kwargs, k, keep, nesting, num_steps=num_steps,
                                         hmc_steps=hmc_steps, step_size=step_size)
                else:
                    try:
                        lw = log_importance_weights(model, guide, args, kwargs, k, vectorize, keep, nesting)[0]
                    except (RuntimeError, ValueError) as e:
                        if not vectorize:
                            raise
                        # the error's first line (Pyro appends the trace's shapes after it), else its type
                        lines = str(e).strip().splitlines()
                        first = lines[0][:200] if lines and not lines[0].startswith("Trace Shapes:") else type(e).__name__
                        raise DgmPyroError(f"the vectorised pass over particles failed ({first}); the model or guide "
                                           "may not broadcast over a leading particle dimension: pass "
                                           "vectorize=False") from e
                chunks.append(lw.double())
            done += k
            if bar is not None:
                bar.update(k)
            elif done < num_particles:
                clock.beat(done, f"{what}: {done} of {num_particles} particles for {numel} datapoint(s)")
        if bar is not None:
            bar.close()
        log_w = torch.cat(chunks, 0)
        # drop the size-1 dims of summed plates: (K, *batch) with batch ordered outermost plate first
        batch_shape = [log_w.shape[d] for d in range(-nesting, 0) if d in keep]
        log_w = log_w.reshape(num_particles, *batch_shape)
        guide_log_w = log_w if guide_log_w is None else guide_log_w.reshape(num_particles, *batch_shape)

    K = num_particles
    lse = torch.logsumexp(log_w, 0)
    log_ev = lse - math.log(K)
    w_norm = torch.exp(log_w - lse)
    ess = 1.0 / w_norm.pow(2).sum(0)
    w_rel = torch.exp(log_w - log_w.max(0).values)
    if K > 1:
        stderr = w_rel.std(0) / (math.sqrt(K) * w_rel.mean(0))
        elbo_stderr = guide_log_w.std(0) / math.sqrt(K)
    else:
        stderr = elbo_stderr = torch.full_like(log_ev, math.nan)
    flat = log_w.reshape(K, -1)
    if diagnostics and K >= MIN_PARTICLES_FOR_KHAT:
        khat = psis_khat(flat).reshape(log_ev.shape)
    else:
        khat = torch.full_like(log_ev, math.nan)
    if warn and bool((khat > KHAT_WARN).any()):
        n_bad = int((khat > KHAT_WARN).sum())
        warnings.warn(f"PSIS k-hat > {KHAT_WARN} for {n_bad} of {khat.numel()} datapoints: their importance-sampled "
                      "evidence is unreliable (the guide is a poor proposal); use more particles or a better guide",
                      RuntimeWarning, stacklevel=2)
    return EvidenceResult(log_evidence=log_ev, stderr=stderr, elbo=guide_log_w.mean(0), elbo_stderr=elbo_stderr, ess=ess,
                          khat=khat, num_particles=K, plates=tuple(n for n, _ in shared),
                          log_weights=log_w if keep_log_weights else None, method=method)


def log_evidence_blocks(model: Callable, guide: Callable, *data: Optional[torch.Tensor],
                        block_size: Optional[int] = None, max_elements: Optional[int] = None,
                        **kwargs: Any) -> EvidenceResult:
    """:func:`log_evidence` in bounded memory for many datapoints: over consecutive blocks of at most
    ``block_size`` rows (default :data:`BLOCK_SIZE`; fewer where one particle of them would pass the bound), with
    at most ``max_elements`` (default :data:`MAX_CHUNK_ELEMENTS`) elements in a (particles, rows, *x) tensor of one
    chunk (x = ``data[0]``): the particles drawn at once are log_evidence's default (1e5 / rows) or fewer. Each
    datapoint's estimate is its own, so the blocks' results are concatenated (:meth:`EvidenceResult.cat`); only
    the random draws depend on the blocks.

    Args:
        data: the model's positional arguments, each an (N, ...) tensor along its outermost batch plate, or None.
        kwargs: passed to :func:`log_evidence` (not ``chunk_size``).
    """
    block_size = BLOCK_SIZE if block_size is None else block_size
    max_elements = MAX_CHUNK_ELEMENTS if max_elements is None else max_elements
    x = data[0]
    if x is None or any(d is not None and d.shape[0] != x.shape[0] for d in data):
        raise DgmPyroError("log_evidence_blocks: every argument is an (N, ...) tensor of the same N (or None)")
    per_row = max(1, x[:1].numel())
    block_size = max(1, min(block_size, max_elements // per_row))  # one particle of a block within the bound
    parts = []
    for start in range(0, x.shape[0], block_size):
        block = [None if d is None else d[start:start + block_size] for d in data]
        rows = block[0].shape[0]
        chunk = max(1, min(100_000 // rows, max_elements // (rows * per_row)))
        parts.append(log_evidence(model, guide, *block, chunk_size=chunk, **kwargs))
    return EvidenceResult.cat(parts)
