"""The encoder registry: families by name, presets as JSON files, one way to build and rebuild an encoder.

    from train.models import create_encoder, list_encoders
    list_encoders()                        # ['point-m2ae', 'point-m2ae-tiny', 'point-mae', 'point-mae-tiny']
    encoder = create_encoder("point-mae", drop_path_rate=0.0)
    tokens, global_feature = encoder(points)

A preset is ``train/model_configs/<name>.json``: ``{"family": ..., <the family config's fields>}``; anything
not in the file takes the family config's default. Checkpoints store :meth:`PointEncoder.describe`
(``{"name": family, "config": {...}}``) and :func:`encoder_from_record` rebuilds the same module from it.
"""

from __future__ import annotations

import dataclasses
import json
import os

from train.models.encoders.base import Encoded, Level, MaskedLevel, Patches, PointEncoder

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "model_configs")
FAMILIES: dict[str, type[PointEncoder]] = {}
ALIASES = {"base": "point-mae", "tiny": "point-mae-tiny"}  # the names of the first Point-MAE presets


def register_family(cls: type[PointEncoder]) -> type[PointEncoder]:
    """Class decorator: make an encoder family buildable by its ``family`` name."""
    FAMILIES[cls.family] = cls
    return cls


def list_encoders() -> list[str]:
    """The preset names ``create_encoder`` and every ``--model`` option accept (aliases aside)."""
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))


def preset(name: str) -> dict:
    """A preset's contents: ``{"family": ..., fields...}``; a one-line error naming the known presets."""
    path = os.path.join(CONFIG_DIR, f"{ALIASES.get(name, name)}.json")
    if not os.path.exists(path):
        aliases = ", ".join(f"{a} = {b}" for a, b in ALIASES.items())
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(list_encoders())} ({aliases})")
    with open(path) as f:
        return json.load(f)


def encoder_config(name: str, **overrides):
    """The family and the config of preset ``name`` with ``overrides`` applied (unknown fields are an error)."""
    fields = preset(name)
    family = FAMILIES[fields.pop("family")]
    known = {f.name for f in dataclasses.fields(family.config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{name} ({family.family}) has no setting {', '.join(unknown)}; it has {', '.join(sorted(known))}")
    return family, family.config_class(**{**fields, **overrides})


def recipe_overrides(family: type[PointEncoder], recipe: str | None) -> dict:
    """The config changes the family's official ``recipe`` makes (``pretrain``, ``modelnet40``, ``scanobjectnn``,
    ``segment``); none for ``None`` or a recipe the family does not change."""
    return dict(family.recipes.get(recipe, {}).get("encoder", {})) if recipe else {}


def create_encoder(name: str, recipe: str | None = None, **overrides) -> PointEncoder:
    """A randomly initialised encoder of preset ``name`` (see :func:`list_encoders`), the family's ``recipe``
    and then ``overrides`` applied."""
    family = encoder_config(name)[0]
    return family(encoder_config(name, **{**recipe_overrides(family, recipe), **overrides})[1])


def encoder_from_record(record: dict, recipe: str | None = None, **overrides) -> PointEncoder:
    """Rebuild an encoder from a checkpoint's ``{"name": family, "config": {...}}`` (weights not loaded), with
    the settings of the family's ``recipe`` and ``overrides`` (for settings no weight depends on)."""
    name = record["name"]
    if name not in FAMILIES:
        raise ValueError(f"unknown encoder family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    family = FAMILIES[name]
    return family(family.config_class(**{**record["config"], **recipe_overrides(family, recipe), **overrides}))


# the families register themselves on import
from train.models.encoders import point_m2ae  # noqa
from train.models.encoders import point_mae  # noqa: E402,F401

__all__ = ["ALIASES", "FAMILIES", "Encoded", "Level", "MaskedLevel", "Patches", "PointEncoder", "create_encoder",
           "encoder_config", "encoder_from_record", "list_encoders", "preset", "recipe_overrides",
           "register_family"]
