"""KL annealing: schedules for beta and a handler that scales the latent sample sites only.

Every objective in Pyro's family is a sum over sample sites of scaled log-densities (``Trace_ELBO``,
``TraceMeanField_ELBO``) or scaled site divergences (:class:`~dgm_pyro.infer.CSELBO`,
:class:`~dgm_pyro.infer.FreeBitsELBO`). Multiplying the scale of every *latent* site, in the model and
in the guide, by beta turns each of them into

    E_q[log p(x|z)] - beta * R(q(z|x) || p(z))                                    (seed P3.5)

without touching the observation term. :func:`scale_latents` does this as a Pyro effect handler; use it
as a context manager around ``svi.step`` (the model and the guide both run inside it) or wrap a model
and a guide. Unlike ``poutine.scale`` it accepts beta = 0 (the latent terms vanish) and leaves
observed sites and subsample sites alone. ``beta`` constant gives the beta-VAE (Higgins et al. 2017).

Schedules map an optimisation step t = 0, 1, 2, ... to beta; :class:`Annealing` keeps the step count,
so a training loop can save it (``state_dict``) and restore it on resume. Evidence and evaluation
(:func:`~dgm_pyro.infer.log_evidence`) ignore every scale, so annealing never leaks into them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Optional

from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ..errors import DgmPyroError

__all__ = ["Schedule", "Constant", "Linear", "Cyclical", "Sigmoid", "LatentScaleMessenger", "scale_latents",
           "Annealing", "parse_schedule"]


class Schedule(ABC):
    """beta as a function of the optimisation step t = 0, 1, 2, ..."""

    @abstractmethod
    def __call__(self, step: int) -> float: ...

    @property
    @abstractmethod
    def settled_step(self) -> int:
        """First step from which beta keeps its final value (training loops delay early stopping until then)."""


def _check_endpoints(name: str, start: float, end: float) -> None:
    if not all(math.isfinite(v) and v >= 0 for v in (start, end)):
        raise DgmPyroError(f"{name}: start and end must be finite and >= 0, got {start}, {end}")


class Constant(Schedule):
    """beta(t) = value (``Constant(0.5)`` is a beta-VAE with beta = 0.5)."""

    def __init__(self, value: float = 1.0):
        if not (math.isfinite(value) and value >= 0):
            raise DgmPyroError(f"Constant: beta must be finite and >= 0, got {value}")
        self.value = float(value)

    def __call__(self, step: int) -> float:
        return self.value

    @property
    def settled_step(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"Constant({self.value:g})"


class Linear(Schedule):
    """beta(t) = start + (end - start) * min(t / steps, 1) (Bowman et al. 2016 use a warm-up of this kind)."""

    def __init__(self, start: float = 0.0, end: float = 1.0, steps: int = 1000):
        if steps < 1:
            raise DgmPyroError(f"Linear: steps must be >= 1, got {steps}")
        _check_endpoints("Linear", start, end)
        self.start, self.end, self.steps = float(start), float(end), int(steps)

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * min(step / self.steps, 1.0)

    @property
    def settled_step(self) -> int:
        return self.steps

    def __repr__(self) -> str:
        return f"Linear(start={self.start:g}, end={self.end:g}, steps={self.steps})"


class Cyclical(Schedule):
    """Cyclical annealing of Fu et al. 2019 (NAACL), eq. (6), with a linear ramp.

    With T = ``total_steps``, M = ``cycles`` and R = ``ratio``, for their iteration i = t + 1::

        tau = mod(i - 1, ceil(T / M)) / (T / M);   beta = tau / R if tau <= R else 1

    so each of the M cycles rises linearly from 0 to 1 over its first R share and stays at 1 after.
    """

    def __init__(self, total_steps: int, cycles: int = 4, ratio: float = 0.5):
        if total_steps < 1 or cycles < 1 or cycles > total_steps:
            raise DgmPyroError(f"Cyclical: need 1 <= cycles <= total_steps, got cycles={cycles}, "
                               f"total_steps={total_steps}")
        if not 0 < ratio <= 1:
            raise DgmPyroError(f"Cyclical: ratio must be in (0, 1], got {ratio}")
        self.total_steps, self.cycles, self.ratio = int(total_steps), int(cycles), float(ratio)

    def __call__(self, step: int) -> float:
        period = self.total_steps / self.cycles
        tau = (step % math.ceil(period)) / period
        return tau / self.ratio if tau <= self.ratio else 1.0

    @property
    def settled_step(self) -> int:
        # beta reaches 1 in the last cycle and stays there
        return (self.cycles - 1) * math.ceil(self.total_steps / self.cycles) + math.ceil(
            self.ratio * self.total_steps / self.cycles)

    def __repr__(self) -> str:
        return f"Cyclical(total_steps={self.total_steps}, cycles={self.cycles}, ratio={self.ratio:g})"


class Sigmoid(Schedule):
    """Logistic warm-up from ``start`` to ``end`` over ``steps``, rescaled to hit both ends exactly::

        s(u) = 1 / (1 + exp(-k (u - 1/2))),  u = min(t / steps, 1)
        beta = start + (end - start) (s(u) - s(0)) / (s(1) - s(0))
    """

    def __init__(self, steps: int = 1000, steepness: float = 10.0, start: float = 0.0, end: float = 1.0):
        if steps < 1 or not steepness > 0:
            raise DgmPyroError(f"Sigmoid: need steps >= 1 and steepness > 0, got {steps}, {steepness}")
        _check_endpoints("Sigmoid", start, end)
        self.steps, self.steepness, self.start, self.end = int(steps), float(steepness), float(start), float(end)

    def __call__(self, step: int) -> float:
        def s(u: float) -> float:
            return 1.0 / (1.0 + math.exp(-self.steepness * (u - 0.5)))

        u = min(step / self.steps, 1.0)
        return self.start + (self.end - self.start) * (s(u) - s(0.0)) / (s(1.0) - s(0.0))

    @property
    def settled_step(self) -> int:
        return self.steps

    def __repr__(self) -> str:
        return f"Sigmoid(steps={self.steps}, steepness={self.steepness:g}, start={self.start:g}, end={self.end:g})"


class LatentScaleMessenger(Messenger):
    """Multiplies the scale of every latent (unobserved, non-subsample) sample site by ``scale``."""

    def __init__(self, scale: float):
        super().__init__()
        scale = float(scale)
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"latent scale must be finite and >= 0, got {scale}")
        self.scale = scale

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg):
            msg["scale"] = self.scale * msg["scale"]


def scale_latents(fn: Optional[Callable] = None, scale: float = 1.0) -> Any:
    """``poutine.scale`` restricted to latent sites (beta >= 0, zero allowed).

    Use ``with scale_latents(scale=beta): svi.step(x)``, or wrap a program: ``scale_latents(model, scale=beta)``
    (then wrap its guide too, so that log p(z) and log q(z) are scaled alike).
    """
    messenger = LatentScaleMessenger(scale)
    return messenger if fn is None else messenger(fn)


class Annealing:
    """A schedule with its step counter: ``beta``, ``step()``, a handler, and state for checkpoints.

    Example::

        annealing = Annealing(Cyclical(total_steps=10_000, cycles=4, ratio=0.5))
        for batch in batches:
            with annealing.handler():
                svi.step(*batch)
            annealing.step()
    """

    def __init__(self, schedule: Schedule, step: int = 0):
        self.schedule = schedule
        self.step_count = int(step)

    @property
    def beta(self) -> float:
        return self.schedule(self.step_count)

    @property
    def settled(self) -> bool:
        return self.step_count >= self.schedule.settled_step

    def handler(self) -> LatentScaleMessenger:
        return LatentScaleMessenger(self.beta)

    def step(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count, "schedule": repr(self.schedule)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("schedule") != repr(self.schedule):
            raise DgmPyroError(f"annealing state is for {state.get('schedule')}, not {self.schedule!r}")
        self.step_count = int(state["step"])

    def __repr__(self) -> str:
        return f"Annealing({self.schedule!r}, step={self.step_count}, beta={self.beta:.4g})"


def parse_schedule(spec: str, total_steps: int) -> Optional[Schedule]:
    """A schedule from its command-line form; ``None`` for ``"none"``.

    ``constant:BETA``, ``linear:START:STEPS`` (beta from START to 1 over STEPS optimisation steps),
    ``cyclical:CYCLES:RATIO`` (Fu et al. over the run's ``total_steps``), ``sigmoid:STEPS[:STEEPNESS]``.
    """
    name, _, rest = spec.partition(":")
    parts = rest.split(":") if rest else []
    usage = {"constant": "constant:BETA", "linear": "linear:START:STEPS", "cyclical": "cyclical:CYCLES:RATIO",
             "sigmoid": "sigmoid:STEPS[:STEEPNESS]"}
    if name == "none" and not parts:
        return None
    if name not in usage:
        raise DgmPyroError(f"unknown annealing schedule {spec!r}; use none, {', '.join(usage.values())}")
    arity = {"constant": (1,), "linear": (2,), "cyclical": (2,), "sigmoid": (1, 2)}[name]
    try:
        if len(parts) not in arity:
            raise ValueError(spec)
        if name == "constant":
            args: tuple = (float(parts[0]),)
        elif name == "sigmoid":
            args = (_int(parts[0]), float(parts[1]) if len(parts) == 2 else 10.0)
        else:
            args = (float(parts[0]), _int(parts[1])) if name == "linear" else (_int(parts[0]), float(parts[1]))
    except ValueError:
        raise DgmPyroError(f"bad annealing schedule {spec!r}; expected {usage[name]}") from None
    if name == "constant":
        return Constant(*args)
    if name == "linear":
        return Linear(start=args[0], end=1.0, steps=args[1])
    if name == "cyclical":
        return Cyclical(total_steps=total_steps, cycles=args[0], ratio=args[1])
    return Sigmoid(steps=args[0], steepness=args[1])


def _int(s: str) -> int:
    v = float(s)
    if v != int(v):
        raise ValueError(s)
    return int(v)
