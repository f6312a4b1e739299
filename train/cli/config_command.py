"""A `train` command built from its run's config dataclass: every field is an option, with the field's default and
help (:func:`train.settings.setting`), so a setting is written once.

``--config RUN/config.json`` is read before the other options: an option typed on the command line wins, every
other setting is the saved run's (``None`` included), and settings the run derives (a warm-up from the steps) are
derived again.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from train.cli.options import fail, train_and_report

CONTROLS: dict[str, tuple[Any, Any, Any]] = {  # run controls: how to run, not what (not saved in config.json)
    "resume": (bool, typer.Option(help="Continue OUT/last.pt exactly."), False),
    "stop_at": (Optional[int], typer.Option(help="Save and exit after this step (resume later)."), None),
    "progress": (bool, typer.Option("--progress/--no-progress", help="Progress bar."), True),
}
NOT_FROM_CONFIG = ("out", "overwrite")  # a --config re-run writes where and how this command line says
SAVED = "train.saved_settings"  # ctx.meta key: the --config run's settings


def config_command(cls: type, stage: str, run: Callable[..., dict], doc: str, *, fixed: dict | None = None,
                   omit: Sequence[str] = (), controls: Sequence[str] = ("resume", "stop_at", "progress"),
                   config: bool = True, control_help: dict[str, str] | None = None) -> Callable[..., None]:
    """A typer command that builds ``cls`` from its options and calls ``run(cfg, **controls)``.

    ``fixed`` settings are the command's own (``mode="pretrain"``); ``omit`` and ``cls.not_options`` are fields the
    command does not offer (the run derives them); ``stage`` is the run kind a ``--config`` file must be.
    """
    fixed = dict(fixed or {})
    hints = typing.get_type_hints(cls)
    skip = set(omit) | set(fixed) | set(getattr(cls, "not_options", ()))
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    described = cls.described_defaults() if hasattr(cls, "described_defaults") else {}
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    params += [_option(f, hints[f.name], described.get(f.name)) for f in fields]
    if config:
        params.append(_config_option(cls, stage, fields))
    for name in controls:
        kind, info, default = CONTROLS[name]
        if name in (control_help or {}):  # the command's own words for it (few-shot resumes fold by fold)
            info = typer.Option(*info.param_decls, help=control_help[name])
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, info],
                                        default=default))

    def command(ctx: typer.Context, **options: Any) -> None:
        options.pop("config", None)
        run_controls = {name: options.pop(name) for name in controls}
        values = {**options, **fixed}
        try:
            for f in fields:
                if f.metadata.get("from_cli"):
                    values[f.name] = f.metadata["from_cli"](values[f.name])
            for name, value in ctx.meta.get(SAVED, {}).items():
                if not _typed(ctx, name):
                    values[name] = value
            if "cache" in values and not values["cache"]:
                raise ValueError("--cache is required" + (" (or --config RUN/config.json to take the run's)"
                                                          if config else ""))
            cfg = cls(**values)
        except (TypeError, ValueError) as e:
            fail(e)
        train_and_report(lambda: run(cfg, **run_controls), cfg.out)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    command.__name__ = stage.replace("-", "_")
    return command


def _option(f: dataclasses.Field, hint: Any, described: str | None) -> inspect.Parameter:
    """A field as a typer option: its type (or ``cli_type``), flags, help and default."""
    kind = f.metadata.get("cli_type") or hint
    if type(None) in typing.get_args(kind):  # ``int | None``: typer reads Optional[int]
        kind = Optional[next(a for a in typing.get_args(kind) if a is not type(None))]
    help_text = f.metadata.get("help", "")
    if described:
        help_text = f"{help_text} [recipe: {described}]".strip()
    info = typer.Option(*f.metadata.get("flags", ()), help=escape(help_text))  # "[recipe: 8]" is no rich markup
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    elif f.name == "cache":  # required, unless --config gives it
        default, kind = None, Optional[kind]
    else:
        return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, info])
    if f.metadata.get("to_cli"):
        default = f.metadata["to_cli"](default) or None
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, info],
                             default=default)


def _config_option(cls: type, stage: str, fields: list[dataclasses.Field]) -> inspect.Parameter:
    """``--config FILE``: read first (eager), so that a bad file stops the command before anything else."""
    offered = {f.name for f in fields} - set(NOT_FROM_CONFIG)

    def load(ctx: typer.Context, value: Optional[str]) -> Optional[str]:
        if not value:
            return value
        try:
            with open(value) as fh:
                saved = json.load(fh)
            if saved.get("stage") != stage:
                raise ValueError(f"{value} is a {saved.get('stage')!r} run; this command trains {stage!r}")
            settings = cls.from_saved(dict(saved["config"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            fail(ValueError(str(e) if str(e).startswith(value) else f"--config {value}: {e}"))
        ctx.meta[SAVED] = {name: setting for name, setting in settings.items() if name in offered}
        return value

    info = typer.Option("--config", is_eager=True, callback=load,
                        help="A run's config.json: train again with its settings; options given here override them.")
    return inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[Optional[str], info],
                             default=None)


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given on the command line (by the source's name: typer may bring its own copy of
    click, whose enum is not click's)."""
    return getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
