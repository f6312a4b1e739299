"""Point-pixel pairs: which LiDAR points each camera sees, and where.

A point pairs with a camera when it projects inside the image with a camera
depth above ``min_depth``. The optional occlusion filter is a depth-buffer
test against the other points: the image is cut into ``cell`` x ``cell`` pixel
cells, each cell keeps its nearest point depth, the buffer is eroded with a
3x3 minimum (LiDAR points are sparse, so a background point can otherwise
slip between two foreground points), and a point is kept only if it is no
farther than that depth times ``1 + tolerance``. The LiDAR and the cameras
sit in different places, so points the LiDAR sees can be hidden from a camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import minimum_filter

from cache_schema.cameras import in_image, project_points


@dataclass(frozen=True)
class PairConfig:
    min_depth: float = 1.0
    occlusion: bool = True
    cell: int = 4            # pixels per depth-buffer cell
    tolerance: float = 0.1   # relative depth margin of the occlusion test


@dataclass
class Pairs:
    point: np.ndarray   # (M,) int32: index of the point in its frame
    camera: np.ndarray  # (M,) uint8
    uv: np.ndarray      # (M, 2) float32 pixels (u column, v row)

    def __len__(self) -> int:
        return len(self.point)


def visible_from(uv: np.ndarray, depth: np.ndarray, width: int, height: int, cell: int,
                 tolerance: float) -> np.ndarray:
    """(n,) bool: points not hidden behind nearer points (all of ``uv`` must be inside the image)."""
    cols, rows = -(-width // cell), -(-height // cell)
    cx = np.minimum((uv[:, 0] // cell).astype(np.int64), cols - 1)
    cy = np.minimum((uv[:, 1] // cell).astype(np.int64), rows - 1)
    zbuf = np.full(rows * cols, np.inf)
    np.minimum.at(zbuf, cy * cols + cx, depth)
    zbuf = minimum_filter(zbuf.reshape(rows, cols), size=3, mode="nearest")
    return depth <= zbuf[cy, cx] * (1 + tolerance)


def pair_points(xyz: np.ndarray, cameras: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]],
                cfg: PairConfig = PairConfig()) -> Pairs:
    """Pairs of every camera ``(K, T_lidar_to_cam, (width, height))``, camera by camera, points in order."""
    point, camera, uvs = [], [], []
    for c, (K, T, (w, h)) in enumerate(cameras):
        uv, depth = project_points(xyz.astype(np.float64), K, T)
        idx = np.flatnonzero(in_image(uv, depth, w, h, cfg.min_depth))
        if cfg.occlusion and len(idx):
            idx = idx[visible_from(uv[idx], depth[idx], w, h, cfg.cell, cfg.tolerance)]
        point.append(idx.astype(np.int32))
        camera.append(np.full(len(idx), c, np.uint8))
        uvs.append(uv[idx].astype(np.float32))
    if not point:
        return Pairs(np.zeros(0, np.int32), np.zeros(0, np.uint8), np.zeros((0, 2), np.float32))
    return Pairs(np.concatenate(point), np.concatenate(camera), np.concatenate(uvs))
