"""Whole rooms with their boxes, as 3DETR's ScanNet dataset reads them (``datasets/scannet.py``).

Every room of the split is one sample per epoch. Training (``augment``):

    random cuboid    a box of 50-100% of the room's extent per axis (aspect >= 0.8 on one pair of axes) around a
                     random point, kept if it holds at least ``crop_min_points`` points and the centre of at least
                     one box; boxes whose centre falls outside the crop's points are dropped (DepthContrast's
                     crop as 3DETR modifies it; 100 tries, else the whole room)
    sampling         ``num_points`` of the points, at random (with replacement only when fewer)
    flips            x -> -x and y -> -y, each with probability 1/2
    rotation         about z through the origin by U(-5, 5) degrees; a box becomes the axis-aligned box around
                     its rotated footprint

Evaluation samples ``num_points`` at random too (as 3DETR does), seeded by (seed, room) so every run sees the
same points. Points are in the cache's coordinates (metres); boxes are centre-size, their class an index into
the cache's ``box_classes``. 3DETR crops ScanNet rooms with ``min_points`` 30,000 of 40,000 sampled points; here
the default is the same share (3/4) of ``num_points``.

Sharding, resume and prefetching are :class:`~train.data.rooms.RoomBlockStream`'s, with one slot per room.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cache_schema import open_cache
from cache_schema.errors import CorruptChunkError
from train.data.rooms import RoomBlockStream

MAX_CROP_TRIES = 100


@dataclass(frozen=True)
class SceneStreamConfig:
    split: str = "train"
    num_points: int = 40000
    augment: bool = True
    crop_min_points: int | None = None  # None: 3/4 of num_points (3DETR: 30,000 of 40,000)
    seed: int = 0
    window_rows: int = 64                # rooms shuffled together
    prefetch_bytes: int = 64 * 2**20

    @property
    def min_crop_points(self) -> int:
        return self.num_points * 3 // 4 if self.crop_min_points is None else self.crop_min_points


def random_cuboid(xyz: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, min_points: int,
                  aspect: float = 0.8, min_crop: float = 0.5, max_crop: float = 1.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(point indices, kept box indices) of 3DETR's ``RandomCuboid`` crop; all of both when no try succeeds."""
    extent = xyz.max(axis=0) - xyz.min(axis=0)
    for _ in range(MAX_CROP_TRIES):
        crop = min_crop + rng.random(3) * (max_crop - min_crop)
        ratios = [min(crop[i], crop[j]) / max(crop[i], crop[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
        if max(ratios) < aspect:
            continue
        center = xyz[rng.integers(len(xyz))]
        half = extent * crop / 2
        inside = np.flatnonzero(np.all((xyz >= center - half) & (xyz <= center + half), axis=1))
        if len(inside) < min_points:
            continue
        if not len(boxes):  # a room without boxes keeps its crop (3DETR: "common in SUN RGB-D")
            return inside, np.zeros(0, np.int64)
        lo, hi = xyz[inside].min(axis=0), xyz[inside].max(axis=0)
        keep = np.flatnonzero(np.all((boxes[:, :3] >= lo) & (boxes[:, :3] <= hi), axis=1))
        if len(keep):
            return inside, keep
    return np.arange(len(xyz)), np.arange(len(boxes))


def rotz(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def rotate_aligned_boxes(boxes: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Boxes (K, 6) rotated about z through the origin: centres rotated, sizes those of the axis-aligned box
    around the rotated footprint (3DETR's ``rotate_aligned_boxes``)."""
    centers = boxes[:, :3] @ rotation.T
    half = boxes[:, 3:5] / 2
    corners = np.stack([half * np.array(s) for s in ((-1, -1), (1, -1), (1, 1), (-1, 1))], axis=1)  # (K, 4, 2)
    turned = corners @ rotation[:2, :2].T
    sizes = np.concatenate([2 * turned.max(axis=1), boxes[:, 5:6]], axis=1)
    return np.concatenate([centers, sizes], axis=1)


def augment_scene(points: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """3DETR's ScanNet flips (x, y, each with p = 1/2) and z-rotation of U(-5, 5) degrees."""
    points, boxes = points.copy(), boxes.copy()
    for axis in (0, 1):
        if rng.random() > 0.5:
            points[:, axis] *= -1
            boxes[:, axis] *= -1
    rotation = rotz(rng.random() * np.pi / 18 - np.pi / 36)
    return points @ rotation.T, rotate_aligned_boxes(boxes, rotation)


def sample_scene(xyz: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 num_points: int, augment: bool, crop_min_points: int) -> dict:
    """One sample of a room: ``points`` (N, 3) float32, ``boxes`` (K, 6) float32, ``box_labels`` (K,) int64."""
    boxes = boxes.astype(np.float64)
    if augment:
        inside, keep = random_cuboid(xyz, boxes, rng, crop_min_points)
        xyz, boxes, labels = xyz[inside], boxes[keep], labels[keep]
    choice = rng.choice(len(xyz), num_points, replace=len(xyz) < num_points)
    points = xyz[choice].astype(np.float64)
    if augment:
        points, boxes = augment_scene(points, boxes, rng)
    return {"points": points.astype(np.float32), "boxes": boxes.astype(np.float32).reshape(-1, 6),
            "box_labels": labels.astype(np.int64)}


def open_box_cache(url: str, option: str = ""):
    """The rooms cache with boxes at ``url``, or a one-line error (naming ``option`` when given)."""
    cache = open_cache(url)
    if cache.kind != "rooms" or not cache.has_boxes:
        what = ("an objects cache" if cache.kind == "objects" else f"a {cache.kind} cache") if cache.kind != "rooms" \
            else "a rooms cache without boxes"
        raise ValueError(f"{f'{option} ' if option else ''}{url} is {what}; detection reads a rooms cache with "
                         "boxes (`preprocess rooms scannet` or `preprocess rooms demo-rooms`)")
    return cache


def collate_scenes(scenes: list[dict]) -> dict[str, torch.Tensor]:
    """Stack scenes, boxes padded to the batch's most (``box_present`` 0 on padding; 3DETR pads to 64)."""
    k = max(1, max(len(s["boxes"]) for s in scenes))
    boxes = np.zeros((len(scenes), k, 6), np.float32)
    labels = np.zeros((len(scenes), k), np.int64)
    present = np.zeros((len(scenes), k), np.float32)
    for i, s in enumerate(scenes):
        n = len(s["boxes"])
        boxes[i, :n], labels[i, :n], present[i, :n] = s["boxes"], s["box_labels"], 1
    return {"points": torch.from_numpy(np.stack([s["points"] for s in scenes])), "boxes": torch.from_numpy(boxes),
            "box_labels": torch.from_numpy(labels), "box_present": torch.from_numpy(present),
            "row": torch.tensor([s["row"] for s in scenes])}


class SceneStream(RoomBlockStream):
    """Every room of a split of a rooms cache once per epoch, as 3DETR samples it: batches of ``points``
    (B, N, 3), ``boxes`` (B, K, 6), ``box_labels`` (B, K), ``box_present`` (B, K) and ``row`` (B,)."""

    def __init__(self, url: str, config: SceneStreamConfig = SceneStreamConfig(), rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(url, config, rank, world_size)  # type: ignore[arg-type]

    @staticmethod
    def open_checked(url: str):
        return open_box_cache(url)

    def slots_per_room(self, cache, rooms: np.ndarray) -> np.ndarray:
        return np.ones(len(rooms), np.int64)  # every room once per epoch

    def _open(self) -> dict:
        cache = open_cache(self.url)
        return {"offsets": cache.offsets("points"), "points": cache.array("points"),
                "box_offsets": cache.offsets("boxes"), "boxes": cache.array("boxes/box"),
                "box_labels": cache.array("boxes/label")}

    def read_room(self, arrays: dict, room: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A room's points (float64, as stored), boxes and box classes."""
        lo, hi = int(arrays["offsets"][room]), int(arrays["offsets"][room + 1])
        blo, bhi = int(arrays["box_offsets"][room]), int(arrays["box_offsets"][room + 1])
        try:
            return (arrays["points"][lo:hi].astype(np.float64), arrays["boxes"][blo:bhi],
                    arrays["box_labels"][blo:bhi])
        except Exception as e:  # a damaged chunk: name the store and room
            raise CorruptChunkError(f"{self.url}: cannot read room {room}: {type(e).__name__}: {e}") from None

    def block(self, room: tuple, room_index: int, slot: int, epoch: int) -> dict:
        c = self.config
        seed = [c.seed, epoch, room_index, 0x3DE7] if c.augment else [c.seed, room_index, 0x3DE7]
        sample = sample_scene(*room, np.random.default_rng(seed), c.num_points, c.augment, c.min_crop_points)
        return {**sample, "row": room_index}

    def collate(self, blocks: list[dict]) -> dict:
        return collate_scenes(blocks)
