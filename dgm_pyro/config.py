"""Run configurations: dataclasses whose fields carry their default, help text and valid range once.

Each model declares its configuration next to its registration (:mod:`dgm_pyro.runs`); a field made with
:func:`option` holds everything the command line needs (``dgm-pyro train MODEL --help`` is generated
from it) and everything :meth:`ConfigBase.validate` checks, so no default or range is written twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import typing
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

from .errors import DgmPyroError

__all__ = ["ConfigBase", "option", "flag_name", "field_default"]


_SAME = object()  # ``before`` not given: the same as the default


def option(default: Any, help: str, *, flag: Optional[str] = None, choices: Optional[Sequence[str]] = None,
           min: Optional[float] = None, max: Optional[float] = None, min_open: bool = False, max_open: bool = False,
           metavar: Optional[str] = None, cli: bool = True, added: bool = False, before: Any = _SAME) -> Any:
    """A dataclass field with its command-line description.

    Args:
        default: the default (a list default is copied per instance).
        help: one-line help text.
        flag: the command-line flag if not ``--field-name`` (for example ``--hidden`` for ``hidden_dims``).
        choices: the allowed values of a string option.
        min, max, min_open, max_open: the allowed range of a number (open or closed ends).
        metavar: the placeholder shown in ``--help``.
        cli: ``False`` for fields set by the program, not the user (the model name).
        added: a field added after runs were made: left out of :meth:`ConfigBase.digest` while it holds
            the value those runs had (``before``), so that they still resume.
        before: for an ``added`` field whose default differs from how runs made before it behaved, that
            earlier value: a saved configuration without the field reads it (:meth:`ConfigBase.from_saved`).
            Defaults to ``default``.
    """
    meta = {"help": help, "flag": flag, "choices": tuple(choices) if choices else None, "min": min, "max": max,
            "min_open": min_open, "max_open": max_open, "metavar": metavar, "cli": cli, "added": added,
            "before": default if before is _SAME else before}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(f: dataclasses.Field) -> str:
    """The command-line flag of a configuration field (``--latent-dim`` for ``latent_dim``)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def field_default(f: dataclasses.Field) -> Any:
    """The default value of a configuration field (a fresh copy for list defaults)."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _in_range(value: Any, meta: dict[str, Any]) -> bool:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_open") and value == lo)):
        return False
    return hi is None or not (value > hi or (meta.get("max_open") and value == hi))


def _range_text(meta: dict[str, Any]) -> str:
    parts = []
    if meta.get("min") is not None:
        parts.append(f"{'>' if meta.get('min_open') else '>='} {meta['min']:g}")
    if meta.get("max") is not None:
        parts.append(f"{'<' if meta.get('max_open') else '<='} {meta['max']:g}")
    return " and ".join(parts)


class ConfigBase:
    """Dict/TOML round trips, type and range checks and the hash stored in checkpoints, shared by the run
    configurations (dataclasses whose fields are made with :func:`option`).

    ``LENGTH`` names the field that says how long training runs (``epochs``, ``steps``): a resumed run may
    raise it (``dgm-pyro train --resume RUN --epochs N``), so it is left out of :meth:`digest`."""

    LENGTH: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "configuration") -> "ConfigBase":
        d = {k.replace("-", "_"): v for k, v in d.items()}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DgmPyroError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        try:
            cfg = cls(**d)
        except TypeError as e:
            raise DgmPyroError(f"{source}: {e}") from None
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            v, want = getattr(cfg, f.name), hints[f.name]
            optional = typing.get_origin(want) is typing.Union and type(None) in typing.get_args(want)
            if optional:
                if v is None:
                    continue
                want = next(a for a in typing.get_args(want) if a is not type(None))
            ok = {int: lambda x: isinstance(x, int) and not isinstance(x, bool), float: lambda x: isinstance(x, (int, float))
                  and not isinstance(x, bool), str: lambda x: isinstance(x, str), bool: lambda x: isinstance(x, bool),
                  list[int]: lambda x: isinstance(x, list) and all(isinstance(i, int) for i in x)}.get(want)
            if ok is not None and not ok(v):
                raise DgmPyroError(f"{source}: option '{f.name}' must be of type {getattr(want, '__name__', want)}, "
                                   f"got {v!r}")
        return cfg

    @classmethod
    def from_saved(cls, d: dict[str, Any], source: str = "configuration") -> "ConfigBase":
        """A configuration saved by a run (``config.json``): ``added`` fields it lacks take the value runs had
        before the field existed (``before``), which can differ from today's default."""
        d = {k.replace("-", "_"): v for k, v in d.items()}
        for f in dataclasses.fields(cls):
            if f.metadata.get("added") and f.name not in d:
                d[f.name] = f.metadata["before"]
        return cls.from_dict(d, source=source)

    @classmethod
    def from_toml(cls, path: str | Path) -> dict[str, Any]:
        """Read a TOML file's options (flat keys, or under a ``[train]`` table) as a dict."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise DgmPyroError(f"{path}: no such config file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise DgmPyroError(f"{path}: not valid TOML ({e})") from None
        data = data.get("train", data)
        return {k.replace("-", "_"): v for k, v in data.items()}

    def check_fields(self) -> None:
        """Check every field against its declared choices and range; raise naming the first bad one."""
        for f in dataclasses.fields(self):
            v, meta = getattr(self, f.name), f.metadata
            if v is None or not meta:
                continue
            if meta.get("choices") and v not in meta["choices"]:
                raise DgmPyroError(f"bad configuration: {f.name} must be one of {', '.join(meta['choices'])}, got {v!r}")
            values = v if isinstance(v, list) else [v]
            for x in values:
                if isinstance(x, (int, float)) and not isinstance(x, bool):
                    if isinstance(x, float) and not math.isfinite(x) or not _in_range(x, meta):
                        raise DgmPyroError(f"bad configuration: {f.name} must be {_range_text(meta) or 'finite'}, "
                                           f"got {v!r}")

    def validate(self) -> "ConfigBase":
        """Check ranges and choices (subclasses add the checks that involve several fields)."""
        self.check_fields()
        return self

    @staticmethod
    def require(checks: list[tuple[bool, str]]) -> None:
        """Raise :class:`DgmPyroError` with the message of the first failed check."""
        for ok, msg in checks:
            if not ok:
                raise DgmPyroError(f"bad configuration: {msg}")

    def digest(self) -> str:
        """SHA-256 of the configuration but its ``LENGTH`` field and the ``added`` fields at the value runs had
        before them, stored in checkpoints to detect a mismatch on resume."""
        skip = {self.LENGTH} | {f.name for f in dataclasses.fields(self)
                                if f.metadata.get("added") and getattr(self, f.name) == f.metadata["before"]}
        d = {k: v for k, v in self.to_dict().items() if k not in skip}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
