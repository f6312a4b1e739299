"""ShapeNet-55 as Point-BERT ships it, for pre-training on points alone (stage-2 style).

    ROOT/shapenet_pc/<synset>-<model>.npy      (8192, 3) float32
    ROOT/ShapeNet-55/{train,test}.txt          one file name per line

Classes are the synsets, sorted (Point-BERT's label order); the stored points
are the file's 8,192 in its order (uniform surface samples, so any window of
them is a uniform subsample), normalised to the unit sphere as Point-BERT's
loader does. ``.npy`` files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import os

import numpy as np

from preprocess.point_sources import PointCatalog, PointDataError, PointItem, check_finite, normalize_unit_sphere

NUM_POINTS = 8192


def catalog(root: str, **_: object) -> PointCatalog:
    listed = []
    for split in ("train", "test"):
        listing = os.path.join(root, "ShapeNet-55", f"{split}.txt")
        if not os.path.exists(listing):
            raise FileNotFoundError(f"ShapeNet-55 listing {listing} does not exist")
        with open(listing) as f:
            for line_no, line in enumerate(f, 1):
                name = line.strip()
                if not name:
                    continue
                if "-" not in name or not name.endswith(".npy"):
                    raise PointDataError(f"{listing} line {line_no}: {name!r} is not <synset>-<model>.npy")
                listed.append((name, split))
    synsets = tuple(sorted({name.split("-", 1)[0] for name, _ in listed}))
    label = {s: i for i, s in enumerate(synsets)}
    items = tuple(PointItem(name[:-4].replace("-", "/", 1), label[name.split("-", 1)[0]], split,
                            os.path.join(root, "shapenet_pc", name)) for name, split in listed)

    def read(group: list[PointItem]):
        points = np.zeros((len(group), NUM_POINTS, 3), np.float32)
        reasons = [""] * len(group)
        for k, it in enumerate(group):
            cloud, reasons[k] = read_shape(it.ref)
            if not reasons[k]:
                points[k] = normalize_unit_sphere(cloud)
        return points, None, reasons

    return PointCatalog("shapenet55", os.path.abspath(root), synsets, items, NUM_POINTS, False,
                        f"the file's {NUM_POINTS} points in file order; centred, unit sphere", read)


def read_shape(path: str) -> tuple[np.ndarray, str]:
    if not os.path.exists(path):
        return np.zeros((0, 3), np.float32), f"missing file: {path}"
    try:
        cloud = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:  # a pickled or damaged file
        return np.zeros((0, 3), np.float32), f"unreadable file: {path} is not a plain .npy array ({e})"
    if cloud.shape != (NUM_POINTS, 3):
        return np.zeros((0, 3), np.float32), f"wrong shape: {path} has {cloud.shape}, expected ({NUM_POINTS}, 3)"
    cloud = cloud.astype(np.float32)
    return cloud, check_finite(cloud, path)
