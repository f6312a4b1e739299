"""Root attributes of a cache: schema identity, version, provenance, teachers.

Every record is a frozen dataclass with ``to_dict`` / ``from_dict`` so that what
lands in ``zarr.json`` is plain JSON and is validated on the way back in.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from cache_schema.errors import NotACacheError, SchemaVersionError

SCHEMA_NAME = "teacher-cache"
SCHEMA_VERSION = "1.2"  # MAJOR.MINOR: readers refuse another MAJOR, accept any MINOR.
KINDS = ("objects", "scenes", "rooms")
Kind = Literal["objects", "scenes", "rooms"]
TEACHER_ROLES = ("image", "patch_mean", "depth", "text", "class_text", "pair_features", "tokens", "global")


def tool_version() -> str:
    """Version of the installed `teacher-cache` distribution ("unknown" from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("teacher-cache")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class TeacherRecord:
    """What produced one teacher's arrays, so two caches can be compared exactly.

    ``roles`` names the arrays stored under ``teachers/<name>/`` (see SCHEMA.md).
    ``pretrained`` is False for randomly initialised (`tiny`) teachers.
    """

    name: str
    library: str
    model: str
    pretrained_tag: str
    weights_fingerprint: str
    dim: int
    roles: tuple[str, ...]
    dtype: str = "float16"
    normalized: bool = True
    pretrained: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"teacher name must be non-empty and contain no '/': {self.name!r}")
        if self.dim <= 0:
            raise ValueError(f"teacher {self.name!r}: dim must be positive, got {self.dim}")
        unknown = set(self.roles) - set(TEACHER_ROLES)
        if unknown:
            raise ValueError(f"teacher {self.name!r}: unknown roles {sorted(unknown)}; known: {TEACHER_ROLES}")
        object.__setattr__(self, "roles", tuple(self.roles))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["roles"] = list(self.roles)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class CacheAttrs:
    """The root attributes every cache carries (``schema``, version and provenance).

    ``config`` holds the render / sampling / pairing settings of the build;
    ``dataset`` at least ``{"name": ..., "source_root": ...}``.
    """

    kind: Kind
    dataset: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    teachers: dict[str, TeacherRecord] = field(default_factory=dict)
    label_names: tuple[str, ...] = ()
    schema: str = SCHEMA_NAME
    schema_version: str = SCHEMA_VERSION
    tool: dict[str, str] = field(default_factory=lambda: {"name": SCHEMA_NAME, "version": tool_version()})

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if "name" not in self.dataset:
            raise ValueError("dataset must name itself: {'name': ..., 'source_root': ...}")
        json.dumps(self.config)  # fail early on values zarr.json cannot hold
        object.__setattr__(self, "label_names", tuple(self.label_names))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "schema_version": self.schema_version,
            "kind": self.kind,
            "dataset": dict(self.dataset),
            "config": dict(self.config),
            "teachers": {name: t.to_dict() for name, t in self.teachers.items()},
            "label_names": list(self.label_names),
            "tool": dict(self.tool),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "cache") -> CacheAttrs:
        check_schema(d, where)
        return cls(
            kind=d["kind"],
            dataset=d["dataset"],
            config=d.get("config", {}),
            teachers={n: TeacherRecord.from_dict(t) for n, t in d.get("teachers", {}).items()},
            label_names=tuple(d.get("label_names", ())),
            schema=d["schema"],
            schema_version=d["schema_version"],
            tool=d.get("tool", {}),
        )


def parse_version(version: str) -> tuple[int, int]:
    major, _, minor = str(version).partition(".")
    return int(major), int(minor or 0)


def check_schema(attrs: dict[str, Any], where: str) -> None:
    """Refuse anything that is not a teacher cache of a major version we understand."""
    if attrs.get("schema") != SCHEMA_NAME:
        raise NotACacheError(
            f"{where} is not a {SCHEMA_NAME} store (root attribute schema={attrs.get('schema')!r})"
        )
    found = attrs.get("schema_version", "?")
    try:
        found_major, _ = parse_version(found)
    except ValueError:
        raise SchemaVersionError(f"{where} has an unreadable schema_version {found!r}") from None
    ours_major, _ = parse_version(SCHEMA_VERSION)
    if found_major != ours_major:
        hint = "upgrade this tool" if found_major > ours_major else "rebuild the cache or use an older tool"
        raise SchemaVersionError(
            f"{where} has schema_version {found}, but this reader understands {ours_major}.x "
            f"(teacher-cache {tool_version()}, schema {SCHEMA_VERSION}); {hint}"
        )
