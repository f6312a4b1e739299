"""Driving-scene datasets: each source lists its LiDAR frames as :class:`FrameItem` rows.

Listing (cheap: JSON tables, directory listings) happens in the build
coordinator; :func:`load_frame` reads one frame's points, labels and camera
images in a worker and raises :class:`~preprocess.meshes.BadInput` for a broken
frame, which then becomes a failed row with that reason.

Conventions (see ``cache_schema/cameras.py``): points are in the LiDAR frame in
metres, ``T_lidar_to_cam`` maps them to the OpenCV camera frame, ``K`` to
pixels with the origin at the top-left corner. Labels are indices into the
catalog's ``label_names``; ``IGNORE_LABEL`` marks unlabelled points.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cache_schema.layout import IGNORE_LABEL  # noqa: F401  (re-exported: the scene sources' import)
from preprocess.errors import BadInput
from preprocess.input_files import checked_path
from preprocess.sources import row_order, rows_by_split


@dataclass(frozen=True)
class FrameItem:
    """One LiDAR frame to build: its id, split and what its source needs to load it (picklable)."""

    id: str
    split: str
    source: dict[str, Any] = field(repr=False)


@dataclass
class CameraImage:
    name: str
    image: np.ndarray          # (H, W, 3) uint8
    K: np.ndarray              # (3, 3) pixel intrinsics
    T_lidar_to_cam: np.ndarray  # (4, 4) LiDAR frame -> OpenCV camera frame


@dataclass
class Frame:
    points: np.ndarray               # (N, 4) float32: x, y, z, intensity
    labels: np.ndarray | None        # (N,) uint8 or None
    cameras: list[CameraImage]
    rings: np.ndarray | None = None  # (N,) laser index of each point, where the format stores it (nuScenes)


@dataclass(frozen=True)
class SceneCatalog:
    """Everything a source lists: frames in a stable order, class and camera names, the largest image."""

    name: str
    source_root: str
    label_names: tuple[str, ...]
    camera_names: tuple[str, ...]
    image_size: tuple[int, int]  # (width, height) of the largest camera image
    has_labels: bool
    items: tuple[FrameItem, ...] = field(repr=False)
    notes: tuple[str, ...] = ()

    def splits(self) -> dict[str, list[int]]:
        return rows_by_split(self.items)

    def shuffled(self, seed: int) -> SceneCatalog:
        """The frames in the cache's row order (a seeded random order, see ``row_order``)."""
        return dataclasses.replace(self, items=row_order(self.items, seed))

    def limited(self, max_frames: int | None) -> SceneCatalog:
        """The first ``max_frames`` frames (for quick runs)."""
        if not max_frames:
            return self
        return SceneCatalog(self.name, self.source_root, self.label_names, self.camera_names, self.image_size,
                            self.has_labels, self.items[:max_frames], self.notes)


SOURCES = ("nuscenes", "semantickitti", "demo-scenes")


def list_scene_source(name: str, root: str | None, **options: Any) -> SceneCatalog:
    """The catalog of scene dataset ``name`` (nuscenes, semantickitti, demo-scenes)."""
    from preprocess.scene_sources import demo_scenes, nuscenes, semantickitti

    sources = {"nuscenes": nuscenes.list_frames, "semantickitti": semantickitti.list_frames,
               "demo-scenes": demo_scenes.list_frames}
    if name not in sources:
        raise ValueError(f"unknown scene dataset {name!r}; choose one of {list(SOURCES)}")
    if name != "demo-scenes" and not root:
        raise ValueError(f"dataset {name!r} needs its root folder (--root)")
    return sources[name](root, **options)


def load_frame(item: FrameItem) -> Frame:
    """Read one frame (in a worker); raises BadInput with the reason when it is broken."""
    from preprocess.scene_sources import demo_scenes, nuscenes, semantickitti

    loaders = {"nuscenes": nuscenes.load_frame, "semantickitti": semantickitti.load_frame,
               "demo-scenes": demo_scenes.load_frame}
    return loaders[item.source["dataset"]](item)


def read_points_bin(path: str, columns: int, root: str | None, keep: int = 4) -> np.ndarray:
    """(N, keep) float32 from a flat float32 ``.bin`` of ``columns`` values per point; BadInput if truncated
    or outside the dataset ``root``."""
    checked_path(path, root)
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size == 0 or raw.size % columns:
        raise BadInput(f"truncated point file: {path} holds {raw.size * 4} bytes, not a multiple of "
                       f"{columns} float32 values per point")
    return raw.reshape(-1, columns)[:, :keep].copy()


def read_image(path: str, root: str | None) -> np.ndarray:
    """(H, W, 3) uint8; BadInput when missing, unreadable or outside the dataset ``root``."""
    from PIL import Image, UnidentifiedImageError

    checked_path(path, root, what="camera image")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # a writable copy
    except (UnidentifiedImageError, OSError) as e:
        raise BadInput(f"unreadable camera image: {path} ({e})") from e
