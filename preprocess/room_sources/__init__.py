"""Indoor-room datasets: each source lists its rooms as :class:`RoomItem` rows.

Listing (directory listings only) happens in the build coordinator;
:func:`load_room` reads one room's points, colours, classes and instances in a
worker and raises :class:`~preprocess.errors.BadInput` for a broken room,
which then becomes a failed row with that reason. A room that loads with a
repair or a mapping (a stray character removed, ``stairs`` read as clutter)
carries :attr:`RoomData.notes`, stored as the done row's ``status_reason``.

S3DIS and the demo rooms use the 13 S3DIS classes, so their caches share
``label_names``, and their boxes are the axis-aligned bounds of each instance
of a box class (every class but ceiling, floor and wall). A source with its own
classes and boxes (ScanNet: NYU40 classes, votenet's 18 box classes, boxes as
prepared) says so in its catalog (``label_names``, ``box_classes``,
``box_rule``).

Areas are an S3DIS notion: a source without them (ScanNet) lists its rooms
with ``area=None`` and takes its splits from its own lists; such a catalog has
no ``area_N`` splits and no ``test_area``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from preprocess.sources import row_order, rows_by_split

S3DIS_CLASSES = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa",
                 "bookcase", "board", "clutter")
BOX_CLASSES = tuple(c for c in S3DIS_CLASSES if c not in ("ceiling", "floor", "wall"))
BOX_RULE = "axis-aligned bounds of the points of each instance whose class is one of box_classes"


@dataclass(frozen=True)
class RoomItem:
    """One room to build: its id (``Area_5/office_1``, ``scene0011_00``), split, area (None for a source
    without areas) and what its source needs (picklable)."""

    id: str
    split: str  # "train" or "test" (S3DIS, demo), "train" or "val" (ScanNet)
    area: int | None
    source: dict[str, Any] = field(repr=False)


@dataclass
class RoomData:
    """One loaded room, points in the dataset's own coordinates."""

    points: np.ndarray     # (N, 3) float32
    colors: np.ndarray     # (N, 3) uint8
    labels: np.ndarray     # (N,) uint8, index into the catalog's label_names, 255 = unlabelled
    instances: np.ndarray  # (N,) int32, -1 = none
    boxes: np.ndarray      # (K, 6) float32: cx, cy, cz, dx, dy, dz
    box_labels: np.ndarray  # (K,) uint8, index into the catalog's box_classes
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RoomCatalog:
    """Everything a source lists: rooms in a stable order, class and box-class names, how boxes were made,
    listing-time notes."""

    name: str
    source_root: str
    label_names: tuple[str, ...]
    box_classes: tuple[str, ...]
    test_area: int | None  # the area whose rooms are split ``test``; None for a source without areas
    items: tuple[RoomItem, ...] = field(repr=False)
    notes: tuple[str, ...] = ()
    box_rule: str = BOX_RULE

    def splits(self) -> dict[str, list[int]]:
        """Every item's split, and one ``area_N`` per area (for rooms that have one): name -> row indices."""
        out = rows_by_split(self.items)
        for row, item in enumerate(self.items):
            if item.area is not None:
                out.setdefault(f"area_{item.area}", []).append(row)
        return out

    def shuffled(self, seed: int) -> RoomCatalog:
        """The rooms in the cache's row order (a seeded random order, see ``row_order``)."""
        return dataclasses.replace(self, items=row_order(self.items, seed))

    def limited(self, max_rooms: int | None) -> RoomCatalog:
        """The first ``max_rooms`` rooms of every area (of every split for rooms without one), order kept (quick
        runs that still have every split); the notes kept are those naming a kept room (``<id>/...``)."""
        if not max_rooms:
            return self
        seen: dict[int | str, int] = {}
        keep = []
        for item in self.items:
            group = item.split if item.area is None else item.area
            seen[group] = seen.get(group, 0) + 1
            if seen[group] <= max_rooms:
                keep.append(item)
        named = [n for n in self.notes if any(f"{it.id}/" in n for it in keep)]  # notes on the rooms kept
        return dataclasses.replace(self, items=tuple(keep), notes=tuple(named))


SOURCES = ("s3dis", "scannet", "demo-rooms")  # each a lister and a loader in its own module


def list_room_source(name: str, root: str | None, **options: Any) -> RoomCatalog:
    """The catalog of room dataset ``name`` (s3dis, scannet, demo-rooms)."""
    from preprocess.room_sources import demo_rooms, s3dis, scannet

    sources = {"s3dis": s3dis.list_rooms, "scannet": scannet.list_rooms, "demo-rooms": demo_rooms.list_rooms}
    if name not in sources:
        raise ValueError(f"unknown room dataset {name!r}; choose one of {list(SOURCES)}")
    if name != "demo-rooms" and not root:
        raise ValueError(f"dataset {name!r} needs its root folder (--root)")
    return sources[name](root, **options)


def load_room(item: RoomItem) -> RoomData:
    """Read one room (in a worker); raises BadInput with the reason when it is broken."""
    from preprocess.room_sources import demo_rooms, s3dis, scannet

    loaders = {"s3dis": s3dis.load_room, "scannet": scannet.load_room, "demo-rooms": demo_rooms.load_room}
    return loaders[item.source["dataset"]](item)


def summary_notes(name: str, notes: list[str]) -> list[str]:
    """Lines a source adds to the build summary from its done rooms' notes (ScanNet: boxes dropped in total)."""
    from preprocess.room_sources import scannet

    return scannet.summary_notes(notes) if name == "scannet" else []


# S3DIS class index -> BOX_CLASSES index (255: no box for this class)
BOX_INDEX = np.array([BOX_CLASSES.index(c) if c in BOX_CLASSES else 255 for c in S3DIS_CLASSES], np.uint8)


def instance_boxes(points: np.ndarray, labels: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, 6) float32 boxes (centre, size) and (K,) uint8 box classes: the bounds of each instance of a box
    class, in instance order. An instance's class is that of its first point (sources give one class each)."""
    keep = BOX_INDEX[labels] != 255
    pts, ins, lab = points[keep], instances[keep], labels[keep]
    if not len(pts):
        return np.zeros((0, 6), np.float32), np.zeros(0, np.uint8)
    order = np.argsort(ins, kind="stable")
    pts, ins, lab = pts[order], ins[order], lab[order]
    starts = np.flatnonzero(np.r_[True, ins[1:] != ins[:-1]])
    lo = np.minimum.reduceat(pts, starts).astype(np.float64)
    hi = np.maximum.reduceat(pts, starts).astype(np.float64)
    boxes = np.concatenate([(lo + hi) / 2, hi - lo], axis=1).astype(np.float32)
    return boxes, BOX_INDEX[lab[starts]]
