"""The container every dataset loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

__all__ = ["ConditionalDataset", "LIKELIHOODS", "binarize", "EVAL_BINARIZATION_SEED"]

LIKELIHOODS = ("bernoulli", "bernoulli-grey", "gaussian", "categorical")
#: Seed of the one binarisation of the validation and test splits of dynamically binarised data.
EVAL_BINARIZATION_SEED = 0


def binarize(p: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x ~ Bernoulli(p) elementwise (dynamic binarisation), drawn with ``generator``'s device and state."""
    u = torch.rand(p.shape, generator=generator, device=generator.device if generator is not None else p.device)
    return (u.to(p.device) < p).to(p.dtype)


@dataclass
class ConditionalDataset:
    """Pairs (x, y) split into train, valid and test.

    Attributes:
        name: the dataset specification it was loaded from (e.g. ``"digits"``, ``"npz:/path"``).
        splits: ``{"train": (x, y), "valid": (x, y), "test": (x, y)}`` with ``x`` of shape ``(N, x_dim)``
            (float; integer levels for categorical data) and ``y`` of shape ``(N, y_dim)`` (float;
            ``y_dim`` may be 0 for unconditional data).
        likelihood: ``"bernoulli"``, ``"gaussian"``, ``"categorical"`` or ``"bernoulli-grey"`` (Bernoulli
            cross-entropy with grey levels in [0, 1] as targets: a pseudo-likelihood, as Pyro's CVAE tutorial uses).
        levels: number of levels for categorical data (17 for digits), else ``None``.
        condition: what ``y`` is: ``"label"`` (one-hot class), ``"quadrant"`` (given image quadrants),
            ``"vector"`` (real covariates) or ``"none"``.
        image_shape: shape of a full image for plotting, e.g. ``(8, 8)``, or ``None``.
        num_classes: number of classes when ``condition == "label"``.
        x_index / y_index: for quadrant completion, the flat pixel indices of the target (x) and of
            the given part (y) within a full image; used to reassemble images.
        true_log_likelihood: exact log p(x|y) of the data-generating process, when known
            (``linear-gaussian``); a callable ``(x, y) -> (N,)`` tensor.
        description: one line for ``dgm-pyro datasets``.
        binarize: ``"dynamic"`` when the training split holds grey levels p in [0, 1] of a Bernoulli likelihood
            and every minibatch draws x ~ Bernoulli(p) anew (also the condition for quadrant data, whose y
            are pixels too); the validation and test splits are then binarised already. ``None`` otherwise.
    """

    name: str
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    likelihood: str
    levels: Optional[int] = None
    condition: str = "none"
    image_shape: Optional[tuple[int, ...]] = None
    num_classes: Optional[int] = None
    x_index: Optional[torch.Tensor] = None
    y_index: Optional[torch.Tensor] = None
    true_log_likelihood: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
    description: str = ""
    extra: dict = field(default_factory=dict)
    binarize: Optional[str] = None

    def binarized_columns(self) -> tuple[int, ...]:
        """Which of (x, y) a minibatch binarises: x, and y too for quadrant completion."""
        if self.binarize != "dynamic":
            return ()
        return (0, 1) if self.condition == "quadrant" else (0,)

    @property
    def x_dim(self) -> int:
        return int(self.splits["train"][0].shape[-1])

    @property
    def y_dim(self) -> int:
        return int(self.splits["train"][1].shape[-1])

    def sizes(self) -> dict[str, int]:
        return {k: int(v[0].shape[0]) for k, v in self.splits.items()}
