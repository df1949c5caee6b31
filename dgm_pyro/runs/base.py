"""The run-folder lifecycle shared by every model: train into ``runs/<model>-<timestamp>/``, resume, load.

A run folder holds ``config.json`` (the resolved configuration, with the model's registered name),
``environment.json`` (versions, seed, threads, processes, device, data summary), ``metrics.csv``,
``checkpoint.pt`` (latest, for resume), ``best.pt`` where the model validates, ``plots/`` and what later
commands write. What differs between models is a :class:`ModelKind`, found in the registry
(:mod:`dgm_pyro.registry`) by the model name.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import pyro
import torch

from .. import distributed as D
from ..checkpoint import load_checkpoint, read_json, write_json
from ..config import ConfigBase
from ..errors import DgmPyroError
from ..registry import get_model
from ..training import environment, read_metrics

__all__ = ["ModelKind", "Run", "train_run", "load_run", "read_run_config", "new_run_dir", "require_run_dir",
           "restart_in_place", "load_weights", "run_data", "training_state", "unfinished_training", "extend_run"]

log = logging.getLogger("dgm_pyro.runs")


@dataclass
class Run:
    """A loaded run folder: its configuration, trained module (``kind.weights(config)``) on ``device`` and,
    where trained, its baseline. Model kinds add what their commands need (the dataset, held-out snapshots)."""

    path: Path
    config: Any
    module: torch.nn.Module
    kind: Any = None
    device: torch.device = torch.device("cpu")
    baseline: Optional[torch.nn.Module] = None


class ModelKind:
    """How one model is configured, built, trained and evaluated in a run folder; subclass and register
    with :func:`dgm_pyro.registry.register_model`.

    Class attributes:
        name: the registered name (``dgm-pyro train NAME``, ``config.json``'s ``model``).
        config_class: the configuration dataclass (fields made with :func:`dgm_pyro.config.option`; it
            needs ``model``, ``dataset`` and ``seed`` fields).
        description: one line for ``dgm-pyro train --help``.
        commands: the later commands its runs support (``evaluate``, ``sample``, ``diagnose``, ``forecast``),
            each a method of the same name taking the :class:`Run` first.
        checkpoint: the weights that ``load`` restores (``best.pt`` or ``checkpoint.pt``).
        distributed: whether it trains data-parallel under ``torchrun``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = ConfigBase
    description: ClassVar[str] = ""
    commands: ClassVar[tuple[str, ...]] = ()
    checkpoint: ClassVar[str] = "checkpoint.pt"
    distributed: ClassVar[bool] = False

    def weights(self, config: Any) -> str:
        """The weights file that ``load_run`` restores for this configuration (default ``checkpoint``)."""
        return self.checkpoint

    def load_data(self, config: Any) -> Any:
        """The data the configuration names (checked: a bad dataset raises :class:`DgmPyroError`)."""
        raise NotImplementedError

    def check(self, config: Any, data: Any) -> None:
        """Checks of the configuration against the data, before any folder is made."""

    def build(self, config: Any, data: Any) -> torch.nn.Module:
        """The module the configuration describes, sized for the data (weights from Pyro's seeded RNG)."""
        raise NotImplementedError

    def data_summary(self, data: Any) -> dict[str, Any]:
        return {}

    def describe_data(self, data: Any) -> str:
        """One line about the data, announced before training starts."""
        return ", ".join(f"{k} {v}" for k, v in self.data_summary(data).items())

    def unfinished(self, config: Any, run_dir: Path) -> list[str]:
        """What training of a run still has to do, one phrase per part (empty: the run is complete).
        Kinds that train a baseline into ``run_dir/baseline`` add it."""
        part = unfinished_training(run_dir, config, "training")
        return [part] if part else []

    def check_module(self, config: Any, data: Any, module: torch.nn.Module) -> None:
        """Checks that need the built module (that the objective applies to the model), before any folder is made."""

    def check_extension(self, config: Any) -> None:
        """Refuse (:class:`DgmPyroError`) to raise the ``LENGTH`` of a run whose configuration depends on it."""

    def train(self, config: Any, data: Any, module: torch.nn.Module, run_dir: Path, resume: bool, progress: bool,
              callbacks: list[Any], device: torch.device) -> dict[str, Any]:
        """Train ``module`` into ``run_dir`` (and any baseline); returns the training summary."""
        raise NotImplementedError

    def make_run(self, path: Path, config: Any, data: Any, module: torch.nn.Module,
                 device: torch.device) -> Run:
        """The loaded :class:`Run` (subclasses add baselines and data fields)."""
        return Run(path, config, module, self, device)

    def final_evaluation(self, run: Run, progress: bool = False) -> Optional[dict[str, Any]]:
        """What ``dgm-pyro train`` evaluates and reports once training ends (``None``: nothing)."""
        return None

    def unsupported(self, command: str, path: Path) -> DgmPyroError:
        hint = {"forecast": "dgm-pyro forecast RUN --horizon H", "evaluate": "dgm-pyro evaluate RUN"}
        others = [hint.get(c, f"dgm-pyro {c} RUN") for c in self.commands]
        return DgmPyroError(f"{path}: a {self.name} run has no '{command}'" + (f"; use '{others[0]}'" if others else ""))


def new_run_dir(root: str | Path, model: str) -> Path:
    """``root/<model>-<YYYYmmdd-HHMMSS>``, with a numeric suffix if that exists already."""
    root = Path(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{model}-{stamp}"
    i = 1
    while path.exists():
        path = root / f"{model}-{stamp}-{i}"
        i += 1
    return path


def require_run_dir(path: Path) -> None:
    """One-line errors for a missing folder or one without ``config.json``."""
    if not path.is_dir():
        raise DgmPyroError(f"{path}: no such run folder")
    if not (path / "config.json").is_file():
        raise DgmPyroError(f"{path}: not a dgm-pyro run folder (no config.json)")


def restart_in_place(run_dir: Path) -> bool:
    """Whether a run to resume was killed before its first checkpoint (then it starts again in place).

    A kill between writing an interval's metrics row and its checkpoint leaves at most one row ahead, so
    more rows without a checkpoint mean the checkpoint was lost: refused."""
    if (run_dir / "checkpoint.pt").is_file():
        return False
    if len(read_metrics(run_dir / "metrics.csv")) > 1:
        raise DgmPyroError(f"{run_dir}: has rows in metrics.csv but no checkpoint.pt to resume from; "
                           "restore the checkpoint or start a new run")
    return True


def read_run_config(path: str | Path) -> tuple[ModelKind, Any]:
    """The model kind and validated configuration of a run folder, from ``config.json``'s model name."""
    path = Path(path)
    require_run_dir(path)
    raw = read_json(path / "config.json")
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), str):
        raise DgmPyroError(f"{path / 'config.json'}: has no model name")
    kind = get_model(raw["model"])
    return kind, kind.config_class.from_saved(raw, source=str(path / "config.json")).validate()


def run_data(run_dir: Path) -> dict[str, Any]:
    """The data summary recorded in a run's ``environment.json`` (empty where unreadable)."""
    try:
        data = read_json(Path(run_dir) / "environment.json").get("data")
    except (DgmPyroError, AttributeError):
        return {}
    return data if isinstance(data, dict) else {}


def training_state(ckpt_path: Path) -> Optional[dict[str, Any]]:
    """The loop state stored in a checkpoint (``epoch``/``step``, ``steps``, ``stopped``), or ``None``."""
    return load_checkpoint(ckpt_path)["trainer_state"] if Path(ckpt_path).is_file() else None


def unfinished_training(run_dir: Path, config: Any, what: str, total: Optional[int] = None) -> Optional[str]:
    """``None`` when the training in ``run_dir`` (a run or its ``baseline/``) ran its ``total`` epochs or
    steps (default: the configuration's ``LENGTH``) or stopped early; else what is left, in words."""
    field = config.LENGTH
    if not field:
        return None  # the configuration does not say how long training runs
    unit, total = field[:-1], getattr(config, field) if total is None else total
    state = training_state(Path(run_dir) / "checkpoint.pt")
    if state is None:
        return f"{what} has no checkpoint yet"
    if state.get("stopped") or state[unit] >= total:
        return None
    return f"{what} is at {unit} {state[unit]} of {total}"


def extend_run(run_dir: str | Path, length: int) -> Any:
    """Set a run's ``epochs`` or ``steps`` (its configuration's ``LENGTH``) to ``length`` in ``config.json``
    so that resuming trains further; returns the new configuration. An ``evaluation.json`` of the weights
    before is renamed ``evaluation-<epochs|steps><done>.json``. Refused for a run that stopped early, one
    that has trained ``length`` already, or a configuration that depends on the length (a cyclical
    annealing schedule)."""
    run_dir = Path(run_dir)
    kind, config = read_run_config(run_dir)
    field = config.LENGTH
    if not field:
        raise DgmPyroError(f"{run_dir}: a {kind.name} run has no length option to extend")
    if getattr(config, field) == length:
        return config
    state = training_state(run_dir / "checkpoint.pt") or {}
    done = state.get(field[:-1], 0)
    if state.get("stopped"):
        patience = getattr(config, "patience", None)
        raise DgmPyroError(f"{run_dir}: stopped early at {field[:-1]} {done} (no better validation score for "
                           f"{patience if patience is not None else 'patience'} {field}); more {field} would not "
                           "train it further")
    if length <= done:
        raise DgmPyroError(f"{run_dir}: has trained {done} {field} already; --{field} must be more than that")
    kind.check_extension(config)
    new = dataclasses.replace(config, **{field: length}).validate()
    write_json(run_dir / "config.json", new.to_dict())
    log.info("%s: %s set from %d to %d in config.json", run_dir, field, getattr(config, field), length)
    old_eval = run_dir / "evaluation.json"
    if old_eval.is_file():  # it describes the weights before the extension: kept under another name
        kept = run_dir / f"evaluation-{field}{done}.json"
        old_eval.replace(kept)
        log.info("%s: the evaluation of the run before the extension is now %s", run_dir, kept.name)
    return new


def load_weights(module: torch.nn.Module, ckpt_path: Path) -> None:
    """Restore a module's weights from a weights-only checkpoint (written on any device)."""
    ckpt = load_checkpoint(ckpt_path)
    try:
        module.load_state_dict(ckpt["model_state"])
    except RuntimeError:
        raise DgmPyroError(f"{ckpt_path}: weights do not fit the model described by config.json") from None


def model_origin(kind: Any) -> dict[str, Optional[str]]:
    """The model kind's name, the module that defines it and the installed package and version it comes from
    (``None`` where it is not from an installed distribution): an outside model's runs record its version."""
    import importlib.metadata

    module = type(kind).__module__ if not isinstance(kind, type) else kind.__module__
    top = module.split(".")[0]
    packages = importlib.metadata.packages_distributions().get(top, [])
    package = packages[0] if packages else None
    try:
        version = importlib.metadata.version(package) if package else None
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"name": kind.name, "module": module, "package": package, "version": version}


def _start_folder(kind: ModelKind, config: Any, data: Any, run_dir: Path, device: torch.device) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        raise DgmPyroError(f"{run_dir}: exists and is not empty; choose another output folder or resume it")
    D.barrier()  # every rank has checked before rank 0 makes the folder
    if D.rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config.to_dict())
        write_json(run_dir / "environment.json", {**environment(), "seed": config.seed,
                                                  "torch_threads": torch.get_num_threads(),
                                                  "processes": D.world_size(), "device": str(device),
                                                  "model": model_origin(kind), "data": kind.data_summary(data)})
    D.barrier()


def train_run(config: Optional[Any], run_dir: str | Path, resume: bool = False, progress: bool = False,
              on_start: Optional[Callable[[Path], None]] = None, callbacks: Optional[list[Any]] = None,
              device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train the configured model into ``run_dir`` (made here; it must not exist or be empty).

    With ``resume=True`` the configuration is read from ``run_dir/config.json`` (``config`` is ignored)
    and training continues from the last checkpoint; a run killed before its first checkpoint starts again
    in place. ``on_start(run_dir)`` is called once the inputs are checked and the folder exists;
    ``callbacks`` are extra :class:`~dgm_pyro.callbacks.Callback` objects. Returns the training summary.
    """
    run_dir = Path(run_dir)
    restart = False
    if resume:
        kind, config = read_run_config(run_dir)
        restart = restart_in_place(run_dir)
    else:
        kind = get_model(config.model)
        config.validate()
    if D.world_size() > 1 and not kind.distributed:
        raise DgmPyroError(f"{kind.name} trains on one process; run it without torchrun")
    device = torch.device(device)
    data = kind.load_data(config)
    kind.check(config, data)
    pyro.set_rng_seed(config.seed)  # the initial weights depend on the seed only
    module = kind.build(config, data)
    kind.check_module(config, data, module)
    if not resume:
        _start_folder(kind, config, data, run_dir, device)
    if on_start is not None and D.rank() == 0:
        on_start(run_dir)
    if D.rank() == 0:
        log.info("data: %s", kind.describe_data(data))
        length = f"up to {getattr(config, config.LENGTH)} {config.LENGTH} " if config.LENGTH else ""
        log.info("training %s: %son %s", kind.name, length, device)
    summary = kind.train(config, data, module.to(device), run_dir, resume and not restart, progress,
                         list(callbacks or []), device)
    summary["data"] = kind.data_summary(data)
    return summary


def load_run(path: str | Path, device: str | torch.device = "cpu", command: Optional[str] = None) -> Run:
    """Load a run folder (weights only, onto ``device``) with its data, whatever model made it; with
    ``command``, first refuse (one line) a run whose model does not support that command."""
    path = Path(path)
    kind, config = read_run_config(path)
    if command is not None and command not in kind.commands:
        raise kind.unsupported(command, path)
    data = kind.load_data(config)
    pyro.clear_param_store()
    module = kind.build(config, data)
    load_weights(module, path / kind.weights(config))
    device = torch.device(device)
    return kind.make_run(path, config, data, module.to(device).eval(), device)
