"""Choosing the torch device a command runs on."""

from __future__ import annotations

import torch

from .errors import DgmPyroError

__all__ = ["resolve_device", "to_device", "DEVICES"]

#: the device names a command accepts (``cuda:N`` picks one GPU)
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when a GPU is present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        DgmPyroError: an unknown name, or CUDA asked for on a machine without a usable GPU.
    """
    base, _, index = name.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise DgmPyroError(f"unknown device '{name}'; choose auto, cpu, cuda or cuda:N")
    if base == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if base == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DgmPyroError(f"device '{name}' asked for, but {build}; use cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise DgmPyroError(f"device '{name}' asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    return torch.device(name)


def to_device(device: str | torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors on ``device`` (the same objects where they are there already)."""
    return tuple(t.to(device) for t in tensors)
