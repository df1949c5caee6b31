"""Choosing the torch device a command runs on, and how many CPU threads it uses."""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Optional

import torch

from .errors import DgmPyroError

__all__ = ["resolve_device", "to_device", "set_threads", "keep_freed_memory", "DEVICES"]

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


def keep_freed_memory() -> bool:
    """Let this process keep the memory it frees for reuse instead of giving it back to the system (glibc's
    malloc only; elsewhere nothing changes). Returns whether it applied.

    A training step frees and again allocates the same large tensors (the (T, N^2) edge logits and their
    gradients). By default glibc returns such blocks to the system and the next step faults every page in again;
    on the machine this was measured on that cost 6-10 % of a GraphSSM step at T = 90-270 (up to 25 % in single runs)
    (``benchmarks/graph_step.py``, docs/graphs.md "Speed on long sequences"). Sets ``mallopt``'s mmap threshold
    to its 32 MB maximum (larger blocks are still mapped and unmapped), the trim threshold to 2 GB and the top
    pad to 256 MB, so the resident memory stays at its peak until the process ends and never above it. The
    ``dgm-pyro`` command calls it at start; a library user may call it in their own training script.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim_threshold, top_pad, mmap_threshold = -1, -2, -3  # glibc's M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD
    settings = ((mmap_threshold, 32 << 20), (trim_threshold, 2**31 - 1), (top_pad, 256 << 20))
    return all(mallopt(param, value) == 1 for param, value in settings)
