"""The one SVI training loop used by every model.

Minibatch stochastic variational inference on ``module.model`` / ``module.guide`` with any objective
that has Pyro's ``differentiable_loss`` (``Trace_ELBO`` by default), Adam, gradient-norm clipping,
validation every epoch (ELBO and K-particle importance-sampled log-likelihood), early stopping, a
metrics row per epoch, weights-only checkpoints (latest and best) and exact resume: the checkpoint
holds the parameters, the optimiser state, the early-stopping state and every random-number state, so
stopping after epoch k and resuming reproduces the uninterrupted run bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import csv
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from . import distributed as D
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .errors import DgmPyroError
from .infer.annealing import Annealing, parse_schedule
from .infer.cs_elbo import CSELBO
from .infer.evidence import log_evidence
from .infer.free_bits import FreeBitsELBO

__all__ = ["fit", "build_objective", "describe_objective", "build_annealing", "steps_per_epoch", "METRIC_FIELDS",
           "COLLAPSE_FIELDS", "read_metrics", "environment", "fit_sequence", "SEQUENCE_FIELDS", "deterministic_algorithms"]

#: ``seconds`` is the whole epoch, ``train_seconds`` its optimisation steps only (throughput = rows / train_seconds)
METRIC_FIELDS = ["epoch", "train_loss", "beta_mean", "beta_last", "valid_elbo", "valid_log_likelihood", "best",
                 "seconds", "train_seconds"]
#: extra columns with ``track_collapse`` or ``aggressive``: validation KL, mutual information, active units
COLLAPSE_FIELDS = ["valid_kl", "valid_mi", "valid_au", "aggressive"]
CHECKPOINT_FORMAT = 3
#: aggressive training (He et al. 2019): at most this many encoder steps per decoder step, and the
#: encoder loss is compared over windows of this many steps (stop when a window is no better)
AGGRESSIVE_MAX_INNER, AGGRESSIVE_WINDOW = 100, 10


def build_objective(config: TrainConfig) -> ELBO:
    """The Pyro loss named by ``config.objective`` (``elbo``, ``meanfield``, ``cs``, ``free-bits``)."""
    common = {"num_particles": config.num_particles, "vectorize_particles": config.num_particles > 1}
    if config.objective == "meanfield":
        return TraceMeanField_ELBO(**common)
    if config.objective == "cs":
        return CSELBO(lam=config.lam, **common)
    if config.objective == "free-bits":
        return FreeBitsELBO(lam=config.free_bits, per=config.free_bits_per, **common)
    return Trace_ELBO(**common)


def describe_objective(loss: Any) -> str:
    """A one-line description with the formula; Pyro's own ELBOs have no informative repr."""
    formulas = {TraceMeanField_ELBO: "E_q[log p(x|z)] - KL(q(z|x) || p(z))",
                Trace_ELBO: "E_q[log p(x|z) + log p(z) - log q(z|x)]"}
    for cls, formula in formulas.items():
        if type(loss) is cls:
            return f"{cls.__name__}(num_particles={loss.num_particles}): {formula}"
    return repr(loss)


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    return math.ceil(num_train / batch_size)


def build_annealing(config: TrainConfig, num_train: int) -> Optional[Annealing]:
    """``config.anneal`` as an :class:`Annealing` over the run's optimisation steps (``None`` for ``none``)."""
    schedule = parse_schedule(config.anneal, total_steps=config.epochs * steps_per_epoch(num_train, config.batch_size))
    return None if schedule is None else Annealing(schedule)


def environment() -> dict[str, str]:
    """Versions recorded with every run and checkpoint."""
    import platform

    import importlib.metadata

    from . import __version__

    return {"dgm_pyro": __version__, "torch": str(torch.__version__), "pyro": str(pyro.__version__),
            "numpy": str(np.__version__), "click": importlib.metadata.version("click"), "python": platform.python_version()}


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


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as dicts of floats."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _write_metrics(path: Path, rows: list[dict[str, float]], fields: list[str]) -> None:
    from .checkpoint import atomic_write_text

    lines = [",".join(fields)]
    lines += [",".join(repr(float(r[k])) if k not in ("epoch", "step") else str(int(r[k])) for k in fields) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _validate(module, data, particles: int) -> tuple[float, float]:
    res = log_evidence(module.model, module.guide, *data, num_particles=particles, diagnostics=False, warn=False)
    return float(res.elbo.mean()), float(res.log_evidence.mean())


def _collapse_stats(module, valid: tuple[torch.Tensor, ...], groups: Optional[torch.Tensor]) -> dict[str, float]:
    """Validation KL, mutual information (per group if given) and active units, without touching the RNG
    that training uses (tracking must not change the run)."""
    from .diagnostics import collapse_report

    with torch.random.fork_rng():
        report = collapse_report(module.model, module.guide, *valid, groups=groups, num_samples=10, particles=0)
    return {"valid_kl": report.kl, "valid_mi": report.mutual_information, "valid_au": float(report.active_units)}


def _resume_checkpoint(ckpt_path: Path, config: Any, module: torch.nn.Module) -> dict[str, Any]:
    """Load the checkpoint to resume from, check it was made with ``config``, and restore the module's weights."""
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.get("config_digest") != config.digest():
        raise DgmPyroError(f"{ckpt_path}: made with a different configuration than "
                           f"{ckpt_path.parent / 'config.json'}; cannot resume")
    module.load_state_dict(ckpt["model_state"])
    return ckpt


@contextlib.contextmanager
def deterministic_algorithms():
    """``torch.use_deterministic_algorithms(True)`` for the duration: torch-geometric's message passing
    accumulates with scatter operations whose multi-threaded CPU results otherwise vary from run to run in
    the last bits, which breaks "same seed, same numbers" and exact resume."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _non_finite(what: str, where: str, allowed: int, ckpt_path: Path, last: Optional[str]) -> DgmPyroError:
    """The one-line error for a NaN/inf loss or gradient that may not be skipped."""
    kept = f"the last good checkpoint is {ckpt_path} ({last})" if last else "no checkpoint was written yet"
    skipped = f"; more than {allowed} bad steps were skipped" if allowed else ""
    return DgmPyroError(f"the {what} became non-finite at {where}{skipped}; training stopped and {kept}; try a "
                        "lower --lr or a smaller clip_norm, or allow a few bad steps with --skip-bad-steps N")


def fit(module: torch.nn.Module, train: tuple[torch.Tensor, ...], valid: tuple[torch.Tensor, ...], config: TrainConfig,
        run_dir: str | Path, loss: Optional[Any] = None, resume: bool = False, progress: bool = False,
        on_epoch: Optional[Callable[[dict[str, float]], None]] = None,
        collapse_groups: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """Train ``module.model``/``module.guide`` by minibatch SVI, writing checkpoints into ``run_dir``.

    Args:
        module: a ``PyroModule`` with ``model(*batch)`` and ``guide(*batch)``.
        train, valid: tuples of tensors sharing the first (datapoint) dimension, passed as ``*batch``.
        config: epochs, batch size, learning rate, patience, clipping, particles, seed.
        run_dir: folder for ``metrics.csv``, ``checkpoint.pt`` (latest) and ``best.pt`` (best valid ELBO).
        loss: any object with ``differentiable_loss(model, guide, *args)`` (default: :func:`build_objective`).
        resume: continue from ``run_dir/checkpoint.pt``.
        progress: show a progress bar.
        on_epoch: called with each epoch's metrics row.
        collapse_groups: labels of the validation rows, for the conditional mutual information I(x; z | y)
            tracked with ``config.track_collapse`` or ``config.aggressive``.

    With ``config.aggressive`` (He et al. 2019, "Lagging inference networks and posterior collapse"):
    before each decoder update the encoder alone is updated on fresh random minibatches until its loss
    stops improving (compared over windows of ``AGGRESSIVE_WINDOW`` steps, at most ``AGGRESSIVE_MAX_INNER``
    steps); the run leaves aggressive mode for joint updates after the first epoch whose validation
    mutual information is not higher than the best so far. ``module.guide_parameters()`` names the
    encoder's parameters.

    Returns:
        ``{"epochs_run", "best_epoch", "best_valid_elbo", "stopped", "skipped_steps", "objective", "annealing"}``
        (the last two as reprs).
    """
    run_dir = Path(run_dir)
    loss = loss if loss is not None else build_objective(config)
    n = train[0].shape[0]
    annealing = build_annealing(config, n)
    run_dir.mkdir(parents=True, exist_ok=True)
    pyro.clear_param_store()
    rank, world = D.rank(), D.world_size()
    if world > 1 and config.aggressive:
        raise DgmPyroError("--aggressive is not supported with several processes (its inner loop is sequential)")
    pyro.set_rng_seed(config.seed + rank)  # each rank its own latent draws; rank 0 as a single process
    gen = torch.Generator().manual_seed(config.seed)  # the same minibatch order on every rank
    # two Adam optimisers over disjoint sets act exactly like one over their union; aggressive training
    # steps them separately
    if config.aggressive and not hasattr(module, "guide_parameters"):
        raise DgmPyroError("aggressive training needs a module with guide_parameters() (the encoder's parameters)")
    enc_params = list(module.guide_parameters()) if hasattr(module, "guide_parameters") else []
    enc_ids = {id(p) for p in enc_params}
    gen_params = [p for p in module.parameters() if id(p) not in enc_ids]
    all_params = list(module.parameters())
    gen_opt = torch.optim.Adam(gen_params, lr=config.lr)
    enc_opt = torch.optim.Adam(enc_params, lr=config.lr) if enc_params else None
    optimizers = [gen_opt] + ([enc_opt] if enc_opt is not None else [])
    track = config.track_collapse or config.aggressive
    fields = METRIC_FIELDS + (COLLAPSE_FIELDS if track else [])
    state: dict[str, Any] = {"epoch": 0, "best_valid_elbo": -math.inf, "best_epoch": 0, "bad_epochs": 0, "stopped": "",
                             "aggressive": bool(config.aggressive), "best_valid_mi": -math.inf, "skipped_steps": 0}
    rows: list[dict[str, float]] = []
    ckpt_path, metrics_path = run_dir / "checkpoint.pt", run_dir / "metrics.csv"
    if resume:
        ckpt = _resume_checkpoint(ckpt_path, config, module)
        for opt, opt_state in zip(optimizers, ckpt["optim_state"]):
            opt.load_state_dict(opt_state)
        state.update(ckpt["trainer_state"])
        ranks = ckpt.get("rng_ranks")
        if (len(ranks) if ranks else 1) != world:
            raise DgmPyroError(f"{ckpt_path}: written by {len(ranks) if ranks else 1} process(es); resume it with "
                               f"the same number (this run has {world})")
        _set_rng_state(ranks[rank] if ranks else ckpt["rng"], gen)
        if annealing is not None:
            annealing.load_state_dict(ckpt["annealing"])
        rows = [r for r in read_metrics(metrics_path) if r["epoch"] <= state["epoch"]]
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, initial=state["epoch"], desc="train", unit="epoch", leave=False)

    def step(batch: tuple[torch.Tensor, ...], count: int, params: list, opts: list, check: bool, epoch: int,
             where: int) -> float:
        """One optimisation step of ``opts`` on ``params`` for a minibatch of ``count`` rows of which this rank
        holds ``batch``; NaN (and no update) for a skipped bad step."""
        for opt in optimizers:
            opt.zero_grad()
        value = torch.zeros(())
        if batch[0].shape[0]:
            # Pyro's argument checks cost about a third of a step on small networks: run them on the
            # first minibatch of the run (to catch model errors early) and not after.
            with pyro.validation_enabled(check), \
                    (annealing.handler() if annealing is not None else contextlib.nullcontext()):
                value = loss.differentiable_loss(module.model, module.guide, *batch) / count
            if torch.isfinite(value):
                value.backward()
        # with several ranks: the sums of the shards' losses and gradients are the minibatch's
        value = D.all_reduce_gradients(params, value)
        bad = "loss" if not torch.isfinite(value) else None
        if bad is None:
            norm = torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
            bad = "gradient norm" if not torch.isfinite(norm) else None
        if bad is not None:
            # no update from a non-finite step: skip it (when allowed) or stop with the last checkpoint
            state["skipped_steps"] += 1
            if state["skipped_steps"] > config.skip_bad_steps:
                raise _non_finite(bad, f"epoch {epoch}, step {where}", config.skip_bad_steps, ckpt_path,
                                  f"epoch {state['epoch']}" if state["epoch"] else None)
            return math.nan
        for opt in opts:
            opt.step()
        return float(value.detach())

    while state["epoch"] < config.epochs and not state["stopped"]:
        epoch = state["epoch"] + 1
        start = time.perf_counter()
        module.train()
        perm = torch.randperm(n, generator=gen)
        total, counted = 0.0, 0
        betas = []
        aggressive_now = state["aggressive"]

        for i in range(0, n, config.batch_size):
            idx = perm[i : i + config.batch_size]
            batch = tuple(t[idx[rank::world]] for t in train)
            first, where = epoch == 1 and i == 0, i // config.batch_size + 1
            betas.append(annealing.beta if annealing is not None else 1.0)
            if aggressive_now:
                window, previous = 0.0, math.inf
                for j in range(1, AGGRESSIVE_MAX_INNER + 1):
                    inner = torch.randint(n, (config.batch_size,), generator=gen)
                    window += step(tuple(t[inner] for t in train), len(inner), enc_params, [enc_opt],
                                   first and j == 1, epoch, where)
                    if j % AGGRESSIVE_WINDOW == 0:
                        if window >= previous:
                            break
                        window, previous = 0.0, window
                value = step(batch, len(idx), gen_params, [gen_opt], False, epoch, where)
            else:
                value = step(batch, len(idx), all_params, optimizers, first, epoch, where)
            if annealing is not None:
                annealing.step()
            if math.isfinite(value):
                total += value * len(idx)
                counted += len(idx)
        train_seconds = time.perf_counter() - start
        module.eval()
        # rank 0 validates and tells the others, so that every rank takes the same decisions
        checked = None
        if rank == 0:
            checked = (*_validate(module, valid, config.valid_particles),
                       _collapse_stats(module, valid, collapse_groups) if track else {})
        valid_elbo, valid_ll, collapse = D.broadcast_object(checked)
        if aggressive_now:
            if collapse["valid_mi"] > state["best_valid_mi"]:
                state["best_valid_mi"] = collapse["valid_mi"]
            else:
                state["aggressive"] = False  # the mutual information stopped rising: joint updates from now
        improved = valid_elbo > state["best_valid_elbo"]
        state.update(epoch=epoch)
        if improved:
            state.update(best_valid_elbo=valid_elbo, best_epoch=epoch, bad_epochs=0)
        elif annealing is None or annealing.settled:
            # while beta is still moving the objective changes under the model: patience waits for it
            state["bad_epochs"] += 1
            if state["bad_epochs"] >= config.patience:
                state["stopped"] = "early"
        row = {"epoch": epoch, "train_loss": total / counted if counted else math.nan,
               "beta_mean": sum(betas) / len(betas), "beta_last": betas[-1],
               "valid_elbo": valid_elbo, "valid_log_likelihood": valid_ll, "best": float(improved),
               "seconds": time.perf_counter() - start, "train_seconds": train_seconds, **collapse}
        if track:
            row["aggressive"] = float(aggressive_now)
        rows.append(row)
        rng = _rng_state(gen)
        all_rng = D.gather_objects(rng) if world > 1 else None
        if rank == 0:
            # metrics first, checkpoint second: on resume, rows past the checkpoint's epoch are dropped
            _write_metrics(metrics_path, rows, fields)
            ckpt = {"format": CHECKPOINT_FORMAT, "model_state": module.state_dict(),
                    "optim_state": [opt.state_dict() for opt in optimizers],
                    "trainer_state": dict(state), "rng": rng, "config_digest": config.digest(),
                    "annealing": annealing.state_dict() if annealing is not None else {},
                    "versions": environment()}
            if all_rng is not None:
                ckpt["rng_ranks"] = all_rng
            if improved:
                save_checkpoint(ckpt, run_dir / "best.pt")
            save_checkpoint(ckpt, ckpt_path)
        D.barrier()
        if on_epoch is not None and rank == 0:
            on_epoch(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.2f}", valid_elbo=f"{valid_elbo:.2f}")
    if bar is not None:
        bar.close()
    return {"epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
            "best_valid_elbo": state["best_valid_elbo"], "stopped": state["stopped"] or "max_epochs",
            "skipped_steps": state["skipped_steps"],
            "objective": describe_objective(loss), "annealing": repr(annealing.schedule) if annealing is not None else "none"}


SEQUENCE_FIELDS = ["step", "train_loss", "teacher_forcing", "seconds"]


def fit_sequence(module: torch.nn.Module, args: tuple, config: Any, run_dir: str | Path, loss: Optional[Any] = None,
                 resume: bool = False, progress: bool = False, normaliser: float = 1.0,
                 on_checkpoint: Optional[Callable[[dict[str, float]], None]] = None) -> dict[str, Any]:
    """Full-batch SVI of ``module.model(*args, teacher_forcing=eps)`` / ``module.guide`` on one sequence.

    Runs ``config.steps`` Adam steps with gradient-norm clipping; eps follows ``config.scheduled_sampling``
    (seed P4.5). Every ``config.checkpoint_every`` steps a metrics row (mean loss / ``normaliser`` over the
    interval) and a weights-only checkpoint with every random-number state are written, so that a run
    resumed from any checkpoint ends with the same parameters as an uninterrupted one. Non-finite losses
    or gradients stop training (or are skipped ``config.skip_bad_steps`` times) as in :func:`fit`.

    Returns ``{"steps_run", "final_loss", "skipped_steps", "objective", "teacher_forcing"}``.
    """
    from .infer.scheduled_sampling import parse_teacher_forcing

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    loss = loss if loss is not None else Trace_ELBO()
    schedule = parse_teacher_forcing(config.scheduled_sampling)
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)  # unused by the loop; kept for the shared RNG record
    params = list(module.parameters())
    opt = torch.optim.Adam(params, lr=config.lr)
    state: dict[str, Any] = {"step": 0, "skipped_steps": 0}
    rows: list[dict[str, float]] = []
    ckpt_path, metrics_path = run_dir / "checkpoint.pt", run_dir / "metrics.csv"
    if resume:
        ckpt = _resume_checkpoint(ckpt_path, config, module)
        opt.load_state_dict(ckpt["optim_state"][0])
        state.update(ckpt["trainer_state"])
        _set_rng_state(ckpt["rng"], gen)
        rows = [r for r in read_metrics(metrics_path) if r["step"] <= state["step"]]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=state["step"], desc="train", unit="step", leave=False)
    module.train()
    with deterministic_algorithms():
        while state["step"] < config.steps:
            start = time.perf_counter()
            values, eps = [], 1.0
            for _ in range(min(config.checkpoint_every, config.steps - state["step"])):
                eps = schedule(state["step"])
                opt.zero_grad()
                try:
                    with pyro.validation_enabled(state["step"] == 0):
                        value = loss.differentiable_loss(module.model, module.guide, *args,
                                                         teacher_forcing=eps) / normaliser
                except ValueError as e:
                    if "invalid values" not in str(e):  # a NaN distribution parameter caught by Pyro's checks
                        raise
                    value = torch.tensor(math.nan)
                bad = "loss" if not torch.isfinite(value) else None
                if bad is None:
                    value.backward()
                    if not torch.isfinite(torch.nn.utils.clip_grad_norm_(params, config.clip_norm)):
                        bad = "gradient norm"
                state["step"] += 1
                if bad is not None:
                    state["skipped_steps"] += 1
                    if state["skipped_steps"] > config.skip_bad_steps:
                        done = [r["step"] for r in rows]
                        raise _non_finite(bad, f"step {state['step']}", config.skip_bad_steps, ckpt_path,
                                          f"step {int(done[-1])}" if done else None)
                    continue
                opt.step()
                values.append(float(value.detach()))
                if bar is not None:
                    bar.update(1)
            row = {"step": state["step"], "train_loss": sum(values) / len(values) if values else math.nan,
                   "teacher_forcing": eps, "seconds": time.perf_counter() - start}
            rows.append(row)
            _write_metrics(metrics_path, rows, SEQUENCE_FIELDS)
            save_checkpoint({"format": CHECKPOINT_FORMAT, "model_state": module.state_dict(),
                             "optim_state": [opt.state_dict()], "trainer_state": dict(state), "rng": _rng_state(gen),
                             "config_digest": config.digest(), "versions": environment()}, ckpt_path)
            if on_checkpoint is not None:
                on_checkpoint(row)
    if bar is not None:
        bar.close()
    module.eval()
    return {"steps_run": state["step"], "final_loss": rows[-1]["train_loss"] if rows else math.nan,
            "skipped_steps": state["skipped_steps"], "objective": describe_objective(loss),
            "teacher_forcing": repr(schedule)}
