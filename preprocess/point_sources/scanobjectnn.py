"""ScanObjectNN, the official h5 release: OBJ_BG, OBJ_ONLY and PB_T50_RS.

    ROOT/main_split/{training,test}_objectdataset.h5                            obj_bg
    ROOT/main_split_nobg/{training,test}_objectdataset.h5                       obj_only
    ROOT/main_split/{training,test}_objectdataset_augmentedrot_scale75.h5       pb_t50_rs

Each file has ``data`` (N, 2048, 3) float32, ``label`` (N,) and ``mask``
(N, 2048). Points are kept as in the file, all 2,048 in their order, as
Point-MAE and its successors read them (the files are already normalised).
"""

from __future__ import annotations

import os

import numpy as np

from preprocess.point_sources import PointCatalog, PointDataError, PointItem, check_finite

CLASS_NAMES = ("bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed",
               "pillow", "sink", "sofa", "toilet")  # the label order of the release
FILES = {
    "obj_bg": ("main_split", "{split}_objectdataset.h5"),
    "obj_only": ("main_split_nobg", "{split}_objectdataset.h5"),
    "pb_t50_rs": ("main_split", "{split}_objectdataset_augmentedrot_scale75.h5"),
}
SPLITS = {"train": "training", "test": "test"}


def _open(path: str):
    import h5py

    if not os.path.exists(path):
        raise FileNotFoundError(f"ScanObjectNN file {path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as e:  # truncated or not an h5 file
        raise PointDataError(f"{path}: not a readable h5 file ({e})") from None


def catalog(root: str, variant: str = "obj_bg", **_: object) -> PointCatalog:
    if variant not in FILES:
        raise ValueError(f"--variant must be one of {', '.join(FILES)}, got {variant!r}")
    folder, pattern = FILES[variant]
    items, num_points, paths = [], None, {}
    for split, word in SPLITS.items():
        path = os.path.join(root, folder, pattern.format(split=word))
        paths[split] = path
        with _open(path) as f:
            for key in ("data", "label"):
                if key not in f:
                    raise PointDataError(f"{path}: no dataset {key!r} (has {', '.join(f.keys())})")
            shape = f["data"].shape
            if len(shape) != 3 or shape[2] != 3:
                raise PointDataError(f"{path}: 'data' has shape {shape}, expected (N, points, 3)")
            try:
                labels = np.asarray(f["label"][:]).reshape(-1)
            except OSError as e:
                raise PointDataError(f"{path}: cannot read 'label' ({e})") from None
        if len(labels) != shape[0]:
            raise PointDataError(f"{path}: {len(labels)} labels for {shape[0]} clouds")
        bad = np.flatnonzero((labels < 0) | (labels >= len(CLASS_NAMES)))
        if len(bad):
            raise PointDataError(f"{path}: label {int(labels[bad[0]])} of cloud {int(bad[0])} is outside 0-14")
        if num_points not in (None, shape[1]):
            raise PointDataError(f"{path}: {shape[1]} points per cloud, the train file has {num_points}")
        num_points = shape[1]
        items += [PointItem(f"{variant}/{split}/{i:05d}", int(label), split, (split, i))
                  for i, label in enumerate(labels)]

    def read(group: list[PointItem]):
        points = np.zeros((len(group), num_points, 3), np.float32)
        reasons = [""] * len(group)
        for split, path in paths.items():
            mine = [(k, it.ref[1]) for k, it in enumerate(group) if it.ref[0] == split]
            if not mine:
                continue
            order = sorted(mine, key=lambda x: x[1])
            with _open(path) as f:
                try:
                    block = f["data"][[i for _, i in order]]  # h5py: increasing indices
                except OSError as e:  # a truncated file: its clouds cannot be read
                    raise PointDataError(f"{path}: cannot read clouds {order[0][1]}-{order[-1][1]} ({e})") from None
            for (k, i), cloud in zip(order, block):
                points[k] = cloud
                reasons[k] = check_finite(cloud, f"{path} cloud {i}")
        return points, None, reasons

    return PointCatalog("scanobjectnn", os.path.abspath(root), CLASS_NAMES, tuple(items), num_points, False,
                        f"as in the {variant} h5 files: all {num_points} points in file order, not renormalised",
                        read, {"variant": variant})
