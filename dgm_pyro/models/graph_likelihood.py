"""The exact Bernoulli likelihood of every pair of every snapshot (seed P4.2) without T x N^2 tensors.

With edge logits l_{t,uv} = <g_{t,u}, h_{t,v}> + b + m_{t,uv} + phi pi_{t,uv} (the GraphSSM's factors, bias, pair
memory at the K pairs that ever had an edge and, optionally, a dense proximity feature), the log-likelihood of
snapshots A_1..A_T is

    sum_t sum_{pairs} [A_{t,uv} l_{t,uv} - softplus(l_{t,uv})]
        = sum_{edges (t, u, v)} l_{t,uv}  -  sum_t sum_{pairs} softplus(l_{t,uv}),

the first sum over the E observed edges only. The second is computed a few snapshots at a time by
:class:`_SoftplusSum`, whose backward recomputes each block's logits (d/dl = sigmoid(l)) instead of keeping them:
a training step then allocates blocks of a few MB instead of several (T, N^2) tensors, which at N = 1000 and
T = 107 (directed) are 430 MB each and were faulted in page by page at every step.
"""

from __future__ import annotations

from typing import Optional

import torch
from pyro.distributions import Bernoulli, TorchDistribution
from torch.distributions import constraints
from torch.nn.functional import softplus

__all__ = ["DenseGraphBernoulli", "BLOCK_BYTES"]

#: the size of a block of snapshots' logits in :class:`_SoftplusSum` (below glibc's largest mmap threshold, so
#: that a freed block is reused by the next instead of returned to the system)
BLOCK_BYTES = 16 << 20


def _block_logits(g: torch.Tensor, h: torch.Tensor, bias: torch.Tensor, memory: Optional[torch.Tensor],
                  memory_keys: Optional[torch.Tensor], proximity: Optional[torch.Tensor], weight: torch.Tensor,
                  keys: torch.Tensor) -> torch.Tensor:
    """The logits (B, N, N) of a block of B snapshots (memory (B, K) at ``memory_keys``, proximity (B, P) at the pair
    ``keys``, both flat indices u N + v)."""
    out = torch.bmm(g, h.transpose(-1, -2)).add_(bias)
    flat = out.view(out.shape[0], -1)
    if memory is not None:
        flat.index_add_(1, memory_keys, memory)
    if proximity is not None:
        flat.index_add_(1, keys, proximity * weight)
    return out


class _SoftplusSum(torch.autograd.Function):
    """sum_t sum_{(u, v) in mask} softplus(l_{t,uv}), block by block; the backward recomputes each block."""

    @staticmethod
    def forward(ctx, g, h, bias, memory, proximity, weight, memory_keys, keys, mask, block):  # type: ignore[override]
        ctx.save_for_backward(g, h, bias, memory, proximity, weight, memory_keys, keys, mask)
        ctx.block = block
        total = g.new_zeros(())
        for s in range(0, g.shape[0], block):
            sl = slice(s, s + block)
            logits = _block_logits(g[sl], h[sl], bias, None if memory is None else memory[sl], memory_keys,
                                   None if proximity is None else proximity[sl], weight, keys)
            total += softplus(logits).mul_(mask).sum()
        return total

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        g, h, bias, memory, proximity, weight, memory_keys, keys, mask = ctx.saved_tensors
        need = ctx.needs_input_grad
        dg = torch.zeros_like(g) if need[0] else None
        dh = torch.zeros_like(h) if need[1] else None
        dbias = torch.zeros_like(bias)
        dmemory = torch.zeros_like(memory) if memory is not None and need[3] else None
        dweight = torch.zeros_like(weight)
        for s in range(0, g.shape[0], ctx.block):
            sl = slice(s, s + ctx.block)
            with torch.no_grad():
                d = _block_logits(g[sl], h[sl], bias, None if memory is None else memory[sl], memory_keys,
                                  None if proximity is None else proximity[sl], weight, keys)
                d = d.sigmoid_().mul_(mask).mul_(grad)  # d total / d logits
                if dg is not None:
                    dg[sl] = torch.bmm(d, h[sl])
                if dh is not None:
                    dh[sl] = torch.bmm(d.transpose(-1, -2), g[sl])
                dbias += d.sum()
                flat = d.view(d.shape[0], -1)
                if dmemory is not None:
                    dmemory[sl] = flat.index_select(1, memory_keys)
                if proximity is not None:
                    dweight += (flat.index_select(1, keys) * proximity[sl]).sum()
        return dg, dh, dbias, dmemory, None, dweight, None, None, None, None


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
        mask = torch.zeros(n * n, device=self.g.device, dtype=self.g.dtype)
        mask[self.keys] = 1.0
        block = max(1, BLOCK_BYTES // max(1, 4 * n * n))
        return _SoftplusSum.apply(self.g, self.h, self.bias, self.memory, self.proximity, self.weight,
                                  self.memory_keys, self.keys, mask.view(n, n), block)
