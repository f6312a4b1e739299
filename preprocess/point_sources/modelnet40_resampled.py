"""ModelNet40, the resampled release with normals (``modelnet40_normal_resampled``), as Point-MAE reads it.

    ROOT/modelnet40_shape_names.txt              40 class names, in label order
    ROOT/modelnet40_{train,test}.txt             shape names, e.g. airplane_0001
    ROOT/<class>/<class>_NNNN.txt                10,000 lines of x,y,z,nx,ny,nz

Stored: 8,192 of the 10,000 points by farthest point sampling from the file's
first point, **in FPS order**, with their normals, normalised to the unit
sphere (Point-MAE's ``modelnet40_*_8192pts_fps.dat``). In that order the first
N stored points are the FPS sample of N of the file (ties aside), so
``--sampling first`` gives exactly the 1,024 FPS points Point-MAE fine-tunes on,
and the 8,192 fill eight 1,024-point chunks.
"""

from __future__ import annotations

import os

import numpy as np

from preprocess.point_sources import PointCatalog, PointDataError, PointItem, check_finite, normalize_unit_sphere

STORED_POINTS = 8192
FILE_POINTS = 10000


def _lines(path: str) -> list[str]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"ModelNet40 file {path} does not exist")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def catalog(root: str, **_: object) -> PointCatalog:
    names = tuple(_lines(os.path.join(root, "modelnet40_shape_names.txt")))
    index = {n: i for i, n in enumerate(names)}
    items = []
    for split in ("train", "test"):
        listing = os.path.join(root, f"modelnet40_{split}.txt")
        for line_no, shape in enumerate(_lines(listing), 1):
            cls = shape.rsplit("_", 1)[0]
            if cls not in index:
                raise PointDataError(f"{listing} line {line_no}: {shape!r} names no class of "
                                     "modelnet40_shape_names.txt")
            items.append(PointItem(f"{cls}/{shape}", index[cls], split, os.path.join(root, cls, f"{shape}.txt")))

    def read(group: list[PointItem]):
        import fpsample  # compiled FPS (the preprocess extra installs it): the greedy choice train.ops makes

        points = np.zeros((len(group), STORED_POINTS, 3), np.float32)
        normals = np.zeros_like(points)
        reasons = [""] * len(group)
        for k, it in enumerate(group):
            cloud, reasons[k] = read_shape(it.ref)
            if reasons[k]:
                continue
            idx = fpsample.fps_sampling(np.ascontiguousarray(cloud[:, :3]), STORED_POINTS, start_idx=0).astype(np.int64)
            points[k] = normalize_unit_sphere(cloud[idx, :3])
            normals[k] = cloud[idx, 3:]
        return points, normals, reasons

    return PointCatalog("modelnet40-resampled", os.path.abspath(root), names, tuple(items), STORED_POINTS, True,
                        f"{STORED_POINTS} of the file's {FILE_POINTS} points by FPS from its first point, in FPS "
                        "order (the first N are FPS(N)); centred, unit sphere", read)


def read_shape(path: str) -> tuple[np.ndarray, str]:
    """(points, "") or (empty, the reason the file cannot be stored, naming it and the line)."""
    if not os.path.exists(path):
        return np.zeros((0, 6), np.float32), f"missing file: {path}"
    values = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.replace(",", " ").split()
            try:
                row = [float(x) for x in parts]
            except ValueError:
                return np.zeros((0, 6), np.float32), f"unparsable line: {path} line {line_no}: {line.strip()[:40]!r}"
            if len(row) != 6:
                return np.zeros((0, 6), np.float32), (f"unparsable line: {path} line {line_no}: {len(row)} values, "
                                                      "expected 6 (x,y,z,nx,ny,nz)")
            values.append(row)
    cloud = np.asarray(values, np.float32).reshape(-1, 6)
    if len(cloud) < STORED_POINTS:
        return cloud, f"too few points: {path} has {len(cloud)}, fewer than the {STORED_POINTS} stored"
    return cloud, check_finite(cloud, path)
