"""Weights-only, atomic checkpoints and run-folder files.

Checkpoints hold only tensors and plain Python containers, are loaded with
``torch.load(..., weights_only=True)`` (so a file crafted to run code when unpickled is refused), and
are written to a temporary file, flushed to disk, then renamed over the old one, so a crash at any
moment leaves either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import DgmPyroError

__all__ = ["jsonable", "atomic_replace", "save_checkpoint", "load_checkpoint", "atomic_write_text", "write_json", "read_json"]


def atomic_replace(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write ``state`` (tensors, numbers, strings, lists, tuples, dicts only)."""
    atomic_replace(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; refuse anything else with a one-line error."""
    path = Path(path)
    if not path.is_file():
        hint = (f" (its run stopped before writing the first one; train it with 'dgm-pyro train --resume "
                f"{path.parent}')" if (path.parent / "config.json").is_file() else "")
        raise DgmPyroError(f"{path}: no such checkpoint{hint}")
    if not zipfile.is_zipfile(path):
        raise DgmPyroError(f"{path}: unreadable checkpoint (not a torch.save file; truncated or corrupted?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln or "Weights only" in ln]
        reason = lines[-1].split(". Please")[0] if lines else "unsupported content"
        raise DgmPyroError(f"{path}: refused to load: it holds objects other than weights ({reason[:200]})") from None
    except Exception as e:
        raise DgmPyroError(f"{path}: unreadable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or "model_state" not in state:
        raise DgmPyroError(f"{path}: not a dgm-pyro checkpoint")
    return state


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_replace(Path(path), lambda f: f.write(text.encode()))


def jsonable(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None`` (strict JSON) and tuples as lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (non-finite floats as null), atomically."""
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DgmPyroError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DgmPyroError(f"{path}: not valid JSON ({e})") from None
