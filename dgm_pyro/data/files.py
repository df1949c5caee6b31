"""Loaders for user data from a local path: ``.npz`` archives and MNIST-style IDX files.

Nothing is downloaded. Every problem with a file raises :class:`~dgm_pyro.errors.DgmPyroError` with one
line naming the file and what is wrong.
"""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DgmPyroError
from .dataset import EVAL_BINARIZATION_SEED, ConditionalDataset, binarize

__all__ = ["load_npz", "load_idx", "read_idx", "infer_likelihood", "idx_files"]

_FILE_SPLIT_SEED = 0


def infer_likelihood(x: np.ndarray) -> tuple[str, int | None]:
    """Pick a likelihood for data ``x``: {0,1} -> Bernoulli, integers 0..255 -> categorical, else Gaussian."""
    if np.all((x == 0) | (x == 1)):
        return "bernoulli", None
    if np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= 255:
        return "categorical", int(x.max()) + 1
    return "gaussian", None


def _check_finite(name: str, arr: np.ndarray, path: Path) -> None:
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DgmPyroError(f"{path}: array '{name}' has dtype {arr.dtype}; expected real numbers")
    bad = ~np.isfinite(arr.astype(np.float64))
    if bad.any():
        raise DgmPyroError(f"{path}: array '{name}' contains {int(bad.sum())} NaN or infinite values; clean them first")


def _labels_to_condition(y: np.ndarray, path: Path) -> tuple[torch.Tensor, str, int | None]:
    if y.ndim == 1:
        if not np.all(y == np.round(y)) or y.min() < 0:
            raise DgmPyroError(f"{path}: a 1-D 'y' must hold integer class labels >= 0 (got non-integer or negative values)")
        k = int(y.max()) + 1
        return torch.nn.functional.one_hot(torch.as_tensor(y.astype(np.int64)), k).float(), "label", k
    return torch.as_tensor(y.reshape(y.shape[0], -1), dtype=torch.float32), "vector", None


def _split(n: int, fractions=(0.8, 0.1)) -> dict[str, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_FILE_SPLIT_SEED))
    a = int(round(fractions[0] * n))
    b = a + int(round(fractions[1] * n))
    return {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]}


def _grey(x: torch.Tensor) -> bool:
    """Grey levels in [0, 1] that are not all 0 or 1."""
    return bool(((x >= 0) & (x <= 1)).all()) and not bool(((x == 0) | (x == 1)).all())


def _finish(name, x, y, cond, k, image_shape, likelihood, parts, description) -> ConditionalDataset:
    if likelihood is None and image_shape is not None and _grey(x):
        likelihood = "bernoulli"  # grey images in [0, 1]: binarised dynamically, as MNIST is
    dynamic = likelihood == "bernoulli" and _grey(x)
    if likelihood is None:
        likelihood, levels = infer_likelihood(x.numpy())
    else:
        levels = int(x.max().item()) + 1 if likelihood == "categorical" else None
        if not dynamic:
            _check_likelihood(name, x, likelihood)
    splits = {s: (x[idx], y[idx]) for s, idx in parts.items()}
    if min(v[0].shape[0] for v in splits.values()) < 1:
        raise DgmPyroError(f"{name}: too few rows to make train/valid/test splits (need at least 10)")
    if dynamic:  # the training split keeps p; validation and test are drawn once (the trainer redraws training)
        g = torch.Generator().manual_seed(EVAL_BINARIZATION_SEED)
        splits = {s: (xy[0] if s == "train" else binarize(xy[0], g), xy[1]) for s, xy in splits.items()}
    return ConditionalDataset(name=name, splits=splits, likelihood=likelihood, levels=levels, condition=cond,
                              num_classes=k, image_shape=image_shape, description=description,
                              binarize="dynamic" if dynamic else None)


def _check_likelihood(name: str, x: torch.Tensor, likelihood: str) -> None:
    if likelihood == "bernoulli" and not bool(((x == 0) | (x == 1)).all()):
        raise DgmPyroError(f"{name}: the Bernoulli likelihood needs x in [0, 1] (grey levels are binarised "
                           "dynamically); rescale the data or use the gaussian likelihood")
    if likelihood == "bernoulli-grey" and not bool(((x >= 0) & (x <= 1)).all()):
        raise DgmPyroError(f"{name}: the bernoulli-grey likelihood needs x in [0, 1]; rescale the data")
    if likelihood == "categorical" and not bool(((x == x.round()) & (x >= 0)).all()):
        raise DgmPyroError(f"{name}: the categorical likelihood needs integer levels >= 0 in x")


def load_npz(path: str | Path, likelihood: str | None = None) -> ConditionalDataset:
    """Load ``x`` (N, ...) and optional ``y`` or ``text`` from an ``.npz`` file, split 80/10/10 with a fixed seed.

    Images (N, H, W) of grey levels in [0, 1] get the Bernoulli likelihood with dynamic binarisation, as MNIST does
    (:mod:`dgm_pyro.data.mnist`); ``likelihood="bernoulli-grey"`` scores the grey levels themselves.

    ``y`` may be 1-D integer class labels (one-hot encoded) or (N, ...) real covariates. ``text`` is one
    caption per row (a numpy string array, ``np.array(list_of_str)``): the dataset is then text-conditioned
    (``condition == "text"``, captions in ``extra["texts"][split]``). The archive is read with
    ``allow_pickle=False``: object arrays are refused, never unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise DgmPyroError(f"{path}: no such file (expected an .npz archive with an array 'x')")
    if not zipfile.is_zipfile(path):
        raise DgmPyroError(f"{path}: not a readable .npz archive (not a zip file); save it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except ValueError as e:
        raise DgmPyroError(f"{path}: cannot read the archive without unpickling objects ({e}); save plain numeric arrays") from None
    except Exception as e:  # zipfile.BadZipFile, OSError, EOFError ...
        raise DgmPyroError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    if "x" not in arrays:
        raise DgmPyroError(f"{path}: no array named 'x' (found: {', '.join(sorted(arrays)) or 'none'})")
    x = arrays["x"]
    if x.ndim < 2 or x.shape[0] < 10:
        raise DgmPyroError(f"{path}: 'x' must have shape (N, D) or (N, H, W) with N >= 10; got {x.shape}")
    _check_finite("x", x, path)
    image_shape = tuple(x.shape[1:]) if x.ndim == 3 else None
    x_t = torch.as_tensor(x.reshape(x.shape[0], -1), dtype=torch.float32)
    if "text" in arrays:
        if "y" in arrays:
            raise DgmPyroError(f"{path}: has both 'y' and 'text'; a model is conditioned on one of them")
        return _captioned(path, x_t, arrays["text"], image_shape, likelihood)
    if "y" in arrays:
        y = arrays["y"]
        if y.shape[0] != x.shape[0]:
            raise DgmPyroError(f"{path}: 'y' has {y.shape[0]} rows but 'x' has {x.shape[0]}; they must match")
        _check_finite("y", y, path)
        y_t, cond, k = _labels_to_condition(y, path)
    else:
        y_t, cond, k = torch.zeros(x.shape[0], 0), "none", None
    return _finish(f"npz:{path}", x_t, y_t, cond, k, image_shape, likelihood, _split(x.shape[0]),
                   f"user data from {path.name}")


def _captioned(path: Path, x: torch.Tensor, text: np.ndarray, image_shape, likelihood) -> ConditionalDataset:
    if text.dtype.kind not in "US" or text.ndim != 1:
        raise DgmPyroError(f"{path}: 'text' must be a 1-D array of strings (np.array(list_of_str)); got dtype "
                           f"{text.dtype}, shape {text.shape}")
    if text.shape[0] != x.shape[0]:
        raise DgmPyroError(f"{path}: 'text' has {text.shape[0]} captions but 'x' has {x.shape[0]} rows; they must match")
    try:
        captions = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in text.tolist()]
    except UnicodeDecodeError:
        raise DgmPyroError(f"{path}: 'text' holds bytes that are not UTF-8") from None
    empty = [i for i, t in enumerate(captions) if not any(ch.isalnum() for ch in t)]
    if empty:
        raise DgmPyroError(f"{path}: {len(empty)} caption(s) in 'text' have no word or number (first: row {empty[0]})")
    parts = _split(x.shape[0])
    ds = _finish(f"npz:{path}", x, torch.zeros(x.shape[0], 0), "text", None, image_shape, likelihood, parts,
                 f"captioned user data from {path.name}")
    ds.extra["texts"] = {s: [captions[i] for i in idx.tolist()] for s, idx in parts.items()}
    return ds


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped), the format of the MNIST distribution."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DgmPyroError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DgmPyroError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DgmPyroError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DgmPyroError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(np.float32)


def idx_files(directory: Path) -> dict[str, Path | None]:
    """The four files of the MNIST distribution in ``directory`` by stem (``train-images-idx3-ubyte``, ...), each
    gzipped or not, with ``-idx`` or ``.idx`` in its name; ``None`` where missing."""
    stems = [f"{k}-idx{3 if 'images' in k else 1}-ubyte"
             for k in ("train-images", "train-labels", "t10k-images", "t10k-labels")]
    return {stem: _find(directory, stem) for stem in stems}


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def load_idx(directory: str | Path, likelihood: str | None = None) -> ConditionalDataset:
    """Load MNIST-style IDX files from ``directory``.

    Needs ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (``.gz`` allowed); uses
    ``t10k-*`` as the test set when present (otherwise 10% of train). The last 10% of the training
    images (after a fixed shuffle) form the validation set. Labels become one-hot conditions.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DgmPyroError(f"{directory}: no such directory (expected MNIST-style IDX files)")
    files = {stem.split("-idx")[0]: path for stem, path in idx_files(directory).items()}
    if files["train-images"] is None or files["train-labels"] is None:
        raise DgmPyroError(f"{directory}: needs train-images-idx3-ubyte and train-labels-idx1-ubyte (optionally .gz)")
    images, labels = read_idx(files["train-images"]), read_idx(files["train-labels"])
    have_test = files["t10k-images"] is not None and files["t10k-labels"] is not None
    if have_test:
        test_images, test_labels = read_idx(files["t10k-images"]), read_idx(files["t10k-labels"])
    else:
        test_images, test_labels = images[:0], labels[:0]
    for imgs, labs, which in ((images, labels, "train"), (test_images, test_labels, "t10k")):
        if imgs.ndim != 3 or labs.ndim != 1 or imgs.shape[0] != labs.shape[0]:
            raise DgmPyroError(f"{directory}: {which} images {imgs.shape} and labels {labs.shape} do not match "
                               "(expected (N, H, W) images and N labels)")
    if have_test and test_images.shape[1:] != images.shape[1:]:
        raise DgmPyroError(f"{directory}: train images are {images.shape[1:]} but t10k images are {test_images.shape[1:]}")
    if images.shape[0] < 10:
        raise DgmPyroError(f"{directory}: need at least 10 training images, found {images.shape[0]}")
    all_images = np.concatenate([images, test_images])
    all_labels = np.concatenate([labels, test_labels])
    _check_finite("images", all_images, directory)
    x = torch.as_tensor(all_images.reshape(all_images.shape[0], -1))
    y, cond, k = _labels_to_condition(all_labels, directory)
    n = images.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_FILE_SPLIT_SEED))
    if have_test:
        n_valid = max(1, n // 10)
        parts = {"train": perm[n_valid:], "valid": perm[:n_valid], "test": torch.arange(n, all_images.shape[0])}
    else:
        parts = _split(n)
    return _finish(f"idx:{directory}", x, y, cond, k, tuple(images.shape[1:]), likelihood, parts,
                   f"IDX images from {directory}")
