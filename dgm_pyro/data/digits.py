"""scikit-learn's bundled 8x8 digits: class-conditional generation and quadrant completion.

Quadrant completion follows Sohn et al. (2015), "Learning Structured Output Representation using Deep
Conditional Generative Models": the model sees some quadrants of an image (the condition y) and models
the others (x). On 8x8 digits a quadrant is a 4x4 block; with ``q`` quadrants given, they are the first
``q`` of (top-left, top-right, bottom-left), and the remaining ``4 - q`` quadrants are the target.
"""

from __future__ import annotations

import numpy as np
import torch

from .dataset import ConditionalDataset

__all__ = ["load_digits", "DIGITS_SPLIT", "QUADRANT_ORDER"]

#: Fixed sizes of the seeded train/valid/test split (1797 images in all).
DIGITS_SPLIT = (1000, 350, 447)
#: Quadrants in the order they are given: top-left, top-right, bottom-left, bottom-right.
QUADRANT_ORDER = ("top-left", "top-right", "bottom-left", "bottom-right")
_SPLIT_SEED = 0


def _quadrant_pixels(q: int) -> np.ndarray:
    rows, cols = divmod(np.arange(64), 8)
    quadrant = (rows >= 4) * 2 + (cols >= 4)  # 0 TL, 1 TR, 2 BL, 3 BR
    return quadrant


def load_digits(quadrants_given: int = 0, unconditional: bool = False) -> ConditionalDataset:
    """Load the digits with a fixed split (seed 0; sizes :data:`DIGITS_SPLIT`).

    Args:
        quadrants_given: 0 for class-conditional generation (y is the one-hot label, x the 64 pixels);
            1, 2 or 3 for quadrant completion (y the given quadrants scaled to [0, 1], x the other pixels).
        unconditional: no condition at all (y has 0 columns): a plain VAE on the 64 pixels.

    Returns:
        A :class:`ConditionalDataset` with categorical pixels over 17 grey levels (0..16).
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = torch.as_tensor(bunch.data, dtype=torch.float32)  # (1797, 64), integers 0..16
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_train, n_valid, _ = DIGITS_SPLIT
    parts = {"train": perm[:n_train], "valid": perm[n_train : n_train + n_valid], "test": perm[n_train + n_valid :]}

    if unconditional:
        empty = torch.zeros(images.shape[0], 0)
        return ConditionalDataset(
            name="digits-unconditional",
            splits={k: (images[idx], empty[idx]) for k, idx in parts.items()},
            likelihood="categorical",
            levels=17,
            condition="none",
            image_shape=(8, 8),
            description="sklearn 8x8 digits (17 grey levels), no condition (a plain VAE)",
        )
    if quadrants_given == 0:
        onehot = torch.nn.functional.one_hot(labels, 10).float()
        splits = {k: (images[idx], onehot[idx]) for k, idx in parts.items()}
        return ConditionalDataset(
            name="digits",
            splits=splits,
            likelihood="categorical",
            levels=17,
            condition="label",
            image_shape=(8, 8),
            num_classes=10,
            description="sklearn 8x8 digits (17 grey levels), conditioned on the class label",
        )
    if quadrants_given not in (1, 2, 3):
        raise ValueError("quadrants_given must be 0, 1, 2 or 3")
    quadrant = _quadrant_pixels(quadrants_given)
    given = np.isin(quadrant, np.arange(quadrants_given))
    y_index = torch.as_tensor(np.flatnonzero(given))
    x_index = torch.as_tensor(np.flatnonzero(~given))
    splits = {k: (images[idx][:, x_index], images[idx][:, y_index] / 16.0) for k, idx in parts.items()}
    names = ", ".join(QUADRANT_ORDER[:quadrants_given])
    return ConditionalDataset(
        name=f"digits-q{quadrants_given}",
        splits=splits,
        likelihood="categorical",
        levels=17,
        condition="quadrant",
        image_shape=(8, 8),
        x_index=x_index,
        y_index=y_index,
        description=f"digits quadrant completion: given {names}; model the other {4 - quadrants_given}",
    )
