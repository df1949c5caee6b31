"""Helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

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


def mean_sd(values: list[float]) -> str:
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.2f} ± {sd:.2f}"
