"""Data-parallel training on ``torch.distributed``: the few collective operations the SVI loop needs.

Launch with PyTorch's own launcher: ``torchrun --nproc-per-node N -m cli.main train ...``. Every rank builds the same model from the same
seed, draws the same global minibatch order, computes the loss of its shard of each minibatch (scaled by
the global batch size), and the gradients are summed across ranks with ``all_reduce`` before the
optimiser step, so every rank takes the same step as one process on the whole minibatch. Latent draws
use a different random stream per rank (seed + rank). Rank 0 validates (and broadcasts the result),
writes ``metrics.csv`` and checkpoints; checkpoints hold every rank's random-number state so that a
resumed run continues exactly. The backend is ``gloo`` (CPU tensors; data-parallel training on several
GPUs would need ``nccl`` and a device per rank, which is not built).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "all_reduce_gradients",
           "broadcast_object", "gather_objects", "barrier", "shutdown", "launched", "exit_process"]


def launched() -> bool:
    """Whether this process is one rank of a multi-process job (torchrun's ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env() -> bool:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1); ``False`` when
    running as a single process."""
    if not launched():
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_gradients(params: list[torch.nn.Parameter], value: torch.Tensor | None = None) -> torch.Tensor | None:
    """Sum every parameter's gradient over the ranks, and ``value`` (a scalar, for example the loss) with
    them, in one flat buffer: one collective per step. Returns the summed ``value``."""
    if not is_distributed():
        return value
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    parts = [p.grad.reshape(-1) for p in params]
    if value is not None:
        parts.append(value.detach().reshape(1).to(parts[0].dtype))
    flat = torch.cat(parts)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n
    return flat[-1] if value is not None else None


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


def exit_process(code: int) -> None:
    """End a rank's process with ``code`` without Python's finalisation (after flushing its output).

    gloo's worker threads destroy each collective's work object after it completes, and the last ones hold
    tensors owned by Python (an ``all_gather_object``'s buffers, kept by the barrier after it). Under load a
    worker can still be doing so when the main thread has finished and the interpreter is shutting down;
    its decref then needs the GIL, the thread is unwound, and the process aborts: SIGABRT, "terminate called
    without an active exception" (7 of 57 2-process runs beside two busy loops; the core dump's stack is
    ProcessGroupGloo::runLoop -> ~AsyncBarrierWork -> ~AsyncAllgatherWork -> TensorImpl::decref_pyobject ->
    PyEval_AcquireThread -> pthread_exit during Py_FinalizeEx). ``destroy_process_group`` does not prevent it:
    the process group stays referenced until finalisation. Every file is written and closed by then
    (checkpoints atomically), so skipping finalisation loses nothing."""
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
