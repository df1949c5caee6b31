"""The exact Bernoulli likelihood of every pair of every snapshot (seed P4.2) without T x N^2 tensors.

With edge logits l_{t,uv} = <g_{t,u}, h_{t,v}> + b + m_{t,uv} + phi pi_{t,uv} (the GraphSSM's factors, bias, pair
memory at the K pairs that ever had an edge and, optionally, a dense proximity feature), the log-likelihood of
snapshots A_1..A_T is

    sum_t sum_{pairs} [A_{t,uv} l_{t,uv} - softplus(l_{t,uv})]
        = sum_{edges (t, u, v)} l_{t,uv}  -  sum_t sum_{pairs} softplus(l_{t,uv}),

the first sum over the E observed edges only. The second is computed a few snapshots at a time by
:class:`_SoftplusSum`, which computes each block's gradient (d/dl = sigmoid(l)) while it holds the block instead of
keeping the logits: a training step then allocates blocks of a few MB instead of several (T, N^2) tensors, which at
N = 1000 and T = 107 (directed) are 430 MB each and were faulted in page by page at every step. Undirected
graphs of at least 4 x :data:`TRIANGLE_ROWS` nodes compute only the pairs u < v, in bands of rows
(:class:`_Triangle`).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
from pyro.distributions import Bernoulli, TorchDistribution
from torch.distributions import constraints
from torch.nn.functional import softplus

__all__ = ["DenseGraphBernoulli", "BLOCK_BYTES", "TRIANGLE_ROWS"]

#: the size of a block of snapshots' logits in :class:`_SoftplusSum` (at least one snapshot): small enough that
#: a freed block is reused by the next instead of returned to the system, and that a block's passes find it in
#: the cache (at N = 1000, directed, T = 107: 0.44 s per forward and backward with 4 MB blocks, 0.55 s with 16 MB)
BLOCK_BYTES = 4 << 20

#: undirected graphs of at least 4 x TRIANGLE_ROWS nodes sum the pairs u < v in 4 to 8 bands of rows
#: (:class:`_Triangle`) of at least this many: at N = 1000 (with a pair memory), the log-probability and its
#: gradients took 2.2 ms per snapshot with 7 bands against 3.5 ms for the whole N x N block with its lower triangle
#: zeroed (a GraphSSM step of a dynamic SBM: 1.07x faster at N = 1000, 1.11x at N = 600). Smaller graphs are
#: cheaper a few whole snapshots at a time (2 bands: 0.94x at N = 300).
TRIANGLE_ROWS = 128


def _block_logits(g: torch.Tensor, h: torch.Tensor, memory: Optional[torch.Tensor], memory_keys: Optional[torch.Tensor],
                  proximity: Optional[torch.Tensor], weight: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The logits (B, N, N) of a block of B snapshots from factors with the bias folded in (g = [g, 1], h = [h, b]),
    memory (B, K) at ``memory_keys`` and proximity (B, P) at the pair ``keys`` (flat indices u N + v)."""
    out = torch.bmm(g, h.transpose(-1, -2))
    flat = out.view(out.shape[0], -1)
    if memory is not None:
        flat.index_add_(1, memory_keys, memory)
    if proximity is not None:
        flat.index_add_(1, keys, proximity * weight)
    return out


class _SoftplusSum(torch.autograd.Function):
    """sum_t sum_{(u, v) in mask} softplus(l_{t,uv}), block by block. The bias is the last column of ``h`` (``g``'s
    last column is 1), so one batched product gives the logits and the bias's gradient (the sum of that column of
    dh). When an input needs a gradient, the forward computes it as well, from the block it already holds
    (d/dl = sigmoid(l)), and the backward only scales it: no block is computed twice."""

    @staticmethod
    def forward(ctx, g, h, memory, proximity, weight, memory_keys, keys, mask, block,  # type: ignore[override]
                triangle=None):
        need = ctx.needs_input_grad
        grads = need[0] or need[1] or need[2] or need[4]
        if triangle is not None:
            total, dg, dh, dmemory, dweight = triangle.sum(g, h, memory, proximity, weight, grads, need[0], need[2])
            ctx.save_for_backward(dg, dh, dmemory, dweight)
            return total
        dg = torch.empty_like(g) if need[0] else None
        dh = torch.empty_like(h) if grads else None
        dmemory = torch.empty_like(memory) if memory is not None and need[2] else None
        dweight = torch.zeros_like(weight)
        total = g.new_zeros(())
        work = None
        for s in range(0, g.shape[0], block):
            sl = slice(s, s + block)
            logits = partial(_block_logits, g[sl], h[sl], None if memory is None else memory[sl], memory_keys,
                             None if proximity is None else proximity[sl], weight, keys)
            first = logits()
            if work is None or work.shape != first.shape:
                work = torch.empty_like(first)
            value, d = _softplus_sum_(first, mask, work, grads, logits)
            total += value
            if d is None:
                continue
            if dg is not None:
                torch.bmm(d, h[sl], out=dg[sl])
            dh[sl] = torch.bmm(g[sl].transpose(-1, -2), d).transpose(-1, -2)  # (g^T d)^T: 2.5x d^T g's speed
            flat = d.view(d.shape[0], -1)
            if dmemory is not None:
                dmemory[sl] = flat.index_select(1, memory_keys)
            if proximity is not None:
                dweight += (flat.index_select(1, keys) * proximity[sl]).sum()
        ctx.save_for_backward(dg, dh, dmemory, dweight)
        return total

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        dg, dh, dmemory, dweight = ctx.saved_tensors
        scaled = [None if x is None else x * grad for x in (dg, dh, dmemory, dweight)]
        return scaled[0], scaled[1], scaled[2], None, scaled[3], None, None, None, None, None


class _Triangle:
    """The pairs u < v (undirected) of an N x N block, a band of rows at a time (rows r0..r1 against columns
    r0..N-1): about (R + 1) / 2R of the N^2 logits for R bands, each band small enough to stay in cache.

    The memory and proximity columns of a band are a contiguous range of their ascending keys; ``plan`` holds,
    per band, that range and the keys' flat positions in the band, (u - r0) (N - r0) + (v - r0).
    """

    def __init__(self, n: int, bands: int, memory_keys: Optional[torch.Tensor], keys: Optional[torch.Tensor]):
        self.n = n
        rows = -(-n // bands)
        self.plan = []
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            self.plan.append((r0, r1, self._columns(memory_keys, r0, r1), self._columns(keys, r0, r1)))

    def _columns(self, keys: Optional[torch.Tensor], r0: int, r1: int) -> Optional[tuple[int, int, torch.Tensor]]:
        if keys is None:
            return None
        lo, hi = (int(i) for i in torch.searchsorted(keys, torch.tensor([r0 * self.n, r1 * self.n],
                                                                         device=keys.device)))
        k = keys[lo:hi]
        return lo, hi, (k // self.n - r0) * (self.n - r0) + (k % self.n - r0)

    def sum(self, g: torch.Tensor, h: torch.Tensor, memory: Optional[torch.Tensor],
            proximity: Optional[torch.Tensor], weight: torch.Tensor, grads: bool, need_g: bool, need_memory: bool
            ) -> tuple:
        """The softplus sum and, with ``grads``, its gradients (dg, dh, dmemory, dweight) (None where not
        needed), as :class:`_SoftplusSum` returns them."""
        dg = torch.empty_like(g) if need_g else None
        dh = torch.zeros_like(h) if grads else None
        dmemory = torch.zeros_like(memory) if memory is not None and need_memory else None
        dweight = torch.zeros_like(weight)
        total = g.new_zeros(())
        upper = torch.tensor(-3)
        for t in range(g.shape[0]):
            for r0, r1, mem, prox in self.plan:  # a band is a block of one snapshot, its keys at band positions
                logits = partial(_block_logits, g[t:t + 1, r0:r1], h[t:t + 1, r0:],
                                 None if memory is None else memory[t:t + 1, mem[0]:mem[1]], mem and mem[2],
                                 None if proximity is None else proximity[t:t + 1, prox[0]:prox[1]], weight,
                                 prox and prox[2])
                first = logits()
                value, d = _softplus_sum_(first, upper, torch.empty_like(first), grads, logits)
                total += value
                if d is None:
                    continue
                d = d[0]
                if dg is not None:
                    dg[t, r0:r1] = d @ h[t, r0:]
                dh[t, r0:] += d.T @ g[t, r0:r1]
                flat = d.view(-1)
                if dmemory is not None:
                    dmemory[t, mem[0]:mem[1]] = flat.index_select(0, mem[2])
                if proximity is not None:
                    dweight += (flat.index_select(0, prox[2]) * proximity[t, prox[0]:prox[1]]).sum()
        return total, dg, dh, dmemory, dweight


def _softplus_sum_(logits: torch.Tensor, mask: torch.Tensor, work: torch.Tensor, sigmoid: bool,
                   recompute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The masked sum of softplus(``logits``) (B, N, N) and, with ``sigmoid``, the masked sigmoid(l), both from
    e = exp(l): softplus(l) = log(u) and sigmoid(l) = e / u with u = 1 + e (``work``). Four cheap passes (exp, add,
    divide, log; 0.6x the time of log1p(exp(l)) then sigmoid(l) at 10^6 pairs); ``logits`` is overwritten.

    log(1 + e) rounds 1 + e to float first: each term is off by at most half a unit in the last place of 1,
    2^-24 = 6e-8 nats (at most 6.4 nats for 10^8 pairs; unbiased except where e < 2^-24, l < -16.6, whose terms
    it drops). That is the size of float32's own summation error over that many terms.

    The logits are not checked first: only a logit above log(float max) (88.7 in float32) makes e infinite, so
    the sum not finite (or e / u not a number), and then the block is computed again with ``softplus`` and
    ``sigmoid`` from logits recomputed by ``recompute``."""
    e = logits.exp_()
    u = torch.add(e, 1.0, out=work)
    d = e.div_(u) if sigmoid else None
    value = _masked(u.log_(), mask).sum()
    if not bool(torch.isfinite(value)):
        logits = recompute()
        value = _masked(softplus(logits), mask).sum()
        d = logits.sigmoid_() if sigmoid else None
    return value, None if d is None else _masked(d, mask)


def _masked(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``d`` (B, N, N) times the pair mask, in place: the diagonal zeroed when the mask is every ordered pair, the
    lower triangle when it is the pairs u < v (``mask`` 0-dimensional, -1 and -2), the lower triangle of the
    leading square of a band of rows (-3, :class:`_Triangle`), else the product with the (N, N) mask."""
    if mask.dim() == 0 and int(mask) == -1:
        d.diagonal(dim1=-2, dim2=-1).zero_()
        return d
    if mask.dim() == 0 and int(mask) == -3:  # a band of rows r0.. against columns r0..: the pairs u < v
        d[..., :d.shape[-2]].triu_(1)
        return d
    if mask.dim() == 0:
        return d.triu_(1)
    return d.mul_(mask)


class DenseGraphBernoulli(TorchDistribution):
    """Independent Bernoulli edges of T snapshots over the P pairs with keys ``keys`` (u N + v, ascending: u < v
    undirected, u != v directed), value shape (T, P) (event shape; no batch dimensions), with logits

        l_{t,p} = <g_{t,u}, h_{t,v}> + bias + memory_{t,k} [at the pairs ``memory_keys``] + weight proximity_{t,p}.

    Args:
        g, h: the edge factors (T, N, k) (:meth:`GraphSSM.edge_factors`).
        bias: the scalar edge bias.
        keys: (P,) the pairs' keys, ascending.
        num_nodes: N.
        memory: (T, K) the pair-memory term of the K pairs ``memory_keys`` (ascending; every observed edge's pair
            among them), or None.
        proximity, weight: (T, P) a feature of every pair and its scalar weight, or None.
        observed: the edge indices (2, E_t) of the T snapshots behind ``indicator``, the (T, P) 0/1 tensor the
            model observes: ``log_prob(indicator)`` (that very tensor) is computed from the edges and the blocked
            softplus sum (:class:`_SoftplusSum`) without (T, N^2) tensors; any other value is scored from the full
            logits (:attr:`logits`), the same number up to float rounding.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.boolean, 2)
    has_rsample = False

    def __init__(self, g: torch.Tensor, h: torch.Tensor, bias: torch.Tensor, keys: torch.Tensor, num_nodes: int,
                 memory: Optional[torch.Tensor] = None, memory_keys: Optional[torch.Tensor] = None,
                 proximity: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None,
                 observed: Optional[list[torch.Tensor]] = None, indicator: Optional[torch.Tensor] = None,
                 validate_args: Optional[bool] = None):
        if (memory is None) != (memory_keys is None) or (proximity is None) != (weight is None):
            raise ValueError("memory needs memory_keys and proximity needs weight")
        if (observed is None) != (indicator is None):
            raise ValueError("observed edges and their indicator come together")
        self.g, self.h, self.bias, self.keys, self.num_nodes = g, h, bias, keys, num_nodes
        self.memory, self.memory_keys = (None, None) if memory is None or not memory.numel() else (memory,
                                                                                                     memory_keys)
        self.proximity = proximity
        self.weight = weight if weight is not None else bias.new_zeros(())
        self.observed, self.indicator = observed, indicator
        super().__init__(torch.Size(), torch.Size((g.shape[0], keys.shape[0])), validate_args=validate_args)

    @property
    def logits(self) -> torch.Tensor:
        """The full logits (T, P)."""
        logits = (self.g @ self.h.transpose(-1, -2)).flatten(-2).index_select(-1, self.keys) + self.bias
        if self.memory is not None:
            # the memory term is zero for pairs that never had an edge: add it at the K columns that did
            logits = logits.index_add(-1, torch.searchsorted(self.keys, self.memory_keys), self.memory)
        if self.proximity is not None:
            logits = logits + self.weight * self.proximity
        return logits

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return Bernoulli(logits=self.logits).sample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self.indicator is None or value is not self.indicator:
            return Bernoulli(logits=self.logits, validate_args=False).log_prob(value).sum((-2, -1))
        return self._edge_logit_sum() - self._softplus_sum()

    def _edge_logit_sum(self) -> torch.Tensor:
        """sum of l_{t,uv} over the observed edges."""
        n = self.num_nodes
        time = torch.cat([torch.full_like(e[0], t) for t, e in enumerate(self.observed)])
        src, dst = torch.cat([e[0] for e in self.observed]), torch.cat([e[1] for e in self.observed])
        total = (self.g[time, src] * self.h[time, dst]).sum() + self.bias * time.shape[0]
        key = src * n + dst
        if self.memory is not None:
            total = total + self.memory[time, torch.searchsorted(self.memory_keys, key)].sum()
        if self.proximity is not None:
            total = total + self.weight * self.proximity[time, torch.searchsorted(self.keys, key)].sum()
        return total

    def _softplus_sum(self) -> torch.Tensor:
        n = self.num_nodes
        p = self.keys.shape[0]
        if p == n * (n - 1):  # every ordered pair u != v (the keys are distinct and off the diagonal)
            mask = torch.tensor(-1)
        elif p == n * (n - 1) // 2 and torch.equal(self.keys, _upper_keys(n, self.keys.device)):
            mask = torch.tensor(-2)
        else:
            mask = torch.zeros(n * n, device=self.g.device, dtype=self.g.dtype)
            mask[self.keys] = 1.0
            mask = mask.view(n, n)
        block = max(1, BLOCK_BYTES // max(1, 4 * n * n))
        bands = min(8, n // TRIANGLE_ROWS)
        triangle = None
        if bands >= 4 and mask.dim() == 0 and int(mask) == -2:
            triangle = _Triangle(n, bands, self.memory_keys, None if self.proximity is None else self.keys)
        ones = self.g.new_ones(*self.g.shape[:-1], 1)
        g = torch.cat([self.g, ones], -1)
        h = torch.cat([self.h, ones * self.bias], -1)
        return _SoftplusSum.apply(g, h, self.memory, self.proximity, self.weight, self.memory_keys, self.keys,
                                  mask, block, triangle)


def _upper_keys(n: int, device: torch.device) -> torch.Tensor:
    """The keys u N + v of the pairs u < v, ascending."""
    u, v = torch.triu_indices(n, n, offset=1, device=device)
    return u * n + v
