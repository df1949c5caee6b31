"""A Gaussian Markov chain as one distribution: sampled step by step, scored in one batched call.

For a chain Z_1..Z_T started at a given Z_0 with Gaussian transitions

    Z_t | Z_{t-1} ~ Normal(loc_t, diag scale_t^2),   (loc_t, scale_t) = step(Z_{t-1}, c_t),

with c_t an optional per-step input (for example a guide's summary of the data up to t), the log-density of
a whole path is sum_t log Normal(Z_t; step(Z_{t-1}, c_t)). Given the path, the T terms are independent, so
:meth:`MarkovNormal.log_prob` computes all of them with one call of ``step`` on the (T, ...) stack of
inputs. Only drawing a path is sequential. This is what makes a latent state-space model's log-joint cost
one network call over T instead of T calls (seed P4.1; the GraphSSM's model and guide both use it).

Scheduled sampling (P4.5) is built in: with ``teacher_forcing`` = eps < 1, the step to Z_{t+1} is fed Z_t
itself with probability eps and otherwise the chain's own prediction Z^_t = loc_t + scale_t * noise_t
(a draw from the same transition as Z_t, with independent noise); the switches and the noise are drawn once
when the distribution is made, so the log-density of a given path is a fixed function. Scoring is then
sequential (the fed inputs form a chain of their own); at eps = 1 (the default) it is the plain chain.
"""

from __future__ import annotations

from typing import Callable, Optional

import pyro.distributions as dist
import torch
from torch.distributions import constraints

__all__ = ["MarkovNormal"]

Step = Callable[[torch.Tensor, Optional[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


class MarkovNormal(dist.TorchDistribution):
    """The path Z_{1:T} of a Gaussian Markov chain from ``init`` = Z_0 (seed P4.1), with event shape
    (T, *init.shape) and no batch dimensions.

    Args:
        init: Z_0, shape S (for example (N, d): one latent row per node).
        step: ``step(z_prev, c) -> (loc, scale)``, each of shape ``z_prev``'s; called with z_prev of shape
            S (or (..., S) when sampling with a sample shape) and c = ``inputs[t]``, and once with the whole
            stack (T, *S) of previous states and ``inputs`` to score a path, so it must broadcast over a
            leading time dimension.
        num_steps: T.
        inputs: optional per-step inputs (T, ...) passed to ``step``; None passes None.
        teacher_forcing: eps in [0, 1], see the module docstring.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, init: torch.Tensor, step: Step, num_steps: int, inputs: Optional[torch.Tensor] = None,
                 teacher_forcing: float = 1.0, validate_args: Optional[bool] = None):
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1; got {num_steps}")
        if inputs is not None and inputs.shape[0] != num_steps:
            raise ValueError(f"inputs need one entry per step ({num_steps}); got {inputs.shape[0]}")
        if not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing must be in [0, 1]; got {teacher_forcing}")
        self.init, self.step, self.num_steps, self.inputs = init, step, num_steps, inputs
        self.teacher_forcing = float(teacher_forcing)
        self._switch: Optional[list[bool]] = None
        self._noise: Optional[torch.Tensor] = None
        if self.teacher_forcing < 1.0:
            # feed Z_t (True) or the prediction Z^_t (False) to the step to Z_{t+1}, t = 1..T-1
            self._switch = [bool(u < self.teacher_forcing) for u in torch.rand(num_steps - 1).tolist()]
            self._noise = torch.randn((num_steps,) + init.shape, dtype=init.dtype, device=init.device)
        self._cache: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
        super().__init__(torch.Size(), torch.Size((num_steps,) + init.shape), validate_args=validate_args)

    @constraints.dependent_property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    def _unroll(self, value: Optional[torch.Tensor], shape: torch.Size) -> tuple[torch.Tensor, ...]:
        """Walk the chain: draw it (``value`` None) or follow ``value``; return the path and the (loc, scale)
        of every step, each (..., T, *S)."""
        dim = -1 - self.init.dim()
        # unbind, not x[t]: the gradient of each slice would be a zero tensor the size of x (quadratic in T)
        inputs = [None] * self.num_steps if self.inputs is None else self.inputs.unbind(0)
        given = None if value is None else value.unbind(dim)
        fed = self.init.expand(shape + self.init.shape)
        zs, locs, scales = [], [], []
        for t in range(self.num_steps):
            loc, scale = self.step(fed, inputs[t])
            z = loc + scale * torch.randn_like(loc) if given is None else given[t]
            zs.append(z)
            locs.append(loc)
            scales.append(scale)
            fed = z
            if self._switch is not None and t < self.num_steps - 1 and not self._switch[t]:
                fed = loc + scale * self._noise[t]  # the chain's own prediction Z^_t
        return torch.stack(zs, dim), torch.stack(locs, dim), torch.stack(scales, dim)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        value, loc, scale = self._unroll(None, torch.Size(sample_shape))
        self._cache = (value, loc, scale)  # scored without a second pass by log_prob(value)
        return value

    def transitions(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loc and scale (..., T, *S) of every step's transition along the path ``value`` (..., T, *S):
        one batched call of ``step`` on Z_{0:T-1} (sequential only under scheduled sampling)."""
        if self._cache is not None and value is self._cache[0]:
            return self._cache[1], self._cache[2]
        if self._switch is not None:
            return self._unroll(value, value.shape[:-len(self.event_shape)])[1:]
        dim = -1 - self.init.dim()
        head = self.init.expand(value.shape[:dim] + (1,) + self.init.shape)
        return self.step(torch.cat([head, value.narrow(dim, 0, self.num_steps - 1)], dim), self.inputs)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """sum_t log Normal(Z_t; loc_t, scale_t), shape value.shape[:-len(event_shape)]."""
        loc, scale = self.transitions(value)
        return dist.Normal(loc, scale).log_prob(value).flatten(-len(self.event_shape)).sum(-1)
