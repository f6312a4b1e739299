"""Reading a cache: typed, read-only access by local path or fsspec URL.

    cache = open_cache("s3://bucket/shapenet.zarr")     # ObjectCache, SceneCache or RoomCache
    cache.points(cache.split("train")[:32])             # (32, P, 3)
    cache.teacher_array("clip-vit-b16", "image")        # zarr array (N, V, D), read lazily

Readers never lock: any number may read a finished store at once. A store
still being built (or whose build was killed) is refused unless
``allow_incomplete=True``, because its rows may change under the reader.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import zarr

from cache_schema.chunking import ChunkPlan
from cache_schema.errors import IncompleteCacheError, NotACacheError
from cache_schema.layout import DONE, FAILED, Layout
from cache_schema.metadata import CacheAttrs, TeacherRecord
from cache_schema.storage import Location, locate

Rows = int | slice | np.ndarray | list[int]


def _select(arr: zarr.Array, rows: Rows) -> np.ndarray:
    if isinstance(rows, (int, np.integer, slice)):
        return arr[rows]
    idx = np.asarray(rows, dtype=np.int64)
    if idx.size == 0:
        return np.zeros((0, *arr.shape[1:]), dtype=arr.dtype)
    order = np.argsort(idx, kind="stable")  # zarr wants increasing indices; restore the caller's order
    out = arr.oindex[idx[order]]
    result = np.empty_like(out)
    result[order] = out
    return result


class CacheReader:
    """What every cache offers: attributes, layout, status, splits, raw arrays."""

    def __init__(self, loc: Location, group: zarr.Group, allow_incomplete: bool = False) -> None:
        self.loc = loc
        self.group = group
        raw = dict(group.attrs)
        self.attrs = CacheAttrs.from_dict(raw, where=loc.url)
        self.layout = Layout.from_dict(raw["layout"])
        self.chunking = ChunkPlan.from_dict(raw["chunking"])
        self.build: dict[str, Any] = raw.get("build", {})
        if self.build.get("state") != "finalized" and not allow_incomplete:
            raise IncompleteCacheError(
                f"{loc.url} is not finalized (build state {self.build.get('state')!r}): its build is still "
                "running or was killed. Re-run the build to finish it, or pass allow_incomplete=True.")

    @property
    def kind(self) -> str:
        return self.attrs.kind

    @property
    def num_rows(self) -> int:
        return self.layout.num_rows

    @property
    def fingerprint(self) -> str | None:
        return self.build.get("fingerprint")

    @property
    def teachers(self) -> dict[str, TeacherRecord]:
        return self.attrs.teachers

    def array(self, path: str) -> zarr.Array:
        """A raw zarr array of the store (read lazily)."""
        try:
            node = self.group[path]
        except KeyError:
            raise KeyError(f"{self.loc.url} has no array {path!r}") from None
        if not isinstance(node, zarr.Array):
            raise KeyError(f"{self.loc.url}: {path!r} is a group, not an array")
        return node

    def teacher_array(self, name: str, role: str) -> zarr.Array:
        """``teachers/<name>/<role>``, e.g. ``("clip-vit-b16", "image")`` -> (N, V, D)."""
        if name not in self.teachers:
            raise KeyError(f"{self.loc.url} has no teacher {name!r}; it has {sorted(self.teachers)}")
        if role not in self.teachers[name].roles:
            raise KeyError(f"teacher {name!r} in {self.loc.url} has roles {self.teachers[name].roles}, not {role!r}")
        return self.array(f"teachers/{name}/{role}")

    @cached_property
    def ids(self) -> np.ndarray:
        return self.array(self.layout.ids_path)[:]

    @cached_property
    def status(self) -> np.ndarray:
        return self.array(self.layout.status_path)[:]

    def failures(self) -> dict[str, str]:
        """id -> reason for every failed row."""
        reasons = self.array(self.layout.status_path + "_reason")[:]
        rows = np.flatnonzero(self.status == FAILED)
        return {str(self.ids[r]): str(reasons[r]) for r in rows}

    @property
    def split_names(self) -> list[str]:
        return list(self.group.attrs.get("splits", []))

    def split(self, name: str) -> np.ndarray:
        """Row indices (int64) of a named split."""
        if name not in self.split_names:
            raise KeyError(f"{self.loc.url} has no split {name!r}; it has {self.split_names}")
        return self.array(f"split/{name}")[:].astype(np.int64)

    def done_rows(self, name: str) -> np.ndarray:
        """Row indices (int64) of a named split whose rows were built (status done), in split order."""
        rows = self.split(name)
        return rows[self.status[rows] == DONE]


class ObjectCache(CacheReader):
    """An ``objects`` cache: N shapes with points, views, captions and teacher embeddings."""

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.attrs.label_names

    @cached_property
    def labels(self) -> np.ndarray:
        return self.array("label")[:].astype(np.int64)

    @property
    def has_part_labels(self) -> bool:
        return "part_label" in self.group and bool(self.attrs.config.get("parts"))

    @property
    def part_names(self) -> tuple[str, ...]:
        """Names of the global part ids of ``part_label`` (``config.parts.names``); () without part labels."""
        return tuple(self.attrs.config.get("parts", {}).get("names", ()))

    @cached_property
    def class_parts(self) -> list[np.ndarray]:
        """For every class index, the part ids its shapes may carry."""
        owned = self.attrs.config.get("parts", {}).get("class_parts", {})
        return [np.asarray(owned.get(c, []), np.int64) for c in self.label_names]

    def points(self, rows: Rows = slice(None)) -> np.ndarray:
        """(n, P, 3) unit-sphere points, float32."""
        return _select(self.array("points"), rows).astype(np.float32)

    def captions(self, rows: Rows = slice(None)) -> np.ndarray:
        """(n, K) caption strings."""
        return _select(self.array("captions"), rows)

    def teacher(self, name: str, role: str, rows: Rows = slice(None)) -> np.ndarray:
        """Teacher embeddings of some rows as float32, e.g. (n, V, D) for images."""
        return _select(self.teacher_array(name, role), rows).astype(np.float32)

    @property
    def view_cameras(self) -> np.ndarray:
        """(V, 4, 4) camera-to-world matrices (convention in SCHEMA.md)."""
        return self.array("views/camera")[:]


class SceneFrame(NamedTuple):
    """One frame of a scenes cache; pair arrays index into this frame's points."""

    id: str
    points: np.ndarray          # (n, 4) float32 xyz + intensity, LiDAR frame
    labels: np.ndarray | None   # (n,) uint8 or None
    K: np.ndarray               # (C, 3, 3) float32 intrinsics
    T_lidar_to_cam: np.ndarray  # (C, 4, 4) float32
    image_size: np.ndarray      # (C, 2) int32 width, height
    pair_point: np.ndarray      # (m,) int32 index into points
    pair_camera: np.ndarray     # (m,) uint8
    pair_uv: np.ndarray         # (m, 2) float32 pixel coordinates
    pair_features: dict[str, np.ndarray]  # teacher -> (m, D) float16


class RaggedCache(CacheReader):
    """A cache whose rows own variable-length slices of flat arrays (scenes, rooms)."""

    @cached_property
    def _offsets(self) -> dict[str, np.ndarray]:
        return {fam: self.array(path)[:] for fam, path in self.layout.offsets_paths.items()}

    def offsets(self, family: str) -> np.ndarray:
        """(rows+1,) int64 edges of one ragged family's values per row (``points``, ``pairs``, ``boxes``)."""
        return self._offsets[family]

    def ragged(self, path: str, row: int) -> np.ndarray:
        """One row's slice of a flat array (``points``, ``labels``, ``pairs/uv``, ...)."""
        axis = self.layout[path].axis
        if axis not in self.layout.offsets_paths:
            raise KeyError(f"{path} is not a ragged per-row array")
        o = self.offsets(axis)
        if not 0 <= row < self.num_rows:
            raise IndexError(f"row {row} outside 0..{self.num_rows - 1}")
        return self.array(path)[int(o[row]):int(o[row + 1])]


class SceneCache(RaggedCache):
    """A ``scenes`` cache: F frames of LiDAR points, cameras and point-pixel pairs."""

    @property
    def num_frames(self) -> int:
        return self.num_rows

    def frame(self, i: int) -> SceneFrame:
        has_labels = any(a.path == "labels" for a in self.layout.arrays)
        return SceneFrame(
            id=str(self.ids[i]),
            points=self.ragged("points", i),
            labels=self.ragged("labels", i) if has_labels else None,
            K=self.array("cameras/K")[i],
            T_lidar_to_cam=self.array("cameras/T_lidar_to_cam")[i],
            image_size=self.array("cameras/image_size")[i],
            pair_point=self.ragged("pairs/point", i),
            pair_camera=self.ragged("pairs/camera", i),
            pair_uv=self.ragged("pairs/uv", i),
            pair_features={n: self.ragged(f"teachers/{n}/pair_features", i) for n in sorted(self.teachers)},
        )


class Room(NamedTuple):
    """One room of a rooms cache (boxes empty when the cache has none)."""

    id: str
    points: np.ndarray          # (n, 3) float32 metres
    colors: np.ndarray          # (n, 3) uint8
    labels: np.ndarray          # (n,) uint8 class index, 255 = unlabelled
    instances: np.ndarray | None  # (n,) int32, -1 = none; None when the cache has no instance ids
    boxes: np.ndarray           # (k, 6) float32 cx, cy, cz, dx, dy, dz
    box_labels: np.ndarray      # (k,) uint8 index into ``box_classes``


class RoomCache(RaggedCache):
    """A ``rooms`` cache: R indoor rooms of coloured points with per-point classes, instances and boxes.

    ``ragged(path, room)`` reads one room's slice of a flat array, one room at a time: a room is the unit of
    memory, never the area.
    """

    @property
    def num_rooms(self) -> int:
        return self.num_rows

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.attrs.label_names

    @property
    def box_classes(self) -> tuple[str, ...]:
        return tuple(self.attrs.config.get("box_classes", ()))

    @property
    def has_boxes(self) -> bool:
        return "boxes" in self.layout.offsets_paths

    @property
    def has_instances(self) -> bool:
        return any(a.path == "instances" for a in self.layout.arrays)

    def room_sizes(self) -> np.ndarray:
        """(R,) points per room."""
        return np.diff(self.offsets("points"))

    def room(self, i: int) -> Room:
        boxes = self.ragged("boxes/box", i) if self.has_boxes else np.zeros((0, 6), np.float32)
        return Room(
            id=str(self.ids[i]),
            points=self.ragged("points", i),
            colors=self.ragged("colors", i),
            labels=self.ragged("labels", i),
            instances=self.ragged("instances", i) if self.has_instances else None,
            boxes=boxes,
            box_labels=self.ragged("boxes/label", i) if self.has_boxes else np.zeros(0, np.uint8),
        )


def open_group_readonly(loc: Location) -> zarr.Group:
    if not loc.exists():
        raise NotACacheError(f"no cache at {loc.url} (no zarr.json found)")
    return zarr.open_group(loc.zarr_store(read_only=True), mode="r")


def open_cache(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None,
               allow_incomplete: bool = False) -> ObjectCache | SceneCache | RoomCache:
    """Open a cache read-only; the class follows the store's ``kind``."""
    loc = locate(url, storage_options)
    group = open_group_readonly(loc)
    kind = dict(group.attrs).get("kind")
    cls = {"objects": ObjectCache, "rooms": RoomCache}.get(kind, SceneCache)
    return cls(loc, group, allow_incomplete=allow_incomplete)
