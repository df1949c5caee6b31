"""Models of (x, y) datasets trained by minibatch SVI: the configuration fields and run commands they share.

:class:`DatasetModelKind` trains any ``module.model(x, y)`` / ``module.guide(x, y)`` pair on a
:class:`~dgm_pyro.data.ConditionalDataset` with validation, early stopping and KL annealing, and gives
its runs ``evaluate`` (importance-sampled log p(x|y), seed P1.7) and ``diagnose`` (posterior collapse,
P3). A new model of this family subclasses it with its configuration (extending
:class:`DatasetConfig`) and ``build``; see ``tests/test_registry.py`` for one written outside the package.
"""

from __future__ import annotations

import json
import math
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

import pyro
import torch
from pyro import poutine
from pyro.distributions import Independent

from .. import distributed as D
from ..callbacks import KLAnnealing, LearningRateSchedule, Validation, lr_factor
from ..checkpoint import write_json
from ..config import ConfigBase, option
from ..data import LIKELIHOODS, ConditionalDataset, load_dataset
from ..diagnostics import CollapseReport, collapse_report
from ..device import to_device
from ..errors import DgmPyroError
from ..infer.annealing import parse_schedule
from ..infer.evidence import (BLOCK_SIZE, KHAT_WARN, MAX_CHUNK_ELEMENTS, EvidenceResult, log_evidence,
                              log_evidence_blocks, resolve_method)
from ..models.nn import likelihood_mean
from ..plotting import plot_collapse_over_training, plot_kl_per_dimension, plot_training_curves
from ..training import OBJECTIVES, Minibatches, Trainer, build_objective, steps_per_epoch
from .base import ModelKind, Run

__all__ = ["DatasetConfig", "DatasetModelKind", "DatasetRun"]

log = logging.getLogger("dgm_pyro.runs")


#: Datapoints estimated at once by :meth:`DatasetModelKind.evaluate` and the validation (each datapoint's
#: estimate is its own; :func:`~dgm_pyro.infer.evidence.log_evidence_blocks`)
EVALUATION_BLOCK = BLOCK_SIZE

#: How each ``method`` of :meth:`DatasetModelKind.evaluate` estimates the log-likelihood, in words.
ESTIMATORS = {"is": "importance-sampled", "adaptive": "adaptive importance sampling",
              "ais": "annealed (AIS)"}


def _evaluation_path(run_dir: Path, ev: dict[str, Any]) -> Path:
    """Where an evaluation goes: ``evaluation.json`` unless that holds another split or method, or the same with
    more particles. Then this one goes beside it, ``evaluation-<split>-<method>-K<particles>.json``, and a line
    says so: estimates of different methods and particle counts are kept side by side, never replaced."""
    path = run_dir / "evaluation.json"
    try:
        old = json.loads(path.read_text())
        same = (old.get("split"), old.get("method", "is")) == (ev["split"], ev["method"])
        kept = not same or int(old.get("num_particles", 0)) > ev["num_particles"]
    except (OSError, ValueError, TypeError, AttributeError):
        return path
    if not kept:
        return path
    mine = run_dir / f"evaluation-{ev['split']}-{ev['method']}-K{ev['num_particles']}.json"
    if same:
        log.warning("%s holds an evaluation with %d particles; kept it, and wrote this one (%d particles) to %s", path,
                    int(old["num_particles"]), ev["num_particles"], mine.name)
    else:
        log.info("%s holds the %s evaluation of the %s split (K=%s); kept it, and wrote this one to %s", path,
                 ESTIMATORS.get(old.get("method", "is"), old.get("method")), old.get("split"),
                 old.get("num_particles"), mine.name)
    return mine


@dataclass
class DatasetConfig(ConfigBase):
    """The options of every minibatch model of an (x, y) dataset."""

    LENGTH: ClassVar[str] = "epochs"
    model: str = option("", "registered model name", cli=False)
    dataset: str = option("digits", "digits, digits-q1..3, digits-text, digits-unconditional, linear-gaussian, mnist, "
                                  "mnist-q1..3, mnist-unconditional, mnist-text (each also NAME:DIR for IDX files), "
                                  "npz:PATH, idx:DIR.")
    likelihood: Optional[str] = option(None, "Override for user files (default: inferred from the values); for MNIST "
                                       "bernoulli (binarised dynamically, the default) or bernoulli-grey (Pyro's "
                                       "grey-level cross-entropy, a pseudo-likelihood).",
                                       choices=LIKELIHOODS)
    epochs: int = option(60, "Maximum number of epochs.", min=1)
    batch_size: int = option(100, "Minibatch size.", min=1)
    lr: float = option(1e-3, "Adam learning rate.", min=0, min_open=True)
    patience: int = option(10, "Early-stopping patience: epochs without a better validation ELBO (log-likelihood for "
                                "iwae and dreg).", min=1)
    clip_norm: float = option(10.0, "Gradient-norm clip.", min=0, min_open=True)
    num_particles: int = option(1, "Particles per training step (vectorised); K of the iwae and dreg objectives.",
                                flag="--particles-train", min=1)
    valid_particles: int = option(10, "Importance samples for the validation log-likelihood each epoch.", min=1)
    eval_particles: int = option(1000, "Importance samples for the final test log-likelihood (0: no final "
                                 "evaluation; 'dgm-pyro evaluate' runs it later).", flag="--particles", min=0)
    seed: int = option(0, "Seed of the data split, the weights and every draw.", min=0)
    objective: str = option("meanfield", "meanfield (TraceMeanField_ELBO: closed-form KL where one exists, else sampled with a "
                            "warning), elbo (Trace_ELBO), "
                            "cs (CSELBO), free-bits (FreeBitsELBO), iwae or dreg (IWELBO with --particles-train K "
                            "particles: IWAE or doubly-reparameterised gradients).", choices=OBJECTIVES)
    lam: float = option(1.0, "Weight of D_CS for objective cs.", min=0)
    free_bits: float = option(0.0, "Free nats per group for objective free-bits.", min=0, metavar="NATS")
    free_bits_per: str = option("dim", "Free-bits groups: each latent dimension or each latent site.",
                                choices=("dim", "site"))
    anneal: str = option("none", "KL annealing of the latent terms per optimisation step: none, constant:BETA, "
                         "linear:START:STEPS, cyclical:CYCLES:RATIO, sigmoid:STEPS[:STEEPNESS].", metavar="SCHEDULE")
    kl_samples: int = option(0, "Monte Carlo draws for the KL (objective free-bits) or D_CS (objective cs) of a latent "
                             "site with no closed form, such as a mixture prior; 0 refuses such sites.", min=0,
                             metavar="N", added=True)
    skip_bad_steps: int = option(0, "Skip up to N optimisation steps whose loss or gradient is NaN/inf before "
                                 "stopping.", min=0, metavar="N")
    lr_schedule: str = option("constant", "Learning rate per epoch, a factor of --lr: constant, burda (Burda et al. "
                              "2016: 3^i epochs at 10^(-i/7), i = 0..7, 3,280 in all), exponential:GAMMA "
                              "(GAMMA^epoch) or cosine (from 1 to 0 over the run).", metavar="SCHEDULE", added=True)
    log: str = option("none", "Also write TensorBoard event files into RUN/tensorboard (tensorboard: every "
                      "metrics.csv column, the ELBO's terms, KL per dimension, active units, a sample grid every 5 "
                      "epochs; needs the [tensorboard] extra).", choices=("none", "tensorboard"), added=True)

    def validate(self) -> "DatasetConfig":
        self.check_fields()
        self.require([
            (self.lam == 1.0 or self.objective == "cs", "lam is the weight of D_CS: it needs objective 'cs'"),
            (self.objective != "free-bits" or self.free_bits > 0, "objective 'free-bits' needs free_bits NATS > 0"),
            (self.free_bits == 0 or self.objective == "free-bits", "free_bits needs objective 'free-bits'"),
            (self.kl_samples == 0 or self.objective in ("free-bits", "cs"),
             "kl_samples is for objectives 'free-bits' and 'cs' (meanfield and elbo sample such a KL already)"),
        ])
        parse_schedule(self.anneal, total_steps=10**9)  # the syntax; the run's step count is checked later
        lr_factor(self.lr_schedule, 0, self.epochs)
        return self

    def objective_loss(self) -> Any:
        """The Pyro loss this configuration names."""
        return build_objective(self.objective, self.num_particles, self.lam, self.free_bits, self.free_bits_per,
                               mc_samples=self.kl_samples or None)


@dataclass
class DatasetRun(Run):
    """A loaded run of a dataset model: adds the dataset."""

    dataset: Optional[ConditionalDataset] = None


class DatasetModelKind(ModelKind):
    """A model of an (x, y) dataset trained by minibatch SVI with validation (``best.pt``), early stopping,
    KL annealing and data-parallel training under ``torchrun``. Subclasses set ``name``, ``config_class``
    (a :class:`DatasetConfig`) and ``build``."""

    config_class: ClassVar[type] = DatasetConfig
    commands: ClassVar[tuple[str, ...]] = ("evaluate", "sample", "diagnose")
    checkpoint: ClassVar[str] = "best.pt"
    distributed: ClassVar[bool] = True
    #: the latent site whose collapse ``diagnose`` measures, and the observed site that ``sample`` draws
    latent_site: ClassVar[str] = "z"
    observed_site: ClassVar[str] = "x"
    #: options of ``dgm-pyro sample`` for this model's runs: a dataclass of :func:`~dgm_pyro.config.option`
    #: fields, given to :meth:`draw` as keyword arguments when set on the command line (``None``: none)
    sample_options: ClassVar[Optional[type]] = None

    def load_data(self, config: DatasetConfig) -> ConditionalDataset:
        return load_dataset(config.dataset, likelihood=config.likelihood)

    def check(self, config: DatasetConfig, data: ConditionalDataset) -> None:
        if config.batch_size > data.sizes()["train"]:
            raise DgmPyroError(f"batch size {config.batch_size} exceeds the {data.sizes()['train']} training rows")
        self.annealing_schedule(config, data)  # checks the schedule against the run's step count
        if config.log == "tensorboard":
            from ..tensorboard import require_tensorboard

            require_tensorboard()  # before the run folder is made

    def data_summary(self, data: ConditionalDataset) -> dict[str, Any]:
        return {"name": data.name, "likelihood": data.likelihood, "condition": data.condition, **data.sizes()}

    def describe_data(self, data: ConditionalDataset) -> str:
        sizes = data.sizes()
        return (f"{data.name}, {data.likelihood} likelihood, condition {data.condition}; {sizes['train']} train, "
                f"{sizes['valid']} valid, {sizes['test']} test rows")

    def unfinished(self, config: DatasetConfig, run_dir: Path) -> list[str]:
        parts = super().unfinished(config, run_dir)
        if not parts and not (Path(run_dir) / "evaluation.json").is_file():
            parts.append("the final evaluation is not written")  # killed while evaluating: resume evaluates
        return parts

    def check_extension(self, config: DatasetConfig) -> None:
        if config.anneal.startswith("cyclical"):
            raise DgmPyroError(f"the cyclical annealing schedule '{config.anneal}' spans the run's whole length; a run "
                               "that uses it cannot be extended")
        if config.lr_schedule == "cosine":
            raise DgmPyroError("the cosine learning-rate schedule spans the run's whole length; a run that uses it "
                               "cannot be extended")

    def check_module(self, config: DatasetConfig, data: ConditionalDataset, module: torch.nn.Module) -> None:
        """The configured objective evaluated once on two validation rows, before any folder is made: an objective
        that does not apply to the model (free bits per dimension of a mixture prior, D_CS without a closed form)
        is refused in one line. The random state is restored, so the run's draws are unchanged."""
        x, y = (t[:2] for t in data.splits["valid"])
        state = pyro.util.get_rng_state()
        try:
            with torch.no_grad():
                config.objective_loss().loss(module.model, module.guide, x, y)
        except (ValueError, NotImplementedError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DgmPyroError(f"objective '{config.objective}' cannot train this {self.name} model: {first}") from None
        finally:
            pyro.util.set_rng_state(state)

    def chunk_elements(self, config: DatasetConfig) -> int:
        """Elements of x in one chunk of particles of an evaluation or a validation (``max_elements`` of
        :func:`~dgm_pyro.infer.evidence.log_evidence_blocks`): fewer for networks much wider than x."""
        return MAX_CHUNK_ELEMENTS

    def annealing_schedule(self, config: DatasetConfig, data: ConditionalDataset) -> Any:
        total = config.epochs * steps_per_epoch(data.sizes()["train"], config.batch_size)
        return parse_schedule(config.anneal, total_steps=total)

    def callbacks(self, config: DatasetConfig, data: ConditionalDataset, device: torch.device,
                  track_collapse: bool = False) -> list[Any]:
        """Annealing, then validation with early stopping (on the log-likelihood for importance-weighted
        objectives) and, with ``track_collapse``, collapse measures per label group (subclasses add more)."""
        annealing = KLAnnealing(self.annealing_schedule(config, data))
        x, y = to_device(device, *data.splits["valid"])
        groups = y.argmax(1) if track_collapse and data.condition == "label" else None
        criterion = "log_likelihood" if config.objective in ("iwae", "dreg") else "elbo"
        callbacks = [annealing, Validation((x, y), config.valid_particles, config.patience, annealing,
                                           track_collapse=track_collapse, groups=groups, criterion=criterion,
                                           max_elements=self.chunk_elements(config))]
        if config.lr_schedule != "constant":
            callbacks.insert(0, LearningRateSchedule(config.lr_schedule, config.lr, config.epochs))
        if config.log == "tensorboard":
            from ..tensorboard import TensorBoardLogger

            callbacks.append(TensorBoardLogger(None, (x, y), data, site=self.latent_site))
        return callbacks

    def trainer(self, config: DatasetConfig, module: torch.nn.Module, train: tuple[torch.Tensor, ...],
                run_dir: Path, callbacks: list[Any], progress: bool, loss: Optional[Any] = None,
                label: str = "train", binarize: Sequence[int] = ()) -> Trainer:
        return Trainer(module, Minibatches(train, config.batch_size, config.epochs, binarize), run_dir,
                       loss=loss if loss is not None else config.objective_loss(), lr=config.lr,
                       clip_norm=config.clip_norm, seed=config.seed, skip_bad_steps=config.skip_bad_steps,
                       callbacks=callbacks, config_digest=config.digest(), progress=progress, label=label)

    def fit(self, config: DatasetConfig, data: ConditionalDataset, module: torch.nn.Module, run_dir: str | Path,
            loss: Optional[Any] = None, resume: bool = False, progress: bool = False, callbacks: Sequence[Any] = (),
            device: str | torch.device = "cpu") -> dict[str, Any]:
        """Train ``module`` on the training split into ``run_dir`` with this model's callbacks (and
        ``callbacks``); ``loss`` overrides the configured objective. Returns the training summary."""
        device = torch.device(device)
        trainer = self.trainer(config, module, to_device(device, *data.splits["train"]), Path(run_dir),
                               self.callbacks(config, data, device) + list(callbacks), progress, loss=loss,
                               binarize=data.binarized_columns())
        return trainer.fit(resume=resume)

    def train(self, config: DatasetConfig, data: ConditionalDataset, module: torch.nn.Module, run_dir: Path,
              resume: bool, progress: bool, callbacks: list[Any], device: torch.device) -> dict[str, Any]:
        summary = self.fit(config, data, module, run_dir, resume=resume, progress=progress, callbacks=callbacks,
                           device=device)
        if D.rank() == 0:
            plot_training_curves(run_dir)
        return summary

    def final_evaluation(self, run: DatasetRun, progress: bool = False) -> Optional[dict[str, Any]]:
        """The evaluation ``dgm-pyro train`` reports: :meth:`evaluate` with the configured particles (none with 0)."""
        if run.config.eval_particles == 0:
            return None
        return self.evaluate(run, particles=run.config.eval_particles, seed=run.config.seed, progress=progress)

    def make_run(self, path: Path, config: Any, data: ConditionalDataset, module: torch.nn.Module,
                 device: torch.device) -> DatasetRun:
        return DatasetRun(path, config, module, self, device, dataset=data)

    # ------------------------------------------------------------------ commands

    def evaluate(self, run: DatasetRun, particles: int = 1000, split: str = "test", seed: int = 0,
                 write: bool = True, progress: bool = False, method: str = "auto", ais_steps: int = 100,
                 rounds: int = 3, refine_rounds: int = 8) -> dict[str, Any]:
        """Test ELBO and the log-likelihood (K particles) with PSIS diagnostics (seed P1.7): with ``method="is"``
        importance-sampled with the encoder as proposal, with ``method="adaptive"`` by adaptive importance sampling
        over ``rounds`` rounds after the encoder's (:mod:`dgm_pyro.infer.adaptive`), with ``method="ais"`` by
        annealed importance sampling over ``ais_steps`` temperatures; ``"auto"`` (the default) is adaptive where it
        applies (continuous latents, each with an encoder site), else ``is``: an encoder alone leaves a third of
        the digits' weights unreliable (k-hat > 0.7), the adapted proposal under 1 % (docs/benchmarks.md).
        With the adaptive method, the datapoints whose k-hat is still above 0.7 are estimated again, with fresh
        draws and ``refine_rounds`` adapted rounds (0 or at most ``rounds``: not): each datapoint's reported value
        is then one run's estimate, unbiased in the same sense, and on MNIST the share above 0.7 falls from 6.8 %
        to under 1 % for a tenth more time (docs/mnist.md). ``out["refined"]`` says how many were.

        Adds the exact log-likelihood of the data-generating process where known (linear-Gaussian) and,
        where the run has one, the baseline's exact negative conditional log-likelihood. All values are nats
        per datapoint (sums over the dimensions of x). When ``write``, writes ``evaluation.json``, unless that
        holds an evaluation of another split or method, or of the same with more particles: then this one goes
        to ``evaluation-<split>-<method>-K<particles>.json`` beside it, and a line says so. ``out["file"]`` names
        it.
        """
        if particles < 1:
            raise DgmPyroError(f"particles must be >= 1, got {particles}")
        x, y = to_device(run.device, *run.dataset.splits[split])
        method = resolve_method(method, run.module.model, run.module.guide, x, y, num_particles=particles)
        pyro.set_rng_seed(seed)
        log.info("evaluating: %s log-likelihood of the %s split, %d %s", ESTIMATORS[method], split, particles,
                 "chains" if method == "ais" else "particles")

        def estimate(rows: Any, num_rounds: int) -> EvidenceResult:
            # blocks of datapoints (their estimates are independent): adaptive importance sampling holds a D x D
            # covariance per datapoint, 3.2 GB for 10,000 test images at D = 200 in one block
            return log_evidence_blocks(run.module.model, run.module.guide, x[rows], None if y is None else y[rows],
                                       block_size=EVALUATION_BLOCK, max_elements=self.chunk_elements(run.config),
                                       num_particles=particles, warn=False,
                                       progress=progress, method=method, num_steps=ais_steps, num_rounds=num_rounds)

        res = estimate(slice(None), rounds)
        settings = {"ais": {"ais_steps": ais_steps}, "adaptive": {"rounds": rounds}}.get(method, {})
        refined = (res.khat > KHAT_WARN).nonzero().squeeze(1) if method == "adaptive" and refine_rounds > rounds \
            else torch.zeros(0, dtype=torch.long)
        if refined.numel():
            log.info("estimating the %d datapoints with k-hat > %.1f again with %d adapted rounds", refined.numel(),
                     KHAT_WARN, refine_rounds)
            again = estimate(refined.to(x.device), refine_rounds)
            # the estimate and its diagnostics are the new run's; the ELBO stays the first run's guide draws (round
            # 0, the same draws as method "is" with this seed), an estimate neither more nor less reliable
            for field in ("log_evidence", "stderr", "ess", "khat"):
                getattr(res, field)[refined.to(getattr(res, field).device)] = getattr(again, field)
        if method == "adaptive":
            settings["refined"] = {"rounds": refine_rounds, "datapoints": int(refined.numel())}
        out: dict[str, Any] = {"run": str(run.path), "split": split, "dataset": run.config.dataset, "seed": seed,
                               "method": method, **settings, **res.summary()}
        out["nll"] = -out["log_evidence"]
        if run.dataset.true_log_likelihood is not None:
            out["true_log_likelihood"] = float(run.dataset.true_log_likelihood(*run.dataset.splits[split]).mean())
        if run.baseline is not None:
            base = log_evidence(run.baseline.model, run.baseline.guide, x, y, num_particles=1, diagnostics=False,
                                warn=False)
            out["baseline_ncll"] = -float(base.log_evidence.mean())
            out["cvae_ncll"] = out["nll"]
            out["cvae_neg_elbo"] = -out["elbo"]
        # one value per datapoint (row of the split, in order), in the file: the means above summarise them
        out["per_datapoint"] = {"refined": refined.tolist(),
                                "log_evidence": res.log_evidence.tolist(), "elbo": res.elbo.tolist(),
                                "stderr": res.stderr.tolist(), "khat": [None if not math.isfinite(k) else k
                                                                         for k in res.khat.tolist()]}
        if write:
            out["file"] = str(_evaluation_path(run.path, out))
            write_json(out["file"], out)
        return out

    def diagnose(self, run: DatasetRun, particles: int = 1000, split: str = "test", seed: int = 0,
                 num_samples: int = 10, minibatch_size: int = 100, write: bool = True) -> CollapseReport:
        """The posterior-collapse report (:func:`dgm_pyro.diagnostics.collapse_report`) of a run on a split.

        For label-conditioned data the measures are conditional on the label (the aggregate posterior is
        formed per class, so MI is I(x; z | y)); otherwise they are over the whole split. When ``write``,
        writes ``diagnostics.json``, ``plots/kl_per_dimension.png`` and, for a run that tracked collapse,
        ``plots/collapse_over_training.png``, and lists them in ``report.extra["files"]``.
        """
        if particles < 0:
            raise DgmPyroError(f"particles must be >= 0, got {particles}")
        if num_samples < 1:
            raise DgmPyroError(f"samples must be >= 1, got {num_samples}")
        x, y = to_device(run.device, *run.dataset.splits[split])
        groups = y.argmax(1) if run.dataset.condition == "label" else None
        report = collapse_report(run.module.model, run.module.guide, x, y, site=self.latent_site, groups=groups,
                                 num_samples=num_samples, minibatch_size=minibatch_size, particles=particles, seed=seed)
        report.extra.update({"run": str(run.path), "split": split, "seed": seed, "particles": particles,
                             "conditioned_on": "label" if groups is not None else "none"})
        if write:
            plots = [plot_kl_per_dimension(report, run.path / "plots" / "kl_per_dimension.png"),
                     plot_collapse_over_training(run.path, report.latent_dim)]
            report.extra["files"] = [str(run.path / "diagnostics.json")] + [str(p) for p in plots if p is not None]
            write_json(run.path / "diagnostics.json", report.to_dict())
        return report

    def conditions(self, run: DatasetRun, label: Optional[int] = None,
                   condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The conditions y (C, y_dim) that :meth:`sample` draws for: the rows of ``condition``; else every class
        (or ``label``) of label-conditioned data, one empty row of unconditional data, the first 8 test
        conditions of other data (for quadrant completion, the given quadrants of the first test images)."""
        ds = run.dataset
        if condition is not None:
            if label is not None:
                raise DgmPyroError("give either a label or a condition, not both")
            if condition.dim() != 2 or condition.shape[1] != ds.y_dim:
                raise DgmPyroError(f"condition must have shape (N, {ds.y_dim}); got {tuple(condition.shape)}")
            if not torch.isfinite(condition).all():
                raise DgmPyroError("condition contains NaN or infinite values")
            return condition
        if ds.condition == "label":
            if label is not None and not 0 <= label < ds.num_classes:
                raise DgmPyroError(f"label must be between 0 and {ds.num_classes - 1}, got {label}")
            labels = range(ds.num_classes) if label is None else [label]
            return torch.nn.functional.one_hot(torch.tensor(list(labels)), ds.num_classes).float()
        if label is not None:
            raise DgmPyroError(f"dataset '{ds.name}' is not label-conditioned; give a condition instead of a label")
        return torch.zeros(1, 0) if ds.condition == "none" else ds.splits["test"][1][:8]

    def sample(self, run: DatasetRun, label: Optional[int] = None, condition: Optional[torch.Tensor] = None,
               num: int = 8, mean: bool = True, seed: int = 0, texts: Optional[list[str]] = None,
               **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``num`` samples for each of :meth:`conditions` (seed P1.8), drawn by :meth:`draw` with ``options`` (the
        model's ``sample_options``). Returns ``(x, y)`` on the CPU: ``x`` (C, num, x_dim) and the C conditions y."""
        if texts is not None:
            raise DgmPyroError(f"{run.path}: not a text-conditioned run (dataset '{run.dataset.name}'); prompts need "
                               "a run trained on captions")
        return self.draw_per_condition(run, self.conditions(run, label, condition), num, mean, seed, **options)

    def draw_per_condition(self, run: DatasetRun, y: torch.Tensor, num: int, mean: bool, seed: int,
                           **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``num`` draws of :meth:`draw` per row of ``y``, after seeding with ``seed``: (x (C, num, x_dim), y)."""
        if num < 1:
            raise DgmPyroError(f"num must be >= 1, got {num}")
        pyro.set_rng_seed(seed)
        x = self.draw(run, y.repeat_interleave(num, 0).to(run.device), mean, **options).cpu()
        return x.reshape(y.shape[0], num, -1), y

    def draw(self, run: DatasetRun, y: torch.Tensor, mean: bool, **options: Any) -> torch.Tensor:
        """One x per row of ``y``, shape (N, x_dim): the module's ``sample(y, mean=mean)`` where it has one, else
        ``model(None, y)`` run forward (z from the prior), taking the mean of the distribution at
        ``observed_site`` (``mean``) or its draw. Subclasses with ``sample_options`` override this."""
        if options:
            raise DgmPyroError(f"a {self.name} run's sample takes no {', '.join(sorted(options))}")
        if callable(getattr(run.module, "sample", None)):
            with torch.no_grad():
                return run.module.sample(y, mean=mean)
        return self.draw_from(run.module.model, run, y, mean)

    def draw_from(self, model: Callable, run: DatasetRun, y: torch.Tensor, mean: bool) -> torch.Tensor:
        """``model(None, y)`` run forward (a model kind may pass it conditioned, ``poutine.condition(model,
        data={"z": z})``): the mean of the distribution at ``observed_site`` (``mean``), or its draw; (N, x_dim)."""
        with torch.no_grad():
            site = poutine.trace(model).get_trace(None, y).nodes.get(self.observed_site)
        if site is None or site["type"] != "sample":
            raise DgmPyroError(f"the {self.name} model has no sample site '{self.observed_site}' to draw; name its "
                               "observed site in the model kind's observed_site")
        d = site["fn"]
        if not mean:
            return site["value"].to(torch.float32)
        return likelihood_mean(d, run.dataset.likelihood) if isinstance(d, Independent) else d.mean
