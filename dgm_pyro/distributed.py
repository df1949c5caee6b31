"""Data-parallel training on ``torch.distributed``: the few collective operations the SVI loop needs.

Launch with PyTorch's own launcher, ``torchrun --nproc-per-node N -m cli.main train ...`` (or
``dgm-pyro train --nproc N``, which runs that for you). Every rank builds the same model from the same
seed, draws the same global minibatch order, computes the loss of its shard of each minibatch (scaled by
the global batch size), and the gradients are summed across ranks with ``all_reduce`` before the
optimiser step, so every rank takes the same step as one process on the whole minibatch. Latent draws
use a different random stream per rank (seed + rank). Rank 0 validates (and broadcasts the result),
writes ``metrics.csv`` and checkpoints; checkpoints hold every rank's random-number state so that a
resumed run continues exactly. The backend is ``gloo`` on CPU and ``nccl`` when CUDA is used.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "all_reduce_gradients", "all_reduce_sum",
           "broadcast_object", "gather_objects", "barrier", "shutdown"]


def init_from_env() -> bool:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1); ``False`` when
    running as a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("DGM_PYRO_DEVICE", "cpu") == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks, in one flat buffer (one collective per step)."""
    if not is_distributed():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
