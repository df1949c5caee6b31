"""The model registry: one place that maps a model name to how it lives in a run folder.

A model kind (:class:`dgm_pyro.runs.ModelKind`) declares its configuration dataclass, the datasets it
accepts, how it is built from configuration and data, how it trains and which later commands
(``evaluate``, ``sample``, ``diagnose``, ``forecast``) apply to its runs. Run folders are loaded by the
model name in their ``config.json``; the command line makes one ``dgm-pyro train NAME`` subcommand per
registered name.

Third-party models register without editing dgm-pyro, either with the decorator::

    from dgm_pyro.registry import register_model
    from dgm_pyro.runs import DatasetModelKind

    @register_model
    class MyModel(DatasetModelKind):
        name = "my-model"
        ...

in a module that is imported before the CLI runs, or through the Python entry-point group
``dgm_pyro.models`` of their package (``[project.entry-points."dgm_pyro.models"] my-model =
"my_package.module:MyModel"``), which is loaded on the first look-up. The built-in models register the same
way (dgm-pyro's own ``pyproject.toml``), so this module imports no model: the registry sits below them.
An entry point that cannot be loaded is skipped with a warning that names it and its package.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from typing import Any

from .errors import DgmPyroError

__all__ = ["register_model", "get_model", "model_names", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "dgm_pyro.models"
_REGISTRY: dict[str, Any] = {}
_loaded = False


def register_model(kind: Any) -> Any:
    """Register a model kind (a class with a ``name``); usable as a class decorator. Returns ``kind``."""
    name = getattr(kind, "name", None)
    if not isinstance(name, str) or not name:
        raise DgmPyroError(f"{kind!r}: a model kind needs a non-empty string 'name'")
    if name in _REGISTRY and _REGISTRY[name] is not kind:
        raise DgmPyroError(f"a model named '{name}' is already registered ({_REGISTRY[name].__module__})")
    _REGISTRY[name] = kind
    return kind


def _load_all() -> None:
    """Register the built-in models and the entry points of installed packages (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not break the other models or the command line
            package = ep.dist.name if ep.dist is not None else "an unknown package"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            warnings.warn(f"skipped the model '{ep.name}' of {package}: its entry point '{ep.value}' (group "
                          f"{ENTRY_POINT_GROUP}) failed to load: {type(e).__name__}: {first}", RuntimeWarning,
                          stacklevel=2)
            continue
        if isinstance(obj, type) and ep.name not in _REGISTRY:
            register_model(obj)
    if not {"cvae", "graph-ssm"} <= set(_REGISTRY):
        raise DgmPyroError("the built-in models are not registered: dgm-pyro's package metadata is missing or out of "
                           "date; reinstall it (pip install -e . in a checkout)")


def get_model(name: str) -> Any:
    """The registered model kind called ``name`` (an instance)."""
    _load_all()
    if name not in _REGISTRY:
        raise DgmPyroError(unknown_model_message(name))
    return _REGISTRY[name]()


def unknown_model_message(name: str) -> str:
    """One line for a model name that is not registered, with the nearest registered name when one is close."""
    import difflib

    close = difflib.get_close_matches(name, model_names(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown model '{name}'{hint}; registered models: {', '.join(model_names())}"


def model_names() -> list[str]:
    """Names of the registered models, the built-in ones first."""
    _load_all()
    return list(_REGISTRY)
