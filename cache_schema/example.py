"""Small synthetic caches of every kind, written through the public writer API.

They show how a builder uses the contract and give tests, `cache info` and
`cache validate` something real to read without rendering or teachers. The
values are random (seeded), not meaningful features.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cache_schema.layout import DONE, FAILED, objects_layout, rooms_layout, scenes_layout
from cache_schema.metadata import CacheAttrs, TeacherRecord
from cache_schema.writer import BlockWriter, CacheWriter

EXAMPLE_CLASSES = ("chair", "table", "lamp")


def example_teachers(kind: str, dim: int = 16) -> dict[str, TeacherRecord]:
    if kind == "objects":
        return {
            "clip-tiny": TeacherRecord("clip-tiny", "open_clip", "ViT-tiny", "none", "sha256:random-seed-0",
                                       dim, ("image", "text", "class_text"), pretrained=False),
            "dinov2-tiny": TeacherRecord("dinov2-tiny", "transformers", "dinov2-tiny", "none",
                                         "sha256:random-seed-0", dim, ("image",), pretrained=False),
        }
    return {"dinov2-tiny": TeacherRecord("dinov2-tiny", "transformers", "dinov2-tiny", "none",
                                         "sha256:random-seed-0", dim, ("pair_features",), pretrained=False)}


def example_objects(num_rows: int = 24, num_points: int = 64, num_views: int = 4, num_captions: int = 2,
                    dim: int = 16, failed_rows: tuple[int, ...] = (5,), classes: tuple[str, ...] = EXAMPLE_CLASSES,
                    class_sorted: bool = False) -> tuple[CacheAttrs, Any, dict]:
    """Attributes, layout and all data (row arrays, fixed arrays, splits) of a small objects cache.

    ``class_sorted``: rows listed class after class (as a dataset's folders list them), equal shares each.
    """
    rng = np.random.default_rng(0)
    teachers = example_teachers("objects", dim)
    layout = objects_layout(num_rows, num_points, num_views, num_captions, teachers,
                            num_classes=len(classes), image_hw=(8, 8), store_depth=True)
    attrs = CacheAttrs(kind="objects", dataset={"name": "example", "source_root": "synthetic"},
                       config={"num_points": num_points, "num_views": num_views, "seed": 0},
                       teachers=teachers, label_names=tuple(classes))
    labels = (np.arange(num_rows) * len(classes) // num_rows if class_sorted
              else rng.integers(0, len(classes), num_rows))
    pts = rng.normal(size=(num_rows, num_points, 3))
    rows = {
        "ids": np.array([f"shape_{i:04d}" for i in range(num_rows)]),
        "label": labels,
        "points": pts / np.linalg.norm(pts, axis=-1).max(axis=1)[:, None, None],
        "captions": np.array([[f"a 3D model of a {classes[c]}"] + [f"a {classes[c]} ({i}, {k})"
                                                                         for k in range(1, num_captions)]
                              for i, c in enumerate(labels)]),
        "views/depth": rng.uniform(0.5, 3, (num_rows, num_views, 8, 8)),
        "teachers/clip-tiny/image": rng.normal(size=(num_rows, num_views, dim)),
        "teachers/clip-tiny/text": rng.normal(size=(num_rows, num_captions, dim)),
        "teachers/dinov2-tiny/image": rng.normal(size=(num_rows, num_views, dim)),
    }
    status = np.full(num_rows, DONE, np.uint8)
    reasons = np.array([""] * num_rows, dtype=object)
    for r in failed_rows:
        status[r], reasons[r] = FAILED, "mesh has no faces"
    fixed = {"views/camera": np.tile(np.eye(4, dtype=np.float32), (num_views, 1, 1)),
             "teachers/clip-tiny/class_text": rng.normal(size=(len(classes), dim))}
    splits = {"train": np.arange(0, num_rows, 2), "test": np.arange(1, num_rows, 2)}
    return attrs, layout, {"rows": rows, "status": status, "reasons": reasons.astype(str),
                           "fixed": fixed, "splits": splits}


def example_scenes(num_frames: int = 10, num_cameras: int = 2, dim: int = 8) -> tuple[CacheAttrs, Any, dict]:
    """Attributes, layout and data (per-frame lists for ragged arrays) of a small scenes cache."""
    rng = np.random.default_rng(1)
    teachers = example_teachers("scenes", dim)
    layout = scenes_layout(num_frames, num_cameras, teachers)
    attrs = CacheAttrs(kind="scenes", dataset={"name": "example-scenes", "source_root": "synthetic"},
                       config={"min_depth": 1.0}, teachers=teachers, label_names=("ground", "car", "pole"))
    n_pts = rng.integers(20, 80, num_frames)
    n_pairs = rng.integers(5, 30, num_frames)
    ragged = {
        "points": [rng.normal(size=(n, 4)) for n in n_pts],
        "labels": [rng.integers(0, 3, n) for n in n_pts],
        "pairs/point": [rng.integers(0, n, m) for n, m in zip(n_pts, n_pairs)],
        "pairs/camera": [rng.integers(0, num_cameras, m) for m in n_pairs],
        "pairs/uv": [rng.uniform(0, 64, (m, 2)) for m in n_pairs],
        "teachers/dinov2-tiny/pair_features": [rng.normal(size=(m, dim)) for m in n_pairs],
    }
    rows = {
        "frames/ids": np.array([f"frame_{i:04d}" for i in range(num_frames)]),
        "cameras/K": np.tile(np.array([[50, 0, 32], [0, 50, 32], [0, 0, 1]], np.float32), (num_frames, num_cameras, 1, 1)),
        "cameras/T_lidar_to_cam": np.tile(np.eye(4, dtype=np.float32), (num_frames, num_cameras, 1, 1)),
        "cameras/image_size": np.full((num_frames, num_cameras, 2), 64, np.int32),
    }
    status = np.full(num_frames, DONE, np.uint8)
    splits = {"train": np.arange(num_frames - 2), "val": np.arange(num_frames - 2, num_frames)}
    return attrs, layout, {"rows": rows, "ragged": ragged, "status": status,
                           "reasons": np.array([""] * num_frames), "fixed": {}, "splits": splits}


EXAMPLE_ROOM_CLASSES = ("floor", "wall", "chair")


def example_rooms(num_rooms: int = 6) -> tuple[CacheAttrs, Any, dict]:
    """Attributes, layout and data of a small rooms cache (random points, one box per instance)."""
    rng = np.random.default_rng(2)
    layout = rooms_layout(num_rooms)
    attrs = CacheAttrs(kind="rooms", dataset={"name": "example-rooms", "source_root": "synthetic"},
                       config={"box_classes": list(EXAMPLE_ROOM_CLASSES)}, label_names=EXAMPLE_ROOM_CLASSES)
    n_pts = rng.integers(50, 200, num_rooms)
    points = [rng.uniform(0, 4, (n, 3)) for n in n_pts]
    labels = [rng.integers(0, len(EXAMPLE_ROOM_CLASSES), n) for n in n_pts]
    boxes, box_labels = [], []
    for p, lab in zip(points, labels):
        present = np.unique(lab)
        lo = np.stack([p[lab == c].min(0) for c in present])
        hi = np.stack([p[lab == c].max(0) for c in present])
        boxes.append(np.concatenate([(lo + hi) / 2, hi - lo], 1))
        box_labels.append(present)
    ragged = {"points": points, "colors": [rng.integers(0, 256, (n, 3)) for n in n_pts], "labels": labels,
              "instances": labels, "boxes/box": boxes, "boxes/label": box_labels}
    rows = {"rooms/ids": np.array([f"Area_{1 + i % 2}/room_{i}" for i in range(num_rooms)])}
    splits = {"train": np.flatnonzero(np.arange(num_rooms) % 2 == 0), "test": np.flatnonzero(np.arange(num_rooms) % 2)}
    return attrs, layout, {"rows": rows, "ragged": ragged, "status": np.full(num_rooms, DONE, np.uint8),
                           "reasons": np.array([""] * num_rooms), "fixed": {}, "splits": splits}


EXAMPLES = {"objects": example_objects, "scenes": example_scenes, "rooms": example_rooms}


def write_blocks(writer: BlockWriter, data: dict, blocks: list[int] | None = None) -> None:
    """Write the given blocks (default: all pending ones) of example data."""
    for b in writer.pending_blocks() if blocks is None else blocks:
        s, e = writer.block_range(b)
        ragged = {k: v[s:e] for k, v in data.get("ragged", {}).items()} or None
        writer.write_block(b, {k: v[s:e] for k, v in data["rows"].items()},
                           data["status"][s:e], data["reasons"][s:e], ragged=ragged)


def finish(writer: CacheWriter, data: dict) -> str:
    """Fixed arrays, splits, finalize."""
    for path, value in data["fixed"].items():
        writer.write_fixed(path, value)
    for name, rows in data["splits"].items():
        writer.write_split(name, rows)
    return writer.finalize()


def write_example(url: str | os.PathLike[str], kind: str = "objects", overwrite: bool = False,
                  **chunking: Any) -> str:
    """Write a complete example cache of ``kind``; returns its fingerprint."""
    attrs, layout, data = EXAMPLES[kind]()
    with CacheWriter.create(url, attrs, layout, overwrite=overwrite, **chunking) as w:
        write_blocks(w, data)
        return finish(w, data)
