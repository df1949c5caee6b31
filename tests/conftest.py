import gzip
import os
import warnings

os.environ.setdefault("MPLBACKEND", "Agg")

import pyro  # noqa: E402
import pytest  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

FULL = os.environ.get("DGM_PYRO_FULL_TESTS") == "1"

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")


def pytest_collection_modifyitems(config, items):
    if FULL or config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="slow: set DGM_PYRO_FULL_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_clear():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.set_default_dtype(torch.float32)
    yield
    pyro.clear_param_store()


def _write_idx(folder, images: np.ndarray, labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
              gz: bool = True) -> None:
    """The four files of the MNIST distribution (uint8 images (N, 28, 28), uint8 labels)."""
    folder.mkdir(parents=True, exist_ok=True)

    def idx(array: np.ndarray) -> bytes:
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
        return header + array.astype(np.uint8).tobytes()

    for name, array in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels),
                        ("t10k-images-idx3-ubyte", test_images), ("t10k-labels-idx1-ubyte", test_labels)):
        data = idx(array)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture(scope="session")
def write_idx():
    """Writes the four MNIST IDX files: ``write_idx(folder, images, labels, test_images, test_labels, gz=True)``."""
    return _write_idx


@pytest.fixture()
def interrupt_training(monkeypatch):
    """``stop = interrupt_training(n)``: from now on the Trainer raises KeyboardInterrupt (Ctrl-C) at the end of its
    (n+1)-th interval, after n checkpoints; ``stop()`` puts the real loop back."""
    from dgm_pyro.training import Trainer

    real = Trainer._interval

    def arm(n: int):
        calls = []

        def interval(self):
            if len(calls) == n:
                raise KeyboardInterrupt
            calls.append(1)
            return real(self)

        monkeypatch.setattr(Trainer, "_interval", interval)
        return lambda: monkeypatch.setattr(Trainer, "_interval", real)

    return arm
