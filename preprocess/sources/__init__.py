"""Object datasets: each source lists its shapes as :class:`MeshItem` rows.

Listing is cheap and happens in the build coordinator; loading a mesh
(:func:`preprocess.meshes.load_mesh`) happens in the workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MeshItem:
    """One shape to build: its id, class index and where its mesh comes from.

    ``path`` is a file for on-disk datasets; ``procedural`` holds the generator
    arguments of built-in demo shapes (then ``path`` is None).
    """

    id: str
    label: int
    split: str
    path: str | None = None
    procedural: dict[str, Any] | None = None


@dataclass(frozen=True)
class Catalog:
    """Everything a source lists: items in a stable order, class names, source root."""

    name: str
    source_root: str
    label_names: tuple[str, ...]
    items: tuple[MeshItem, ...] = field(repr=False)
    parts: dict | None = None  # per-point part labels: {"names": [...], "class_parts": {class: [ids]}}

    def splits(self) -> dict[str, list[int]]:
        return rows_by_split(self.items)

    def shuffled(self, seed: int) -> Catalog:
        """The items in the cache's row order (see :func:`row_order`)."""
        return dataclasses.replace(self, items=row_order(self.items, seed))

    def limited(self, max_shapes: int | None) -> Catalog:
        """The first ``max_shapes`` items per class (for quick runs), order kept."""
        if not max_shapes:
            return self
        seen: dict[int, int] = {}
        keep = []
        for item in self.items:
            if seen.get(item.label, 0) < max_shapes:
                seen[item.label] = seen.get(item.label, 0) + 1
                keep.append(item)
        return dataclasses.replace(self, items=tuple(keep))


ROW_ORDER = "sha256(seed:id)"


def row_order(items, seed: int) -> tuple:
    """Items (shapes or frames) in a seeded random order: by the hash of the seed and each item's id.

    Sources list class after class or scene after scene; written in that order,
    a block of rows would hold one class and a streamed batch a handful. In this
    order any block is a random draw. It depends on the ids alone (not on the
    listing order), so a rerun or a resumed build writes the same rows, and
    ``ids`` maps every row back to its source.
    """
    return tuple(sorted(items, key=lambda it: hashlib.sha256(f"{seed}:{it.id}".encode()).digest()))


def rows_by_split(items) -> dict[str, list[int]]:
    """split name -> row indices, for any items with a ``split`` (shapes or frames)."""
    out: dict[str, list[int]] = {}
    for row, item in enumerate(items):
        out.setdefault(item.split, []).append(row)
    return out


def hashed_split(key: str, test_fraction: float = 0.2) -> str:
    """A stable train/test assignment from the id alone (for datasets without an official split)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2**64
    return "test" if h < test_fraction else "train"


def list_source(name: str, root: str | None, **options: Any) -> Catalog:
    """The catalog of dataset ``name`` (shapenet, modelnet40, meshes, demo)."""
    from preprocess.sources import demo, meshes, modelnet40, shapenet

    sources = {"shapenet": shapenet.list_items, "modelnet40": modelnet40.list_items,
               "meshes": meshes.list_items, "demo": demo.list_items}
    if name not in sources:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(sources)}")
    if name != "demo" and not root:
        raise ValueError(f"dataset {name!r} needs its root folder (--root)")
    return sources[name](root, **options)
