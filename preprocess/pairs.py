"""Point-pixel pairs: which LiDAR points each camera sees, and where.

A point pairs with a camera when it projects inside the image with a camera
depth above ``min_depth``. The LiDAR and the cameras sit in different places
(on nuScenes up to 0.9 m apart), so points the LiDAR sees can be hidden from a
camera; the occlusion filter removes them with two depth tests, and a point is
kept only if it is no farther than either depth times ``1 + tolerance``:

- **The LiDAR's own surface.** A spinning LiDAR samples surfaces on a grid of
  rings x azimuths. Neighbouring returns (the next azimuth on the ring, the
  nearest azimuth on the next ring) whose ranges agree within
  ``max_range_jump`` span a quad of one surface; every quad is drawn into a
  per-pixel depth buffer over its bounding box, grown by half its size, at its
  farthest corner's depth (so a surface never hides the points it is made of). On a real sensor the
  points sit 1.3 degrees apart vertically, tens of pixels in a 1600-pixel
  image: a background point between two foreground points is hidden by the
  surface they span, which no point-sized test can see. Depth jumps (an object
  edge) break the surface, so nothing is hidden by the gap beside an object.
- **The points themselves** (for points without a surface around them): the
  image is cut into ``cell`` x ``cell`` pixel cells, each keeps its nearest
  point depth, eroded with a 3x3 minimum.

``scripts/bench_occlusion.py`` measures both against rendered depth.
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
    surface: bool = True     # the LiDAR's surface (quads of neighbouring returns) occludes as well as its points
    max_range_jump: float = 0.2  # neighbouring returns further apart in range (relative) are not one surface
    surface_margin: float = 0.5  # each quad also covers this share of its size beyond its corners


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


RING_GAP = np.deg2rad(0.1)   # elevations further apart than this are different rings
MAX_QUAD_FRACTION = 0.25     # quads wider or taller than this share of the image are not drawn (sensor-near)


def lidar_quads(xyz: np.ndarray, max_range_jump: float, rings: np.ndarray | None = None) -> np.ndarray:
    """(Q, 4) point indices of the surface quads of a spinning LiDAR sweep (points in the sensor frame).

    ``rings``: each point's laser index where the format stores it (nuScenes); lasers are put in order of
    their median elevation, since laser ids need not be (Velodyne interleaves them). Without it rings are
    found from the elevation angles (gaps above 0.1 degrees), which holds for lasers on one axis but not at
    short range for lasers mounted centimetres apart. A quad joins a point, the next azimuth on its ring,
    and the returns of the next ring nearest in azimuth to both, when their ranges agree within
    ``max_range_jump`` and the azimuth steps are regular.
    """
    n = len(xyz)
    if n < 4:
        return np.zeros((0, 4), np.int64)
    r = np.linalg.norm(xyz, axis=1)
    el = np.arcsin(np.clip(xyz[:, 2] / np.maximum(r, 1e-9), -1, 1))
    az = np.arctan2(xyz[:, 1], xyz[:, 0])
    if rings is not None:
        ids, ring = np.unique(np.asarray(rings), return_inverse=True)
        median_el = np.array([np.median(el[ring == i]) for i in range(len(ids))])
        ring = np.argsort(np.argsort(median_el, kind="stable"))[ring]  # rank of each laser by elevation
    else:
        by_el = np.argsort(el, kind="stable")
        ring = np.empty(n, np.int64)
        ring[by_el] = np.concatenate([[0], np.cumsum(np.diff(el[by_el]) > RING_GAP)])
    key = ring * 8.0 + (az + np.pi)  # sorted by ring, then azimuth (2 pi < 8)
    order = np.argsort(key, kind="stable")
    skey, sring, saz = key[order], ring[order], az[order]
    same_ring = sring[1:] == sring[:-1]
    steps = np.diff(saz)[same_ring]
    if not len(steps):
        return np.zeros((0, 4), np.int64)
    max_step = 2.5 * float(np.median(steps))
    nxt = np.full(n, -1)  # position in the sorted order of the next point on the ring
    ok = same_ring & (np.diff(saz) <= max_step)
    nxt[:-1][ok] = np.arange(1, n)[ok]

    def up(pos: np.ndarray) -> np.ndarray:
        """Sorted position of the nearest-azimuth return on the next ring (-1: none close enough)."""
        target = (sring[pos] + 1) * 8.0 + (saz[pos] + np.pi)
        j = np.clip(np.searchsorted(skey, target), 1, n - 1)
        cand = np.stack([j - 1, j], axis=1)
        best = cand[np.arange(len(pos)), np.argmin(np.abs(skey[cand] - target[:, None]), axis=1)]
        good = (sring[best] == sring[pos] + 1) & (np.abs(saz[best] - saz[pos]) <= max_step)
        return np.where(good, best, -1)

    a = np.flatnonzero(nxt >= 0)
    b = nxt[a]
    c, d = up(a), up(b)
    keep = (c >= 0) & (d >= 0)
    quads = order[np.stack([a, b, d, c], axis=1)[keep]]
    rq = r[quads]
    return quads[rq.max(axis=1) <= rq.min(axis=1) * (1 + max_range_jump)]


def surface_depth(uv: np.ndarray, depth: np.ndarray, quads: np.ndarray, width: int, height: int,
                  min_depth: float, margin: float = 0.5) -> np.ndarray:
    """(height, width) nearest depth of the LiDAR surface quads at every pixel (inf: no surface).

    Each quad covers its bounding box grown by ``margin`` x its size on every side: a surface goes on for
    up to one sample spacing past its outermost returns, and without the margin the band between an
    object's last return and its true silhouette hides nothing (recall 77% instead of 88% on 3 frames of
    ``scripts/bench_occlusion.py``; a margin of 1 doubles into the next ring and removes visible ground).
    """
    zbuf = np.full((height, width), np.inf)
    if not len(quads):
        return zbuf
    q_uv, q_depth = uv[quads], depth[quads]
    front = (q_depth > min_depth).all(axis=1)
    lo, hi = q_uv.min(axis=1), q_uv.max(axis=1)
    pad = (hi - lo) * margin
    lo, hi = np.floor(lo - pad), np.ceil(hi + pad)
    small = ((hi - lo) <= [MAX_QUAD_FRACTION * width, MAX_QUAD_FRACTION * height]).all(axis=1)
    inside = (hi[:, 0] >= 0) & (lo[:, 0] < width) & (hi[:, 1] >= 0) & (lo[:, 1] < height)
    sel = np.flatnonzero(front & small & inside)
    far = q_depth[sel].max(axis=1)
    sel, far = sel[np.argsort(-far)], np.sort(far)[::-1]  # far to near: the last write is the nearest
    x0 = np.clip(lo[sel, 0], 0, width - 1).astype(np.int64)
    x1 = np.clip(hi[sel, 0], 0, width - 1).astype(np.int64) + 1
    y0 = np.clip(lo[sel, 1], 0, height - 1).astype(np.int64)
    y1 = np.clip(hi[sel, 1], 0, height - 1).astype(np.int64) + 1
    for i in range(len(sel)):  # a few thousand small rectangles per camera
        zbuf[y0[i]:y1[i], x0[i]:x1[i]] = far[i]
    return zbuf


def pair_points(xyz: np.ndarray, cameras: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]],
                cfg: PairConfig = PairConfig(), rings: np.ndarray | None = None) -> Pairs:
    """Pairs of every camera ``(K, T_lidar_to_cam, (width, height))``, camera by camera, points in order."""
    point, camera, uvs = [], [], []
    quads = lidar_quads(xyz[:, :3].astype(np.float64), cfg.max_range_jump, rings) if cfg.occlusion and cfg.surface \
        else np.zeros((0, 4), np.int64)
    for c, (K, T, (w, h)) in enumerate(cameras):
        uv, depth = project_points(xyz.astype(np.float64), K, T)
        idx = np.flatnonzero(in_image(uv, depth, w, h, cfg.min_depth))
        if cfg.occlusion and len(idx):
            keep = visible_from(uv[idx], depth[idx], w, h, cfg.cell, cfg.tolerance)
            if len(quads):
                zbuf = surface_depth(uv, depth, quads, w, h, cfg.min_depth, cfg.surface_margin)
                u, v = np.floor(uv[idx]).astype(np.int64).T
                keep &= depth[idx] <= zbuf[v, u] * (1 + cfg.tolerance)
            idx = idx[keep]
        point.append(idx.astype(np.int32))
        camera.append(np.full(len(idx), c, np.uint8))
        uvs.append(uv[idx].astype(np.float32))
    if not point:
        return Pairs(np.zeros(0, np.int32), np.zeros(0, np.uint8), np.zeros((0, 2), np.float32))
    return Pairs(np.concatenate(point), np.concatenate(camera), np.concatenate(uvs))
