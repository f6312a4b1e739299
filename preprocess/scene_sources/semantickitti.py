"""SemanticKITTI: ``sequences/NN/{velodyne,labels,image_2}``, ``calib.txt`` (P2, Tr), the left colour camera.

Labels keep their lower 16 bits (the upper 16 are the instance id) and are
mapped to the 19 training classes of the benchmark; everything else is
ignored. Splits are the official ones: 08 is validation, 11-21 test.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from preprocess.errors import BadInput
from preprocess.input_files import checked_path
from preprocess.scene_sources import IGNORE_LABEL, CameraImage, Frame, FrameItem, SceneCatalog, read_image, \
    read_points_bin

LABEL_NAMES = ("car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist",
               "road", "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "trunk",
               "terrain", "pole", "traffic-sign")
# raw label -> training class (1..19; 0 = ignore), the benchmark's learning_map
LEARNING_MAP = {0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10,
                48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0,
                252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5}
VAL_SEQUENCES, TEST_SEQUENCES = ("08",), tuple(f"{i:02d}" for i in range(11, 22))


def label_lut() -> np.ndarray:
    """(65536,) uint8: raw semantic label -> class index (0..18) or IGNORE_LABEL."""
    lut = np.full(2**16, IGNORE_LABEL, np.uint8)
    for raw, cls in LEARNING_MAP.items():
        if cls:
            lut[raw] = cls - 1
    return lut


def read_calib(path: str) -> tuple[np.ndarray, np.ndarray]:
    """K (3, 3) of ``image_2`` and T_lidar_to_cam (4, 4) from a sequence's ``calib.txt``."""
    if not os.path.exists(path):
        raise BadInput(f"missing calibration entry: {path} does not exist")
    entries = {}
    with open(path) as f:
        for line in f:
            if ":" in line:
                key, values = line.split(":", 1)
                entries[key.strip()] = np.array(values.split(), np.float64)
    for key in ("P2", "Tr"):
        if key not in entries or entries[key].size != 12:
            raise BadInput(f"missing calibration entry: {key} in {path}")
    P2 = entries["P2"].reshape(3, 4)
    Tr = np.vstack([entries["Tr"].reshape(3, 4), [0, 0, 0, 1]])  # velodyne -> rectified cam0
    K = P2[:, :3]
    to_cam2 = np.eye(4)
    to_cam2[:3, 3] = np.linalg.solve(K, P2[:, 3])  # P2 = K [I | t]: the baseline from cam0 to cam2
    return K, to_cam2 @ Tr


def list_frames(root: str, sequences: tuple[str, ...] | None = None, **_: Any) -> SceneCatalog:
    base = os.path.join(root, "sequences")
    if not os.path.isdir(base):
        raise FileNotFoundError(f"{base} does not exist (is --root the SemanticKITTI folder holding sequences/?)")
    items, max_w, max_h = [], 0, 0
    has_labels = False
    for seq in sorted(sequences or os.listdir(base)):
        velo = os.path.join(base, seq, "velodyne")
        if not os.path.isdir(velo):
            continue
        split = "val" if seq in VAL_SEQUENCES else "test" if seq in TEST_SEQUENCES else "train"
        names = sorted(f[:-4] for f in os.listdir(velo) if f.endswith(".bin"))
        for name in names:
            label = os.path.join(base, seq, "labels", f"{name}.label")
            has_labels |= os.path.exists(label)
            items.append(FrameItem(f"{seq}/{name}", split, {
                "dataset": "semantickitti", "root": os.path.abspath(root), "file": os.path.join(velo, f"{name}.bin"),
                "labels": label if split != "test" else None, "calib": os.path.join(base, seq, "calib.txt"),
                "image": os.path.join(base, seq, "image_2", f"{name}.png")}))
        w, h = _image_size(os.path.join(base, seq, "image_2", f"{names[0]}.png")) if names else (0, 0)
        max_w, max_h = max(max_w, w), max(max_h, h)
    return SceneCatalog("semantickitti", os.path.abspath(root), LABEL_NAMES, ("image_2",),
                        (max_w or 1241, max_h or 376), has_labels, tuple(items))


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except OSError:
        return 0, 0


def load_frame(item: FrameItem) -> Frame:
    src = item.source
    K, T = read_calib(checked_path(src["calib"], src.get("root"), what="calibration entry"))
    points = read_points_bin(src["file"], columns=4, root=src.get("root"))
    labels = None
    if src["labels"]:
        checked_path(src["labels"], src.get("root"))
        raw = np.fromfile(src["labels"], dtype=np.uint32)
        if len(raw) != len(points):
            raise BadInput(f"label count mismatch: {src['labels']} has {len(raw)} labels for {len(points)} points")
        labels = label_lut()[raw & 0xFFFF]
    return Frame(points, labels, [CameraImage("image_2", read_image(src["image"], src.get("root")), K, T)])
