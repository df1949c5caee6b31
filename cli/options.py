"""Click options generated from a model's configuration dataclass, and the ``train`` group with one
subcommand per registered model (``dgm-pyro train cvae``, ``dgm-pyro train graph-ssm``, ...).

Defaults, help texts, choices and ranges come from the dataclass fields (:func:`dgm_pyro.config.option`),
so ``dgm-pyro train MODEL --help`` shows the model's own defaults and nothing is written twice.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Callable, Optional

import click

from dgm_pyro.config import field_default, flag_name
from dgm_pyro.errors import DgmPyroError

#: the model trained by ``dgm-pyro train`` without a model name
DEFAULT_MODEL = "cvae"


def _click_type(f: dataclasses.Field, hint: Any) -> Any:
    meta = f.metadata
    if typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if meta.get("choices"):
        return click.Choice(list(meta["choices"]))
    bounds = {"min": meta.get("min"), "max": meta.get("max"), "min_open": meta.get("min_open", False),
              "max_open": meta.get("max_open", False)}
    if hint is int:
        return click.IntRange(**bounds) if bounds["min"] is not None or bounds["max"] is not None else int
    if hint is float:
        return click.FloatRange(**bounds) if bounds["min"] is not None or bounds["max"] is not None else float
    return str


def _int_list(flag: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def parse(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or isinstance(value, list):
            return value
        try:
            return [int(v) for v in str(value).split(",")]
        except ValueError:
            raise DgmPyroError(f"{flag} must be comma-separated integers like 256,256; got '{value}'") from None
    return parse


def config_options(config_class: type) -> list[click.Option]:
    """One click option per user-facing field of ``config_class``, in field order."""
    hints = typing.get_type_hints(config_class)
    options = []
    for f in dataclasses.fields(config_class):
        meta = f.metadata
        if not meta or not meta.get("cli", True):
            continue
        flag, hint = flag_name(f), hints[f.name]
        default = field_default(f)
        common = {"help": meta["help"], "expose_value": True}
        if hint is bool:
            neg = "--no-" + flag[2:]
            options.append(click.Option([f"{flag}/{neg}", f.name], default=default, show_default=True, **common))
        elif hint == list[int]:
            options.append(click.Option([flag, f.name], default=",".join(map(str, default)), show_default=True,
                                        callback=_int_list(flag), metavar="W1,W2,...", **common))
        else:
            options.append(click.Option([flag, f.name], type=_click_type(f, hint), default=default,
                                        show_default=default is not None, metavar=meta.get("metavar"), **common))
    return options


def flags_of(config_class: type) -> set[str]:
    """Every command-line flag of a configuration (both forms of a boolean), from its generated options."""
    return {flag for option in config_options(config_class) for flag in option.opts + option.secondary_opts}


def given_settings(ctx: click.Context, config_class: type) -> dict[str, Any]:
    """The configuration fields given on the command line (not defaults)."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return {k: v for k, v in ctx.params.items()
            if k in names and ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}


def resolve_config(kind: Any, ctx: click.Context, config_file: Optional[str]) -> Any:
    """The validated configuration: the dataclass defaults, then the TOML file, then the flags given."""
    cls = kind.config_class
    settings = cls.from_toml(config_file) if config_file else {}
    if settings.get("model", kind.name) != kind.name:
        raise DgmPyroError(f"{config_file}: configures model '{settings['model']}', not '{kind.name}'")
    settings.update(given_settings(ctx, cls))
    settings["model"] = kind.name
    return cls.from_dict(settings, source=config_file or "options").validate()


class ModelCommand(click.Command):
    """``dgm-pyro train MODEL``: an option of another model is named as such, on one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            from dgm_pyro.registry import get_model, model_names

            owners = [m for m in model_names() if m != self.name and e.option_name in flags_of(get_model(m).config_class)]
            if owners:
                raise click.UsageError(f"{e.option_name} is an option of 'dgm-pyro train {owners[0]}', not of "
                                       f"'dgm-pyro train {self.name}' (see 'dgm-pyro train {self.name} --help')") from None
            raise


def _model_of_resume(args: list[str]) -> Optional[str]:
    """The model name in the ``config.json`` of the folder given to ``--resume``, where readable."""
    for i, a in enumerate(args):
        path = a.split("=", 1)[1] if a.startswith("--resume=") else (args[i + 1] if a == "--resume" and i + 1 < len(args)
                                                                      else None)
        if path is not None:
            try:
                import json

                model = json.loads(Path(path, "config.json").read_text()).get("model")
                return model if isinstance(model, str) else None
            except (OSError, ValueError, AttributeError):
                return None
    return None


class TrainGroup(click.Group):
    """One subcommand per registered model, built from the registry when asked for; ``dgm-pyro train
    [OPTIONS]`` without a model name trains :data:`DEFAULT_MODEL` (or, with ``--resume``, the run's model)."""

    def __init__(self, *args: Any, make_command: Callable[[Any], click.Command], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.make_command = make_command

    def list_commands(self, ctx: click.Context) -> list[str]:
        from dgm_pyro.registry import model_names

        return model_names()

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        from dgm_pyro.registry import get_model, model_names

        return self.make_command(get_model(name)) if name in model_names() else None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
            args = [_model_of_resume(args) or DEFAULT_MODEL] + list(args)
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple:
        from dgm_pyro.registry import model_names, unknown_model_message

        if args and args[0] not in model_names():
            raise DgmPyroError(unknown_model_message(args[0]))
        return super().resolve_command(ctx, args)


def options_markdown(config_class: type) -> str:
    """The Markdown table of a configuration's options (docs/cli.md holds it between ``<!-- options:NAME -->``
    markers, and a test checks it against this function)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        if not f.metadata or not f.metadata.get("cli", True):
            continue
        default = field_default(f)
        flag = flag_name(f)
        if hints[f.name] is bool:
            flag, default = f"{flag}` / `--no-{flag[2:]}", "on" if default else "off"
        elif isinstance(default, list):
            default = ",".join(map(str, default))
        choices = f.metadata.get("choices")
        meaning = f.metadata["help"].replace("|", "\\|") + (f" One of: {', '.join(choices)}." if choices else "")
        rows.append(f"| `{flag}` | {'none' if default is None else f'`{default}`'} | {meaning} |")
    return "\n".join(rows)


def _model_sample_options() -> list[click.Option]:
    """The options registered models add to ``dgm-pyro sample`` (their ``sample_options``), each marked with
    the model whose runs take it; a flag two models declare is shown once."""
    from dgm_pyro.registry import get_model, model_names

    options: dict[str, click.Option] = {}
    for name in model_names():
        declared = getattr(get_model(name), "sample_options", None)
        for option in config_options(declared) if declared is not None else []:
            if option.name in options:
                options[option.name].help += f"; {name} runs"
                continue
            option.help = f"{option.help} (for {name} runs"
            options[option.name] = option
    for option in options.values():
        option.help += ")"
    return list(options.values())


class SampleCommand(click.Command):
    """``dgm-pyro sample``: its own options, then the options registered models declare for their runs."""

    _extra: Optional[list[click.Option]] = None

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if SampleCommand._extra is None:
            SampleCommand._extra = _model_sample_options()
        params = super().get_params(ctx)
        return params[:-1] + SampleCommand._extra + params[-1:]  # --help stays last


def model_sample_settings(ctx: click.Context, kind: Any) -> dict[str, Any]:
    """The model options of ``dgm-pyro sample`` given on the command line, checked against the run's model:
    an option another model declares is refused in one line."""
    declared = getattr(kind, "sample_options", None)
    mine = {f.name for f in dataclasses.fields(declared)} if declared is not None else set()
    given = {k: v for k, v in ctx.params.items()
             if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE
             and any(o.name == k for o in SampleCommand._extra or [])}
    foreign = sorted(set(given) - mine)
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise DgmPyroError(f"{flags}: not an option of a {kind.name} run's sample (see 'dgm-pyro sample --help')")
    return given
