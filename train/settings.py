"""Run settings as dataclass fields: one definition gives a setting its default, its command-line option and help
(:mod:`train.cli.config_command` builds the commands from the fields), its check and its key in ``config.json``.

    steps: int = setting(300, "Optimiser steps.", check="positive")
    precision: str = setting("auto", "fp32, bf16, fp16 or auto.", choices=PRECISIONS)
    use_global: bool = setting(True, "Global distillation.", flags=("--global/--no-global",))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive": (lambda v: v > 0, "must be positive"),
    "non-negative": (lambda v: v >= 0, "must not be negative"),
    "fraction": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "share": (lambda v: 0 < v < 1, "must be in (0, 1)"),
}


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            flags: Sequence[str] = (), choices: Sequence[Any] | None = None, check: str | None = None,
            cli_type: Any = None, from_cli: Callable[[Any], Any] | None = None,
            to_cli: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field with what its command-line option needs.

    ``flags`` replaces the option's name (``--weight`` for ``term_weights``); ``choices`` and ``check`` (a key of
    :data:`CHECKS`) are validated by :func:`check_settings`; a setting whose option holds another type (a dict
    given as repeated ``KEY=VALUE``) names that ``cli_type`` and the two conversions.
    """
    if check is not None and check not in CHECKS:
        raise ValueError(f"check is one of {', '.join(CHECKS)}, got {check!r}")
    metadata = {"help": help, "flags": tuple(flags), "choices": None if choices is None else tuple(choices),
                "check": check, "cli_type": cli_type, "from_cli": from_cli, "to_cli": to_cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def same_setting(cls: type, name: str) -> Any:
    """Setting ``name`` of config ``cls`` as a field of another config: the same default, option, help and check,
    written once (``mask_ratio: float | None = same_setting(Stage2Config, "mask_ratio")``)."""
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if f is None:
        raise ValueError(f"{cls.__name__} has no setting {name!r}")
    return dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)


def option_name(f: dataclasses.Field) -> str:
    """The option a field is given with: ``--batch-size``, or its first flag (``--global`` for use_global)."""
    flags = f.metadata.get("flags") or ()
    return flags[0].split("/")[0] if flags else "--" + f.name.replace("_", "-")


def check_settings(cfg: Any) -> None:
    """Every field's declared choices and bounds: a one-line error naming its option. ``None`` is "unset"."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"{option_name(f)} is one of {', '.join(map(str, choices))}, got {value!r}")
        check = f.metadata.get("check")
        if check is not None and not CHECKS[check][0](value):
            raise ValueError(f"{option_name(f)} {CHECKS[check][1]}, got {value}")


def parse_weights(values: Sequence[str] | None) -> dict[str, float]:
    """Repeated ``TERM=NUMBER`` options as a dict: ``--weight clip-vit-b16/text=0.5``."""
    weights = {}
    for text in values or ():
        term, sep, number = text.partition("=")
        try:
            weights[term] = float(number)
        except ValueError:
            sep = ""
        if not sep or not term:
            raise ValueError(f"--weight is TERM=NUMBER like clip-vit-b16/text=0.5, got {text!r}")
    return weights


def format_weights(weights: dict[str, float]) -> list[str]:
    return [f"{term}={value}" for term, value in weights.items()]
