"""Callbacks of the training loop (:class:`~dgm_pyro.training.Trainer`): what differs between models.

A callback sees the trainer at fixed points (start, each minibatch or step, the end of each interval),
may add columns to the interval's ``metrics.csv`` row, and keeps a state that is saved in every
checkpoint and restored on resume, so that resumed runs stay exact.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, ContextManager, Optional

import torch

from . import distributed as D
from .errors import DgmPyroError
from .infer.annealing import Annealing, Schedule
from .infer.evidence import log_evidence_blocks

__all__ = ["Callback", "Validation", "ForecastValidation", "KLAnnealing", "LearningRateSchedule", "LR_SCHEDULES",
           "lr_factor", "AggressiveTraining", "ScheduledSampling",
           "OnInterval", "diverged", "DIVERGENCE_NATS",
           "AGGRESSIVE_MAX_INNER", "AGGRESSIVE_WINDOW"]

#: aggressive training (He et al. 2019): at most this many encoder steps per decoder step, and the
#: encoder loss is compared over windows of this many steps (stop when a window is no better)
AGGRESSIVE_MAX_INNER, AGGRESSIVE_WINDOW = 100, 10

log = logging.getLogger("dgm_pyro.training")


class Callback:
    """Does nothing; subclasses override the hooks they need. ``fields`` are the metric columns it adds."""

    fields: tuple[str, ...] = ()

    def on_train_start(self, trainer: Any) -> None: ...

    def on_batch_start(self, trainer: Any) -> None: ...

    def loss_kwargs(self, trainer: Any) -> dict[str, Any]:
        """Keyword arguments for the model and guide at this step."""
        return {}

    def step_context(self, trainer: Any) -> ContextManager:
        """A context (for example an effect handler) around every loss evaluation."""
        return contextlib.nullcontext()

    def train_batch(self, trainer: Any, args: tuple, weight: float, check: bool, where: str,
                    kwargs: dict[str, Any]) -> Optional[float]:
        """Take over the update for this minibatch (return its loss), or ``None`` for the usual joint step."""
        return None

    def on_batch_end(self, trainer: Any) -> None: ...

    def on_interval_end(self, trainer: Any, row: dict[str, float]) -> None: ...

    def on_checkpoint(self, trainer: Any, row: dict[str, float]) -> None:
        """After the interval's row and checkpoint are written (rank 0 only)."""

    def on_train_end(self, trainer: Any) -> None:
        """After the last interval, or when training stops with an error (rank 0 and the others)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def summary(self) -> dict[str, Any]:
        return {}


class KLAnnealing(Callback):
    """beta-scaling of the latent sites by ``schedule`` per optimisation step (seed P3.5); records the mean
    and last beta of each interval. With ``schedule=None`` beta stays 1 (the columns are still written)."""

    fields = ("beta_mean", "beta_last")

    def __init__(self, schedule: Optional[Schedule]):
        self.annealing = Annealing(schedule) if schedule is not None else None
        self.betas: list[float] = []

    @property
    def settled(self) -> bool:
        return self.annealing is None or self.annealing.settled

    def on_batch_start(self, trainer: Any) -> None:
        self.betas.append(self.annealing.beta if self.annealing is not None else 1.0)

    def step_context(self, trainer: Any) -> ContextManager:
        return self.annealing.handler() if self.annealing is not None else contextlib.nullcontext()

    def on_batch_end(self, trainer: Any) -> None:
        if self.annealing is not None:
            self.annealing.step()

    def on_interval_end(self, trainer: Any, row: dict[str, float]) -> None:
        row.update(beta_mean=sum(self.betas) / len(self.betas), beta_last=self.betas[-1])
        self.betas = []

    def state_dict(self) -> dict[str, Any]:
        return self.annealing.state_dict() if self.annealing is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.annealing is not None:
            self.annealing.load_state_dict(state)

    def summary(self) -> dict[str, Any]:
        return {"annealing": repr(self.annealing.schedule) if self.annealing is not None else "none"}


#: the learning-rate schedules of ``--lr-schedule`` (factors of the configured learning rate per epoch)
LR_SCHEDULES = ("constant", "burda", "exponential:GAMMA", "cosine")


def lr_factor(spec: str, epoch: int, epochs: int) -> float:
    """The factor of the base learning rate in epoch ``epoch`` (0-based) of ``epochs``, by schedule ``spec``:

    - ``constant``: 1;
    - ``burda``: Burda, Grosse and Salakhutdinov (2016), section 5: 3^i passes at 10^(-i/7) for i = 0..7 (3,280
      passes in all; a shorter run stops part-way through it, a longer one stays at the last factor 10^-1);
    - ``exponential:GAMMA``: GAMMA^epoch;
    - ``cosine``: (1 + cos(pi epoch / epochs)) / 2, from 1 towards 0 over the run.
    """
    name, _, arg = spec.partition(":")
    if name == "constant" and not arg:
        return 1.0
    if name == "burda" and not arg:
        start = 0
        for i in range(8):
            start += 3 ** i
            if epoch < start:
                return 10.0 ** (-i / 7)
        return 10.0 ** (-1)
    if name == "cosine" and not arg:
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))
    if name == "exponential":
        try:
            gamma = float(arg)
        except ValueError:
            gamma = -1.0
        if 0 < gamma <= 1:
            return gamma ** epoch
        raise DgmPyroError(f"bad learning-rate schedule {spec!r}: exponential:GAMMA needs 0 < GAMMA <= 1")
    raise DgmPyroError(f"unknown learning-rate schedule {spec!r}; use one of {', '.join(LR_SCHEDULES)}")


class LearningRateSchedule(Callback):
    """Sets every optimiser's learning rate to ``lr * lr_factor(spec, epoch, epochs)`` before each epoch (also
    after a resume: the rate is a function of the epoch, so resumed runs stay exact); records it as ``lr``."""

    fields = ("lr",)

    def __init__(self, spec: str, lr: float, epochs: int):
        lr_factor(spec, 0, epochs)  # checks the spec
        self.spec, self.lr, self.epochs = spec, lr, epochs
        self.current = lr

    def _set(self, trainer: Any) -> None:
        self.current = self.lr * lr_factor(self.spec, int(trainer.state[trainer.data.unit]), self.epochs)
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = self.current

    def on_train_start(self, trainer: Any) -> None:
        self._set(trainer)

    def on_interval_end(self, trainer: Any, row: dict[str, float]) -> None:
        row["lr"] = self.current  # the rate of the epoch that ended
        self._set(trainer)  # the next epoch's

    def summary(self) -> dict[str, Any]:
        return {"lr_schedule": self.spec}


class _EarlyStopping(Callback):
    """The best interval so far (the trainer writes ``best.pt`` for it) and early stopping after
    ``patience`` intervals without improvement of a validation score (higher is better)."""

    def __init__(self, patience: int):
        self.patience = patience
        self.state = {"best_score": -math.inf, "best_epoch": 0, "bad_epochs": 0}

    def _update(self, trainer: Any, row: dict[str, float], score: float, counts: bool = True) -> bool:
        """Record ``score`` for this interval; ``counts=False`` keeps a worse interval from using patience."""
        improved = score > self.state["best_score"]
        if improved:
            self.state.update(best_score=score, best_epoch=int(row[trainer.data.unit]), bad_epochs=0)
        elif counts:
            self.state["bad_epochs"] += 1
            if self.state["bad_epochs"] >= self.patience:
                trainer.state["stopped"] = "early"
        trainer.improved = improved
        return improved

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.update(state)


#: a validation score this many nats per datapoint below the best so far (or ten times the best's size, if more)
#: is a divergence, not a bad epoch
DIVERGENCE_NATS = 1000.0


def diverged(score: float, best: float) -> bool:
    """Whether a validation score (higher is better) has diverged from the best so far: it is not finite, or it lies
    more than max(DIVERGENCE_NATS, 10 |best|) below it (the first score is compared with nothing)."""
    if not math.isfinite(score):
        return True
    return math.isfinite(best) and score < best - max(DIVERGENCE_NATS, 10 * abs(best))


class Validation(_EarlyStopping):
    """Validation ELBO and K-particle importance-sampled log-likelihood after every interval, the best
    interval (``best.pt``) and early stopping after ``patience`` intervals without improvement (delayed while
    ``annealing`` is still moving beta). The criterion is the ELBO, or with ``criterion="log_likelihood"``
    the importance-sampled log-likelihood (for importance-weighted objectives, whose models need not have a
    good ELBO). With ``track_collapse`` also the validation KL, mutual information
    (per group of ``groups``) and active units, computed without touching the training random state.
    ``data`` are (N, ...) tensors (or None), estimated in bounded memory
    (:func:`~dgm_pyro.infer.evidence.log_evidence_blocks` with ``max_elements``). Rank 0 validates and tells the
    others, so every rank takes the same decisions."""

    def __init__(self, data: tuple[torch.Tensor, ...], particles: int, patience: int,
                 annealing: Optional[KLAnnealing] = None, track_collapse: bool = False,
                 groups: Optional[torch.Tensor] = None, criterion: str = "elbo",
                 max_elements: Optional[int] = None):
        if criterion not in ("elbo", "log_likelihood"):
            raise ValueError(f"criterion must be 'elbo' or 'log_likelihood', got {criterion!r}")
        super().__init__(patience)
        self.data, self.particles, self.criterion, self.max_elements = data, particles, criterion, max_elements
        self.annealing, self.track, self.groups = annealing, track_collapse, groups
        self.fields = ("valid_elbo", "valid_log_likelihood", "best") + (
            ("valid_kl", "valid_mi", "valid_au") if track_collapse else ())

    def _measure(self, module: Any) -> tuple[float, float, dict[str, float]]:
        # in blocks of datapoints: all 10,000 MNIST images at once took a PixelCNN decoder past 24 GB
        res = log_evidence_blocks(module.model, module.guide, *self.data, max_elements=self.max_elements,
                                  num_particles=self.particles, diagnostics=False, warn=False)
        collapse: dict[str, float] = {}
        if self.track:
            from .diagnostics import collapse_report

            with torch.random.fork_rng():
                report = collapse_report(module.model, module.guide, *self.data, groups=self.groups, num_samples=10,
                                         particles=0)
            collapse = {"valid_kl": report.kl, "valid_mi": report.mutual_information,
                        "valid_au": float(report.active_units)}
        return float(res.elbo.mean()), float(res.log_evidence.mean()), collapse

    def on_interval_end(self, trainer: Any, row: dict[str, float]) -> None:
        measured = self._measure(trainer.module) if D.rank() == 0 else None
        valid_elbo, valid_ll, collapse = D.broadcast_object(measured)
        score = valid_elbo if self.criterion == "elbo" else valid_ll
        best, best_epoch = self.state["best_score"], self.state["best_epoch"]
        # while beta is still moving the objective changes under the model: patience waits for it
        improved = self._update(trainer, row, score, counts=self.annealing is None or self.annealing.settled)
        row.update(valid_elbo=valid_elbo, valid_log_likelihood=valid_ll, best=float(improved), **collapse)
        if diverged(score, best):
            trainer.state["stopped"] = "diverged"
            log.warning("the validation %s fell from %.6g (%s %d) to %.6g: training diverged and stopped; best.pt keeps "
                        "%s %d. The likelihood is likely degenerate: a Gaussian's variance collapses onto repeated "
                        "values, such as the exact zeros of images (grey levels in [0, 1] want --likelihood bernoulli); "
                        "otherwise lower --lr or --clip-norm", self.criterion.replace("_", "-"), best,
                        trainer.data.unit, best_epoch, score, trainer.data.unit, best_epoch)

    def summary(self) -> dict[str, Any]:
        return {"best_epoch": self.state["best_epoch"], f"best_valid_{self.criterion}": self.state["best_score"]}


class ForecastValidation(_EarlyStopping):
    """Early stopping of a sequence model on held-out snapshots: after every interval, the predictive
    log-likelihood of the V snapshots that follow the training snapshots, log (1/S) sum_s p(X_{T+h}, A_{T+h} |
    path s) averaged over h = 1..V (seed P4.4, ``module.forecast(..., future=...)``), with S paths drawn from
    a fixed seed so that intervals are compared on the same random numbers (and the training random state is
    left as it was). Writes ``valid_log_likelihood`` (nats per snapshot) and ``best``."""

    fields = ("valid_log_likelihood", "best")

    def __init__(self, history: tuple[torch.Tensor, list[torch.Tensor]],
                 held_out: tuple[torch.Tensor, list[torch.Tensor]], patience: int, num_samples: int = 20,
                 seed: int = 0):
        super().__init__(patience)
        self.history, self.held_out, self.num_samples, self.seed = history, held_out, num_samples, seed

    def on_interval_end(self, trainer: Any, row: dict[str, float]) -> None:
        x, edges = self.history
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            fc = trainer.module.forecast(x, edges, horizon=len(self.held_out[1]), num_samples=self.num_samples,
                                         future=self.held_out)
        score = float(fc["log_lik"].mean())
        improved = self._update(trainer, row, score, counts=True)
        row.update(valid_log_likelihood=score, best=float(improved))

    def summary(self) -> dict[str, Any]:
        return {"best_step": self.state["best_epoch"], "best_valid_log_likelihood": self.state["best_score"]}


class AggressiveTraining(Callback):
    """Aggressive inference-network training (He et al. 2019, "Lagging inference networks and posterior
    collapse"; seed P3.5). Before each decoder update the encoder alone (``module.guide_parameters()``) is
    updated on fresh random minibatches until its loss stops improving (compared over windows of
    ``AGGRESSIVE_WINDOW`` steps, at most ``AGGRESSIVE_MAX_INNER`` steps); the run leaves aggressive mode
    for joint updates after the first interval whose validation mutual information (``valid_mi``, from a
    :class:`Validation` with collapse tracking placed before this callback) is not higher than the best
    so far. With ``enabled=False`` it only writes the ``aggressive`` column (0)."""

    fields = ("aggressive",)

    def __init__(self, enabled: bool = True):
        self.state = {"aggressive": bool(enabled), "best_valid_mi": -math.inf}
        self.now = self.state["aggressive"]

    def on_train_start(self, trainer: Any) -> None:
        if self.state["aggressive"]:
            if D.world_size() > 1:
                raise DgmPyroError("aggressive training is not supported with several processes (its inner loop "
                                   "is sequential)")
            if trainer.guide_optimizer is None:
                raise DgmPyroError("aggressive training needs a module with guide_parameters() (the encoder's "
                                   "parameters)")

    def train_batch(self, trainer: Any, args: tuple, weight: float, check: bool, where: str,
                    kwargs: dict[str, Any]) -> Optional[float]:
        self.now = self.state["aggressive"]
        if not self.now:
            return None
        window, previous = 0.0, math.inf
        for j in range(1, AGGRESSIVE_MAX_INNER + 1):
            inner, count = trainer.data.random_batch(trainer.generator)
            window += trainer.step(inner, count, trainer.guide_params, [trainer.guide_optimizer], check and j == 1,
                                   where, kwargs)
            if j % AGGRESSIVE_WINDOW == 0:
                if window >= previous:
                    break
                window, previous = 0.0, window
        return trainer.step(args, weight, trainer.model_params, [trainer.model_optimizer], False, where, kwargs)

    def on_interval_end(self, trainer: Any, row: dict[str, float]) -> None:
        row["aggressive"] = float(self.now)
        if self.now:
            if row["valid_mi"] > self.state["best_valid_mi"]:
                self.state["best_valid_mi"] = row["valid_mi"]
            else:
                self.state["aggressive"] = False  # the mutual information stopped rising: joint updates from now

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.update(state)
        self.now = self.state["aggressive"]


class ScheduledSampling(Callback):
    """Passes ``teacher_forcing=eps`` to the model and guide, with eps = ``schedule(step)`` (seed P4.5)."""

    fields = ("teacher_forcing",)

    def __init__(self, schedule: Schedule):
        self.schedule, self.eps = schedule, 1.0

    def loss_kwargs(self, trainer: Any) -> dict[str, Any]:
        self.eps = self.schedule(trainer.state["steps"])
        return {"teacher_forcing": self.eps}

    def on_interval_end(self, trainer: Any, row: dict[str, float]) -> None:
        row["teacher_forcing"] = self.eps

    def summary(self) -> dict[str, Any]:
        return {"teacher_forcing": repr(self.schedule)}


class OnInterval(Callback):
    """Calls ``fn(row)`` with each interval's metrics row once it is written (for progress reports)."""

    def __init__(self, fn: Callable[[dict[str, float]], None]):
        self.fn = fn

    def on_checkpoint(self, trainer: Any, row: dict[str, float]) -> None:
        self.fn(row)
