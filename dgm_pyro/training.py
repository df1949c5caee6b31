"""The one SVI training loop used by every model: :class:`Trainer`.

It optimises ``module.model`` / ``module.guide`` with any objective that has Pyro's
``differentiable_loss`` (``Trace_ELBO`` by default), Adam and gradient-norm clipping, over a data
source that yields the arguments of each step: :class:`Minibatches` (shuffled minibatches, one interval
per epoch, data-parallel under ``torchrun``) or :class:`FullBatch` (the same arguments every step, for
one sequence; an interval is ``every`` steps). After every interval it writes a ``metrics.csv`` row and
a weights-only checkpoint that holds the parameters, the optimiser state, the loop and callback state
and every random-number state, so that stopping after any interval and resuming reproduces the
uninterrupted run bit for bit on CPU. Non-finite losses or gradients stop training with the last good
checkpoint, or are skipped up to ``skip_bad_steps`` times. It optimises ``module.parameters()`` itself, so the
programs run without ``pyro.module`` registration (:func:`~dgm_pyro.models.nn.param_registration`), which
``pyro.optim`` would need and which costs about 6 % of the default MNIST CVAE's step.

What differs between models plugs in as :class:`~dgm_pyro.callbacks.Callback` objects (validation and
early stopping, KL annealing, scheduled sampling, collapse tracking, aggressive encoder training), as
Pythae's trainer callbacks or Lightning's callbacks do.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from . import distributed as D
from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from .errors import DgmPyroError
from .models.nn import param_registration
from .progress import Heartbeat

__all__ = ["Trainer", "Minibatches", "FullBatch", "build_objective", "describe_objective", "OBJECTIVES",
           "steps_per_epoch", "read_metrics", "environment", "deterministic_algorithms", "CHECKPOINT_FORMAT"]

log = logging.getLogger(__name__)

#: 5: the configuration digest leaves out the run's length (epochs/steps), which a resume may raise
CHECKPOINT_FORMAT = 5
#: the objectives a configuration can name, and the Pyro loss each builds
OBJECTIVES = ("elbo", "meanfield", "cs", "free-bits", "iwae", "dreg")


def build_objective(name: str = "elbo", num_particles: int = 1, lam: float = 1.0, free_bits: float = 0.0,
                    free_bits_per: str = "dim", mc_samples: Optional[int] = None) -> ELBO:
    """The Pyro loss called ``name``: ``elbo`` (Trace_ELBO), ``meanfield`` (TraceMeanField_ELBO), ``cs``
    (:class:`~dgm_pyro.infer.CSELBO` with weight ``lam``), ``free-bits`` (:class:`~dgm_pyro.infer.FreeBitsELBO`),
    or the importance-weighted bound with ``num_particles`` particles (:class:`~dgm_pyro.infer.IWELBO`) with
    the IWAE gradient (``iwae``) or doubly-reparameterised gradients (``dreg``). ``mc_samples`` draws estimate
    the KL (free bits) or D_CS (cs) of a latent site without a closed form (``None``: such a site is refused)."""
    from .infer.cs_elbo import CSELBO
    from .infer.free_bits import FreeBitsELBO
    from .infer.iwelbo import IWELBO
    from .infer.meanfield import MeanFieldELBO

    if name in ("iwae", "dreg"):
        return IWELBO(num_particles, estimator=name)

    common = {"num_particles": num_particles, "vectorize_particles": num_particles > 1}
    if name == "meanfield":
        return MeanFieldELBO(**common)
    if name == "cs":
        return CSELBO(lam=lam, mc_samples=mc_samples, **common)
    if name == "free-bits":
        return FreeBitsELBO(lam=free_bits, per=free_bits_per, mc_samples=mc_samples, **common)
    if name != "elbo":
        raise DgmPyroError(f"unknown objective '{name}'; choose one of {', '.join(OBJECTIVES)}")
    return Trace_ELBO(**common)


def describe_objective(loss: Any) -> str:
    """A one-line description with the formula; Pyro's own ELBOs have no informative repr."""
    from .infer.meanfield import MeanFieldELBO

    mean_field = "E_q[log p(x|z)] - KL(q(z|x) || p(z))"
    formulas = {TraceMeanField_ELBO: mean_field, MeanFieldELBO: mean_field,  # the second warns when not closed-form
                Trace_ELBO: "E_q[log p(x|z) + log p(z) - log q(z|x)]"}
    for cls, formula in formulas.items():
        if type(loss) is cls:
            name = "TraceMeanField_ELBO" if cls is MeanFieldELBO else cls.__name__
            return f"{name}(num_particles={loss.num_particles}): {formula}"
    return repr(loss)


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    return math.ceil(num_train / batch_size)


def environment() -> dict[str, str]:
    """Versions recorded with every run and checkpoint."""
    import importlib.metadata
    import platform

    from .version import __version__

    return {"dgm_pyro": __version__, "torch": str(torch.__version__), "pyro": str(pyro.__version__),
            "numpy": str(np.__version__), "click": importlib.metadata.version("click"), "python": platform.python_version()}


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as dicts of floats."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _write_metrics(path: Path, rows: list[dict[str, float]], fields: list[str]) -> None:
    lines = [",".join(fields)]
    lines += [",".join(repr(float(r[k])) if k not in ("epoch", "step") else str(int(r[k])) for k in fields) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "shuffle": gen.get_state(), "python": random.getstate(),
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached": float(np_state[4])}}


def _set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["shuffle"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


@contextlib.contextmanager
def deterministic_algorithms():
    """``torch.use_deterministic_algorithms(True)`` for the duration: torch-geometric's message passing
    accumulates with scatter operations whose multi-threaded CPU results otherwise vary from run to run in
    the last bits, which breaks "same seed, same numbers" and exact resume.

    Without torch's companion ``fill_uninitialized_memory`` (on by default with deterministic algorithms): it
    writes NaN into every new ``empty`` tensor, a debugging aid that changes no result of correct code, and
    it cost 44 ms of a 0.4 s GraphSSM step (the zero gradient of a (T, N^2) gather, measured with
    torch.profiler)."""
    import torch.utils.deterministic as deterministic

    before = torch.are_deterministic_algorithms_enabled()
    fill = deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        deterministic.fill_uninitialized_memory = fill


# --------------------------------------------------------------------------------------------------
# data sources: what one interval of training iterates over


class Minibatches:
    """Shuffled minibatches of ``data`` (tensors sharing their first dimension), one interval per epoch.

    Each step's loss is divided by the minibatch size. With several processes every rank draws the same
    permutation and takes its share of each minibatch (rank r: rows r, r + W, ...); the summed gradients
    are then those of the whole minibatch.
    """

    unit = "epoch"
    weighted = True  # the interval's train_loss weighs each step by its minibatch size

    def __init__(self, data: Sequence[torch.Tensor], batch_size: int, epochs: int, binarize: Sequence[int] = ()):
        """``binarize``: positions in ``data`` of grey levels p in [0, 1] that each minibatch replaces by
        x ~ Bernoulli(p), drawn with the trainer's generator (dynamic binarisation: resumed runs draw the same)."""
        self.data, self.batch_size, self.total = tuple(data), int(batch_size), int(epochs)
        self.num_rows = self.data[0].shape[0]
        self.binarize = tuple(binarize)

    def _rows(self, idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        if not self.binarize:
            return tuple(t[idx] for t in self.data)
        from .data.dataset import binarize

        return tuple(binarize(t[idx], generator) if i in self.binarize else t[idx] for i, t in enumerate(self.data))

    def interval(self, trainer: "Trainer") -> Iterator[tuple[tuple, int, str]]:
        """Yield ``(this rank's rows, rows in the minibatch, location)`` for one epoch."""
        rank, world = D.rank(), D.world_size()
        perm = torch.randperm(self.num_rows, generator=trainer.generator)
        epoch = trainer.state["epoch"] + 1
        for i in range(0, self.num_rows, self.batch_size):
            idx = perm[i:i + self.batch_size]
            yield self._rows(idx[rank::world], trainer.generator), len(idx), f"epoch {epoch}, step {i // self.batch_size + 1}"

    def total_steps(self) -> int:
        return self.total * steps_per_epoch(self.num_rows, self.batch_size)

    def random_batch(self, generator: torch.Generator) -> tuple[tuple, int]:
        """A minibatch drawn with replacement (aggressive training's extra encoder steps)."""
        idx = torch.randint(self.num_rows, (self.batch_size,), generator=generator)
        return self._rows(idx, generator), len(idx)

    def advance(self, state: dict[str, Any]) -> None:
        state["epoch"] += 1


class FullBatch:
    """The same arguments ``args`` at every step (a whole sequence), ``steps`` steps in intervals of ``every``.

    Each step's loss is divided by ``normaliser`` (for example the number of snapshots)."""

    unit = "step"
    weighted = False

    def __init__(self, args: Sequence[Any], steps: int, every: int, normaliser: float = 1.0):
        self.args, self.total, self.every, self.normaliser = tuple(args), int(steps), int(every), float(normaliser)

    def interval(self, trainer: "Trainer") -> Iterator[tuple[tuple, float, str]]:
        start = trainer.state["step"]
        for i in range(min(self.every, self.total - start)):
            yield self.args, self.normaliser, f"step {start + i + 1}"

    def total_steps(self) -> int:
        return self.total

    def advance(self, state: dict[str, Any]) -> None:
        state["step"] = state["steps"]


class _Progress:
    """What a :class:`Trainer` shows while it runs: a tqdm bar (``bar``, for a terminal) or, otherwise, log
    lines on the ``dgm_pyro.training`` logger at level INFO: one per interval (epoch or checkpoint) with the
    loss, the validation criterion and an ETA, and a heartbeat when an interval runs longer than
    ``heartbeat`` seconds. Rank 0 only."""

    def __init__(self, trainer: "Trainer", bar: bool, heartbeat: float = 30.0):
        self.trainer = trainer
        self.active = D.rank() == 0
        self.bar = None
        data = trainer.data
        self.total_steps, self.unit = data.total_steps(), data.unit
        self.clock = Heartbeat(log, self.total_steps, start=trainer.state["steps"], every=heartbeat,
                               eta_note=" or less (early stopping)" if self.unit == "epoch" else "")
        if bar and self.active:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=data.total, initial=trainer.state[self.unit], desc=trainer.label, unit=self.unit,
                            leave=False)

    def step(self) -> None:
        if self.active and self.bar is None:
            st = self.trainer.state
            where = (f"step {st['steps']} of {self.total_steps}" if self.unit == "step" else
                     f"epoch {st['epoch'] + 1} of {self.trainer.data.total} in progress, step {st['steps']} of "
                     f"{self.total_steps}")
            self.clock.beat(st["steps"], f"{self.trainer.label}: {where}")

    def interval(self, before: int, row: dict[str, float]) -> None:
        if not self.active:
            return
        st = self.trainer.state
        if self.bar is not None:
            self.bar.update(st[self.unit] - before)
            self.bar.set_postfix(loss=f"{row['train_loss']:.2f}")
            return
        extra = "".join(f", {k.replace('_', ' ')} {row[k]:.3f}" for k in ("valid_elbo", "valid_log_likelihood")
                        if k in row and math.isfinite(row[k]))
        self.clock.beat(st["steps"], f"{self.trainer.label}: {self.unit} {st[self.unit]}/{self.trainer.data.total}, "
                        f"loss {row['train_loss']:.3f}{extra}", force=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------------
# the loop


class Trainer:
    """Stochastic variational inference of ``module.model`` / ``module.guide`` into a run folder.

    Args:
        module: an ``nn.Module`` (usually a ``PyroModule``) with ``model(*args, **kwargs)`` and ``guide``;
            its ``parameters()`` are optimised. A module with ``guide_parameters()`` gets a separate Adam
            for those (the same updates as one Adam; aggressive training steps them alone).
        data: a :class:`Minibatches` or :class:`FullBatch`.
        run_dir: folder for ``metrics.csv``, ``checkpoint.pt`` (latest) and ``best.pt`` (written when a
            callback marks an interval as the best so far).
        loss: any object with ``differentiable_loss(model, guide, *args, **kwargs)`` (default ``Trace_ELBO``).
        lr, clip_norm: Adam's learning rate and the gradient-norm clip.
        seed: seeds Pyro's random state (plus the rank) and the shuffling generator.
        skip_bad_steps: non-finite steps to skip (no update) before stopping.
        callbacks: :class:`~dgm_pyro.callbacks.Callback` objects, called in order.
        config_digest: stored in checkpoints; a resume with another digest is refused.
        deterministic: run under :func:`deterministic_algorithms`.
        progress: show a tqdm bar (for a terminal); otherwise one log line per interval goes to the
            ``dgm_pyro.training`` logger at level INFO (the CLI prints them on stderr).
        label: names this training in progress lines (``train``, ``baseline``).
    """

    def __init__(self, module: torch.nn.Module, data: Minibatches | FullBatch, run_dir: str | Path, *,
                 loss: Optional[Any] = None, lr: float = 1e-3, clip_norm: float = 10.0, seed: int = 0,
                 skip_bad_steps: int = 0, callbacks: Sequence[Any] = (), config_digest: str = "",
                 deterministic: bool = False, progress: bool = False, label: str = "train"):
        self.module, self.data, self.run_dir = module, data, Path(run_dir)
        self.loss = loss if loss is not None else Trace_ELBO()
        self.lr, self.clip_norm, self.seed, self.skip_bad_steps = lr, clip_norm, seed, skip_bad_steps
        self.callbacks, self.config_digest = list(callbacks), config_digest
        self.deterministic, self.progress, self.label = deterministic, progress, label
        self.state: dict[str, Any] = {data.unit: 0, "steps": 0, "skipped_steps": 0, "stopped": ""}
        self.rows: list[dict[str, float]] = []
        self.improved = False  # set by a callback when this interval is the best so far (best.pt)
        self.last_checkpoint: Optional[str] = None
        self.ckpt_path, self.metrics_path = self.run_dir / "checkpoint.pt", self.run_dir / "metrics.csv"

    # ------------------------------------------------------------------ set-up

    def _setup(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pyro.clear_param_store()
        pyro.set_rng_seed(self.seed + D.rank())  # each rank its own latent draws; rank 0 as a single process
        self.generator = torch.Generator().manual_seed(self.seed)  # the same data order on every rank
        module = self.module
        enc = list(module.guide_parameters()) if hasattr(module, "guide_parameters") else []
        enc_ids = {id(p) for p in enc}
        self.model_params = [p for p in module.parameters() if id(p) not in enc_ids]
        self.guide_params, self.params = enc, list(module.parameters())
        self.model_optimizer = torch.optim.Adam(self.model_params, lr=self.lr)
        self.guide_optimizer = torch.optim.Adam(enc, lr=self.lr) if enc else None
        self.optimizers = [self.model_optimizer] + ([self.guide_optimizer] if enc else [])
        self.fields = [self.data.unit, "train_loss"] + [f for cb in self.callbacks for f in cb.fields] + \
            ["seconds", "train_seconds"]

    def _restore(self) -> None:
        ckpt = load_checkpoint(self.ckpt_path)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise DgmPyroError(f"{self.ckpt_path}: checkpoint format {ckpt.get('format')} is not this version's "
                               f"({CHECKPOINT_FORMAT}); it cannot be resumed, but its weights still load")
        if ckpt.get("config_digest") != self.config_digest:
            raise DgmPyroError(f"{self.ckpt_path}: made with a different configuration than "
                               f"{self.run_dir / 'config.json'}; cannot resume")
        self.module.load_state_dict(ckpt["model_state"])
        for opt, opt_state in zip(self.optimizers, ckpt["optim_state"]):
            opt.load_state_dict(opt_state)
        self.state.update(ckpt["trainer_state"])
        ranks = ckpt.get("rng_ranks")
        if (len(ranks) if ranks else 1) != D.world_size():
            raise DgmPyroError(f"{self.ckpt_path}: written by {len(ranks) if ranks else 1} process(es); resume it "
                               f"with the same number (this run has {D.world_size()})")
        _set_rng_state(ranks[D.rank()] if ranks else ckpt["rng"], self.generator)
        for cb in self.callbacks:
            cb.load_state_dict(ckpt["callbacks"].get(type(cb).__name__, {}))
        unit = self.data.unit
        self.rows = [r for r in read_metrics(self.metrics_path) if r[unit] <= self.state[unit]]
        self.last_checkpoint = f"{unit} {self.state[unit]}"

    # ------------------------------------------------------------------ one optimisation step

    def step(self, args: tuple, divisor: float, params: list, optimizers: list, check: bool, where: str,
             kwargs: dict[str, Any]) -> float:
        """One update of ``optimizers`` from the loss on ``args`` / ``divisor``; NaN (and no update) for a
        skipped non-finite step. ``check`` runs Pyro's argument validation (the run's first step only: it
        costs about a third of a step on small networks)."""
        for opt in self.optimizers:
            opt.zero_grad()
        value = torch.zeros((), device=self.params[0].device if self.params else None)
        if len(args) == 0 or not isinstance(args[0], torch.Tensor) or args[0].shape[0]:
            value = self._loss(args, divisor, check, kwargs)
            if torch.isfinite(value):
                value.backward()
        value = D.all_reduce_gradients(params, value)  # with several ranks: the sums over the shards
        bad = "loss" if not torch.isfinite(value) else None
        if bad is None and not torch.isfinite(torch.nn.utils.clip_grad_norm_(params, self.clip_norm)):
            bad = "gradient norm"
        if bad is not None:
            self.state["skipped_steps"] += 1
            if self.state["skipped_steps"] > self.skip_bad_steps:
                raise self._non_finite(bad, where)
            return math.nan
        for opt in optimizers:
            opt.step()
        return float(value.detach())

    def _loss(self, args: tuple, divisor: float, check: bool, kwargs: dict[str, Any]) -> torch.Tensor:
        contexts = [cb.step_context(self) for cb in self.callbacks]
        with contextlib.ExitStack() as stack:
            for c in contexts:
                stack.enter_context(c)
            try:
                with pyro.validation_enabled(check), param_registration(False):  # parameters() are optimised
                    return self.loss.differentiable_loss(self.module.model, self.module.guide, *args, **kwargs) / divisor
            except ValueError:
                if not check:
                    raise
                # argument validation rejected a distribution parameter: a non-finite step if the same
                # loss without validation is not finite, else a genuine error in the model
                with pyro.validation_enabled(False), param_registration(False), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Pyro's NaN warning: the NaN is what is being checked
                    value = self.loss.differentiable_loss(self.module.model, self.module.guide, *args, **kwargs)
                if torch.isfinite(value):
                    raise
                return value.detach() * math.nan

    def _non_finite(self, what: str, where: str) -> DgmPyroError:
        kept = (f"the last good checkpoint is {self.ckpt_path} ({self.last_checkpoint})" if self.last_checkpoint
                else "no checkpoint was written yet")
        skipped = f"; more than {self.skip_bad_steps} bad steps were skipped" if self.skip_bad_steps else ""
        return DgmPyroError(f"the {what} became non-finite at {where}{skipped}; training stopped and {kept}; try a "
                            "lower learning rate (lr) or a smaller clip_norm, or allow a few bad steps (skip_bad_steps)")

    # ------------------------------------------------------------------ intervals

    def _train_interval(self) -> float:
        """Optimise over one interval; the weighted mean of its finite step losses (NaN if none)."""
        total, counted = 0.0, 0.0
        for args, weight, where in self.data.interval(self):
            for cb in self.callbacks:
                cb.on_batch_start(self)
            kwargs = {k: v for cb in self.callbacks for k, v in cb.loss_kwargs(self).items()}
            check = self.state["steps"] == 0
            value = None
            for cb in self.callbacks:
                value = cb.train_batch(self, args, weight, check, where, kwargs)
                if value is not None:
                    break
            if value is None:
                value = self.step(args, weight, self.params, self.optimizers, check, where, kwargs)
            self.state["steps"] += 1
            self._progress.step()
            for cb in self.callbacks:
                cb.on_batch_end(self)
            if math.isfinite(value):
                w = weight if self.data.weighted else 1.0
                total, counted = total + value * w, counted + w
        return total / counted if counted else math.nan

    def _checkpoint(self, rng: dict[str, Any], all_rng: Optional[list]) -> None:
        # metrics first, checkpoint second: on resume, rows past the checkpoint's interval are dropped
        _write_metrics(self.metrics_path, self.rows, self.fields)
        ckpt = {"format": CHECKPOINT_FORMAT, "model_state": self.module.state_dict(),
                "optim_state": [opt.state_dict() for opt in self.optimizers], "trainer_state": dict(self.state),
                "rng": rng, "config_digest": self.config_digest, "versions": environment(),
                "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks}}
        if all_rng is not None:
            ckpt["rng_ranks"] = all_rng
        if self.improved:
            save_checkpoint(ckpt, self.run_dir / "best.pt")
        save_checkpoint(ckpt, self.ckpt_path)

    def _interval(self) -> dict[str, float]:
        start = time.perf_counter()
        self.module.train()
        self.improved = False
        train_loss = self._train_interval()
        train_seconds = time.perf_counter() - start
        self.data.advance(self.state)
        self.module.eval()
        row: dict[str, float] = {self.data.unit: self.state[self.data.unit], "train_loss": train_loss}
        for cb in self.callbacks:
            cb.on_interval_end(self, row)
        row.update(seconds=time.perf_counter() - start, train_seconds=train_seconds)
        self.rows.append(row)
        rng = _rng_state(self.generator)
        all_rng = D.gather_objects(rng) if D.world_size() > 1 else None
        if D.rank() == 0:
            self._checkpoint(rng, all_rng)
        self.last_checkpoint = f"{self.data.unit} {self.state[self.data.unit]}"
        D.barrier()
        if D.rank() == 0:
            for cb in self.callbacks:
                cb.on_checkpoint(self, row)
        return row

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train until ``data.total`` epochs/steps or a callback stops early (resuming from ``checkpoint.pt``
        with ``resume``). Returns ``{"<unit>s_run", "stopped", "skipped_steps", "final_loss", "objective"}``
        plus each callback's ``summary()``."""
        self._setup()
        if resume:
            self._restore()
        for cb in self.callbacks:
            cb.on_train_start(self)
        unit = self.data.unit
        self._progress = _Progress(self, bar=self.progress)
        try:
            with deterministic_algorithms() if self.deterministic else contextlib.nullcontext():
                while self.state[unit] < self.data.total and not self.state["stopped"]:
                    before = self.state[unit]
                    row = self._interval()
                    self._progress.interval(before, row)
        finally:
            self._progress.close()
            for cb in self.callbacks:
                cb.on_train_end(self)
        summary = {f"{unit}s_run": self.state[unit], "stopped": self.state["stopped"] or f"max_{unit}s",
                   "skipped_steps": self.state["skipped_steps"],
                   "final_loss": self.rows[-1]["train_loss"] if self.rows else math.nan,
                   "objective": describe_objective(self.loss)}
        for cb in self.callbacks:
            summary.update(cb.summary())
        return summary
