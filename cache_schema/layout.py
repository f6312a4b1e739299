"""The store layout, declared once and imported by writer, reader and validator.

A :class:`Layout` lists every array of a cache with its dtype, the axis its
first dimension runs along and its dimension names. SCHEMA.md documents the
same arrays for people; ``tests/test_schema_docs.py`` keeps the two in step.

First axes (``ArraySpec.axis``):

- ``row``:    one entry per shape (objects), per frame (scenes) or per room
              (rooms); written in whole row blocks by build workers.
- ``points`` / ``pairs`` / ``boxes``: flat values of a ragged per-row family;
              row ``f`` owns ``values[offsets[f]:offsets[f+1]]`` (the offsets
              paths per kind are ``RAGGED_OFFSETS[kind]``).
- ``offsets``: (rows+1,) int64 row edges of a ragged family, written at finalize.
- ``fixed``:  any other array (cameras of all views, class prompts, splits),
              written whole by the build coordinator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cache_schema.metadata import Kind, TeacherRecord

STR = "str"  # variable-length UTF-8 strings (never pickled objects)
POINT_CHUNK = 1024  # points per chunk along the point axis: a loader reading N <= 1024 points decodes one chunk
# kind -> ragged family -> its (rows+1,) offsets array
RAGGED_OFFSETS: dict[str, dict[str, str]] = {
    "objects": {},
    "scenes": {"points": "frames/offsets", "pairs": "pairs/offsets"},
    "rooms": {"points": "rooms/offsets", "boxes": "boxes/offsets"},
}
RAGGED_FAMILIES = tuple(sorted({f for fams in RAGGED_OFFSETS.values() for f in fams}))
ROW_PREFIX = {"objects": "", "scenes": "frames/", "rooms": "rooms/"}  # where ids and status live

# A failed row whose reason starts with this failed for its machine (no OpenGL context, CUDA out of memory),
# not for its input: a rerun builds it again, and the store is not finalized while any is left.
RETRY_PREFIX = "environment: "
PENDING, DONE, FAILED = 0, 1, 2
IGNORE_LABEL = 255  # a per-point class of scenes and rooms caches: unlabelled
UNLABELLED_CLASS = "unlabelled"  # the class name of objects without a class (a mesh folder's loose files)
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}


@dataclass(frozen=True)
class ArraySpec:
    """One array of the store: ``shape = (leading, *inner_shape)``."""

    path: str
    dtype: str
    inner_shape: tuple[int, ...]
    dims: tuple[str, ...]
    axis: str  # "row" | "points" | "pairs" | "boxes" | "offsets" | "fixed"
    length: int | None = None  # leading length of "fixed" arrays (None: set when written)
    inner_chunk: tuple[int, ...] | None = None  # largest chunk along the inner axes (None: whole axes)

    def row_bytes(self) -> int:
        """Uncompressed bytes of one entry along the first axis (strings count 64 B)."""
        itemsize = 64 if self.dtype == STR else _itemsize(self.dtype)
        n = 1
        for s in self.inner_shape:
            n *= s
        return n * itemsize

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "dtype": self.dtype, "inner_shape": list(self.inner_shape),
                "dims": list(self.dims), "axis": self.axis, "length": self.length,
                "inner_chunk": list(self.inner_chunk) if self.inner_chunk else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArraySpec:
        chunk = d.get("inner_chunk")
        return cls(d["path"], d["dtype"], tuple(d["inner_shape"]), tuple(d["dims"]), d["axis"], d.get("length"),
                   tuple(chunk) if chunk else None)


@dataclass(frozen=True)
class Layout:
    """All arrays of one cache and the number of rows (shapes or frames)."""

    kind: Kind
    num_rows: int
    arrays: tuple[ArraySpec, ...]
    status_path: str = field(init=False)
    ids_path: str = field(init=False)

    def __post_init__(self) -> None:
        prefix = ROW_PREFIX[self.kind]
        object.__setattr__(self, "status_path", f"{prefix}status")
        object.__setattr__(self, "ids_path", f"{prefix}ids")
        paths = [a.path for a in self.arrays]
        if len(paths) != len(set(paths)):
            raise ValueError(f"duplicate array paths in layout: {paths}")

    def __getitem__(self, path: str) -> ArraySpec:
        for a in self.arrays:
            if a.path == path:
                return a
        raise KeyError(f"no array {path!r} in the {self.kind} layout")

    def by_axis(self, axis: str) -> list[ArraySpec]:
        return [a for a in self.arrays if a.axis == axis]

    @property
    def offsets_paths(self) -> dict[str, str]:
        """Ragged family -> path of its offsets array, for the families this layout holds (none for objects)."""
        return {fam: path for fam, path in RAGGED_OFFSETS[self.kind].items() if self.by_axis(fam)}

    def ragged_families(self) -> dict[str, list[ArraySpec]]:
        return {fam: self.by_axis(fam) for fam in self.offsets_paths}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_rows": self.num_rows, "arrays": [a.to_dict() for a in self.arrays]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        return cls(d["kind"], d["num_rows"], tuple(ArraySpec.from_dict(a) for a in d["arrays"]))


def _itemsize(dtype: str) -> int:
    import numpy as np

    return np.dtype(dtype).itemsize


def objects_layout(
    num_rows: int,
    num_points: int,
    num_views: int,
    num_captions: int,
    teachers: dict[str, TeacherRecord],
    num_classes: int = 0,
    image_hw: tuple[int, int] | None = None,
    store_rgb: bool = False,
    store_depth: bool = False,
    point_dtype: str = "float16",
    with_normals: bool = False,
    with_part_labels: bool = False,
) -> Layout:
    """Layout of an ``objects`` cache: N shapes, V views, K captions per shape.

    A points cache (``preprocess points``: point datasets, no renders or
    captions) has ``num_views = num_captions = 0`` and then no ``captions`` nor
    ``views/camera``.
    """
    if point_dtype not in ("float16", "float32"):
        raise ValueError(f"point_dtype must be float16 or float32, got {point_dtype!r}")
    if (store_rgb or store_depth) and image_hw is None:
        raise ValueError("image_hw is required when rgb or depth renders are stored")
    point_chunk = (min(num_points, POINT_CHUNK), 3)
    a = [
        ArraySpec("ids", STR, (), ("row",), "row"),
        ArraySpec("label", "int16", (), ("row",), "row"),
        ArraySpec("status", "uint8", (), ("row",), "row"),
        ArraySpec("status_reason", STR, (), ("row",), "row"),
        ArraySpec("points", point_dtype, (num_points, 3), ("row", "point", "xyz"), "row", inner_chunk=point_chunk),
    ]
    if num_captions:
        a.append(ArraySpec("captions", STR, (num_captions,), ("row", "caption"), "row"))
    if num_views:
        a.append(ArraySpec("views/camera", "float32", (4, 4), ("view", "i", "j"), "fixed", num_views))
    if with_normals:
        a.append(ArraySpec("normals", point_dtype, (num_points, 3), ("row", "point", "xyz"), "row",
                           inner_chunk=point_chunk))
    if with_part_labels:  # aligned with points, chunked like them: a window of points reads its labels
        a.append(ArraySpec("part_label", "uint8", (num_points,), ("row", "point"), "row",
                           inner_chunk=(min(num_points, POINT_CHUNK),)))
    if store_rgb:
        h, w = image_hw  # type: ignore[misc]
        a.append(ArraySpec("views/rgb", "uint8", (num_views, h, w, 3), ("row", "view", "y", "x", "rgb"), "row"))
    if store_depth:
        h, w = image_hw  # type: ignore[misc]
        a.append(ArraySpec("views/depth", "float16", (num_views, h, w), ("row", "view", "y", "x"), "row"))
    for name, t in sorted(teachers.items()):
        base = f"teachers/{name}"
        per_role = {
            "image": ArraySpec(f"{base}/image", t.dtype, (num_views, t.dim), ("row", "view", "dim"), "row"),
            "patch_mean": ArraySpec(f"{base}/patch_mean", t.dtype, (num_views, t.dim), ("row", "view", "dim"), "row"),
            "depth": ArraySpec(f"{base}/depth", t.dtype, (num_views, t.dim), ("row", "view", "dim"), "row"),
            "text": ArraySpec(f"{base}/text", t.dtype, (num_captions, t.dim), ("row", "caption", "dim"), "row"),
            "class_text": ArraySpec(f"{base}/class_text", t.dtype, (t.dim,), ("class", "dim"), "fixed", num_classes),
            "global": ArraySpec(f"{base}/global", t.dtype, (int(t.extra.get("global_dim", t.dim)),),
                                ("row", "global_dim"), "row"),
            "tokens": ArraySpec(f"{base}/tokens", t.dtype, (int(t.extra.get("num_tokens", 0)), t.dim),
                                ("row", "token", "dim"), "row"),
        }
        for role in t.roles:
            if role not in per_role:
                raise ValueError(f"teacher {name!r}: role {role!r} does not exist in an objects cache")
            a.append(per_role[role])
    return Layout("objects", num_rows, tuple(a))


def scenes_layout(
    num_frames: int,
    num_cameras: int,
    teachers: dict[str, TeacherRecord],
    with_labels: bool = True,
    image_hw: tuple[int, int] | None = None,
    store_images: bool = False,
) -> Layout:
    """Layout of a ``scenes`` cache: F frames of LiDAR points, C cameras, point-pixel pairs."""
    if store_images and image_hw is None:
        raise ValueError("image_hw is required when images are stored")
    c = num_cameras
    a = [
        ArraySpec("frames/ids", STR, (), ("frame",), "row"),
        ArraySpec("frames/status", "uint8", (), ("frame",), "row"),
        ArraySpec("frames/status_reason", STR, (), ("frame",), "row"),
        ArraySpec("cameras/K", "float32", (c, 3, 3), ("frame", "camera", "K_row", "K_col"), "row"),
        ArraySpec("cameras/T_lidar_to_cam", "float32", (c, 4, 4), ("frame", "camera", "T_row", "T_col"), "row"),
        ArraySpec("cameras/image_size", "int32", (c, 2), ("frame", "camera", "wh"), "row"),
        ArraySpec("frames/offsets", "int64", (), ("frame_edge",), "offsets", num_frames + 1),
        ArraySpec("pairs/offsets", "int64", (), ("frame_edge",), "offsets", num_frames + 1),
        ArraySpec("points", "float32", (4,), ("point", "xyzi"), "points"),
        ArraySpec("pairs/point", "int32", (), ("pair",), "pairs"),
        ArraySpec("pairs/camera", "uint8", (), ("pair",), "pairs"),
        ArraySpec("pairs/uv", "float32", (2,), ("pair", "uv"), "pairs"),
    ]
    if with_labels:
        a.append(ArraySpec("labels", "uint8", (), ("point",), "points"))
    if store_images:
        h, w = image_hw  # type: ignore[misc]
        a.append(ArraySpec("cameras/rgb", "uint8", (c, h, w, 3), ("frame", "camera", "y", "x", "rgb"), "row"))
    for name, t in sorted(teachers.items()):
        if set(t.roles) != {"pair_features"}:
            raise ValueError(f"teacher {name!r}: a scenes cache holds only pair_features, got {t.roles}")
        base = f"teachers/{name}"
        a.append(ArraySpec(f"{base}/pair_features", t.dtype, (t.dim,), ("pair", "dim"), "pairs"))
        if t.extra.get("patch_grid"):
            gh, gw = t.extra["patch_grid"]
            a.append(ArraySpec(f"{base}/patch_grid", t.dtype, (c, gh, gw, t.dim),
                               ("frame", "camera", "y", "x", "dim"), "row"))
        pca_in = t.extra.get("pca_input_dim")
        if pca_in:
            a.append(ArraySpec(f"{base}/pca_components", "float32", (int(pca_in),), ("dim", "input_dim"), "fixed", t.dim))
            a.append(ArraySpec(f"{base}/pca_mean", "float32", (), ("input_dim",), "fixed", int(pca_in)))
    return Layout("scenes", num_frames, tuple(a))


def rooms_layout(num_rooms: int, with_instances: bool = True, with_boxes: bool = True) -> Layout:
    """Layout of a ``rooms`` cache: R indoor rooms of coloured, labelled points, and optionally instance ids
    and axis-aligned boxes (for detection).

    Points are float32 metres in the room's own frame (as the dataset gives them); labels index the cache's
    ``label_names`` (``IGNORE_LABEL`` 255 marks unlabelled points); boxes are ``cx, cy, cz, dx, dy, dz`` with a
    class index into ``config.box_classes``.
    """
    a = [
        ArraySpec("rooms/ids", STR, (), ("room",), "row"),
        ArraySpec("rooms/status", "uint8", (), ("room",), "row"),
        ArraySpec("rooms/status_reason", STR, (), ("room",), "row"),
        ArraySpec("rooms/offsets", "int64", (), ("room_edge",), "offsets", num_rooms + 1),
        ArraySpec("points", "float32", (3,), ("point", "xyz"), "points"),
        ArraySpec("colors", "uint8", (3,), ("point", "rgb"), "points"),
        ArraySpec("labels", "uint8", (), ("point",), "points"),
    ]
    if with_instances:
        a.append(ArraySpec("instances", "int32", (), ("point",), "points"))
    if with_boxes:
        a += [
            ArraySpec("boxes/offsets", "int64", (), ("room_edge",), "offsets", num_rooms + 1),
            ArraySpec("boxes/box", "float32", (6,), ("box", "cxyz_dxyz"), "boxes"),
            ArraySpec("boxes/label", "uint8", (), ("box",), "boxes"),
        ]
    return Layout("rooms", num_rooms, tuple(a))
