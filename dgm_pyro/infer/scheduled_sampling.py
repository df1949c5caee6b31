"""Scheduled sampling (seed P4.5; Bengio et al. 2015): the teacher-forcing probability eps_i per training step.

At training step i the transition p(Z_{t+1} | Z~_t) of a state-space model is fed

    Z~_t = Z_t ~ q(Z_t | X_{1:t})            with probability eps_i   (teacher forcing)
    Z~_t = Z^_t ~ p(Z_t | Z~_{t-1})          otherwise                (its own prediction)

and eps_i decays from 1 towards 0, so the transition learns to correct the drift it meets when it
forecasts from its own samples. Schedules here are :class:`~dgm_pyro.infer.Schedule` objects (step -> eps).
"""

from __future__ import annotations

import math

from ..errors import DgmPyroError
from .annealing import Constant, Linear, Schedule

__all__ = ["Exponential", "InverseSigmoid", "parse_teacher_forcing"]


class Exponential(Schedule):
    """eps_i = max(rate^i, floor) with 0 < rate < 1 (Bengio et al.'s exponential decay)."""

    def __init__(self, rate: float, floor: float = 0.0):
        if not 0 < rate < 1 or not 0 <= floor <= 1:
            raise DgmPyroError(f"Exponential: need 0 < rate < 1 and 0 <= floor <= 1, got {rate}, {floor}")
        self.rate, self.floor = float(rate), float(floor)

    def __call__(self, step: int) -> float:
        return max(self.rate**step, self.floor)

    @property
    def settled_step(self) -> int:
        return 0 if self.floor >= 1 else math.ceil(math.log(max(self.floor, 1e-3)) / math.log(self.rate))

    def __repr__(self) -> str:
        return f"Exponential(rate={self.rate:g}, floor={self.floor:g})"


class InverseSigmoid(Schedule):
    """eps_i = k / (k + exp(i / k)) with k >= 1 (Bengio et al.'s inverse-sigmoid decay)."""

    def __init__(self, k: float):
        if not k >= 1:
            raise DgmPyroError(f"InverseSigmoid: k must be >= 1, got {k}")
        self.k = float(k)

    def __call__(self, step: int) -> float:
        return self.k / (self.k + math.exp(min(step / self.k, 700.0)))

    @property
    def settled_step(self) -> int:
        return math.ceil(self.k * math.log(self.k * 999))  # eps below 1e-3

    def __repr__(self) -> str:
        return f"InverseSigmoid(k={self.k:g})"


def parse_teacher_forcing(spec: str) -> Schedule:
    """``none`` (always teacher forcing, eps = 1), ``linear:STEPS[:END]`` (1 to END, default 0, over STEPS),
    ``exponential:RATE[:FLOOR]``, ``inverse-sigmoid:K``."""
    name, _, arg = spec.partition(":")
    usage = "none, linear:STEPS[:END], exponential:RATE[:FLOOR] or inverse-sigmoid:K"
    try:
        if name == "none" and not arg:
            return Constant(1.0)
        if name == "linear":
            steps_s, _, end_s = arg.partition(":")
            steps, end = float(steps_s), float(end_s) if end_s else 0.0
            if steps != int(steps) or not 0 <= end <= 1:
                raise ValueError(arg)
            return Linear(start=1.0, end=end, steps=int(steps))
        if name == "exponential":
            rate_s, _, floor_s = arg.partition(":")
            return Exponential(float(rate_s), float(floor_s) if floor_s else 0.0)
        if name == "inverse-sigmoid":
            return InverseSigmoid(float(arg))
    except ValueError:
        raise DgmPyroError(f"bad scheduled-sampling schedule {spec!r}; use {usage}") from None
    raise DgmPyroError(f"unknown scheduled-sampling schedule {spec!r}; use {usage}")
