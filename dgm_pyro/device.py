"""Choosing the torch device a command runs on, and how many CPU threads it uses."""

from __future__ import annotations

import os
from typing import Optional

import torch

from .errors import DgmPyroError

__all__ = ["resolve_device", "to_device", "set_threads", "DEVICES"]

#: torch's own intra-op thread count in this process before :func:`set_threads` changed it (one per core,
#: or ``OMP_NUM_THREADS``)
TORCH_DEFAULT_THREADS = torch.get_num_threads()

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


def set_threads(threads: Optional[int] = None) -> int:
    """Set torch's intra-op CPU threads for this process and return the number set.

    ``None`` (the commands' default) takes ``$OMP_NUM_THREADS`` when it is set, else **1**; ``0`` takes
    torch's default (one per core). One thread is the default because these models are small: on 2 idle
    cores two threads train the CVAE 1.19x faster and the graph model no faster, but beside another
    training process the threads spin against each other and training becomes 4-22x slower
    (``benchmarks/threads.py``, docs/cli.md "Threads"). Each process (each ``torchrun`` worker) sets its own.
    """
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else 1
    if threads < 0:
        raise DgmPyroError(f"threads must be >= 0 (0: torch's default), got {threads}")
    n = threads or TORCH_DEFAULT_THREADS
    torch.set_num_threads(n)
    return n
