"""Benchmark scripts are not a package: tests load a script by path with the ``load_benchmark`` fixture."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark(name)``: the module ``benchmarks/<name>.py``."""
    return _load
