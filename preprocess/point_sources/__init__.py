"""Point datasets (already sampled clouds, no meshes): each reader lists its shapes and reads blocks of them.

``preprocess points DATASET --root ROOT`` turns one into an ``objects`` cache
with points, labels, class names and the official splits, and nothing else (no
renders, captions or teachers: see :mod:`preprocess.build_points`). Readers
never unpickle: h5 through h5py, text through numpy, ``.npy`` with
``allow_pickle=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class PointDataError(ValueError):
    """A dataset file that cannot be read as its format says; the message names the file (and line)."""


@dataclass(frozen=True)
class PointItem:
    """One shape: its id, class index, split and where its points are (``ref``: the reader's own key)."""

    id: str
    label: int
    split: str
    ref: Any


@dataclass(frozen=True)
class PointCatalog:
    """What a reader lists, and how it reads a group of its items.

    ``read(items)`` returns points (n, P, 3) float32, normals (n, P, 3) or None,
    and one reason per item ("" when fine), and for datasets with ``parts``
    the (n, P) part ids aligned with the points: a shape whose own file is bad
    becomes a failed row with that reason; a bad shared file is an error
    before anything is written.
    """

    name: str
    source_root: str
    label_names: tuple[str, ...]
    items: tuple[PointItem, ...] = field(repr=False)
    num_points: int
    has_normals: bool
    points_note: str  # how the stored points relate to the files (stored as config.points)
    read: Callable[[list[PointItem]], tuple] = field(repr=False)
    options: dict[str, Any] = field(default_factory=dict)  # reader options (e.g. the ScanObjectNN variant)
    parts: dict | None = None  # per-point part labels: {"names": [...], "class_parts": {class: [ids]}}
    extra_splits: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> union of listed splits


POINT_DATASETS = ("scanobjectnn", "modelnet40-resampled", "shapenet55", "shapenetpart", "demo-scan")


def list_point_source(name: str, root: str | None, **options: Any) -> PointCatalog:
    """The catalog of point dataset ``name``."""
    from preprocess.point_sources import demo_scan, modelnet40_resampled, scanobjectnn, shapenet55, shapenetpart

    readers = {"scanobjectnn": scanobjectnn.catalog, "modelnet40-resampled": modelnet40_resampled.catalog,
               "shapenet55": shapenet55.catalog, "shapenetpart": shapenetpart.catalog,
               "demo-scan": demo_scan.catalog}
    if name not in readers:
        raise ValueError(f"unknown point dataset {name!r}; choose one of {', '.join(POINT_DATASETS)}")
    if not root and name != "demo-scan":
        raise ValueError(f"point dataset {name!r} needs its root folder (--root)")
    return readers[name](root, **options)


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centred on the centroid and scaled so the farthest point is at distance 1 (Point-MAE's ``pc_norm``)."""
    centred = points - points.mean(axis=0, keepdims=True)
    radius = float(np.sqrt((centred ** 2).sum(axis=1)).max())
    return centred / radius if radius > 0 else centred


def check_finite(points: np.ndarray, where: str) -> str:
    """"" or the reason a cloud cannot be stored."""
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points)).any(axis=-1).sum())
        return f"non-finite points: {where} has {bad} point(s) with NaN or infinite coordinates"
    return ""
