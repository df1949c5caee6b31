"""Helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from dgm_pyro.runs import TrainConfig
from dgm_pyro.runs import load_run, train_run


def train_and_evaluate(config: TrainConfig, particles: int, root: Path | None = None) -> dict:
    """Train ``config`` into a fresh folder under ``root`` and return the test evaluation."""
    root = Path(root or tempfile.mkdtemp(prefix="dgm-bench-"))
    run_dir = root / f"{config.dataset}-{config.prior}-seed{config.seed}"
    train_run(config, run_dir)
    run = load_run(run_dir)
    return run.kind.evaluate(run, particles=particles, seed=config.seed)


def resumable_command(folder: Path, fresh: list[str], epochs: int) -> list[str]:
    """``fresh`` (a ``dgm-pyro train`` command) for a new run folder; for an existing one (interrupted, or finished
    with fewer epochs than ``epochs``), ``dgm-pyro train --resume`` extended to ``epochs``."""
    if not folder.exists():
        return fresh
    cmd = ["dgm-pyro", "train", "--resume", str(folder), "--quiet", "--threads", "1"]
    if (folder / "checkpoint.pt").exists() and json.loads((folder / "config.json").read_text())["epochs"] < epochs:
        cmd += ["--epochs", str(epochs)]
    return cmd


def mean_sd(values: list[float]) -> str:
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.2f} ± {sd:.2f}"
