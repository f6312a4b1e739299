"""ScanNet v2 as the detection repositories prepare it: votenet's ``scannet/batch_load_scannet_data.py`` writes
it, votenet's ``scannet/scannet_detection_dataset.py`` and 3DETR's ``datasets/scannet.py`` read it::

    ROOT/scannet_train_detection_data/<scene>_vert.npy       (N, 6) x y z r g b, colours 0..255 as floats
    ROOT/scannet_train_detection_data/<scene>_sem_label.npy  (N,) NYU40 id of each point, 0 = unannotated
    ROOT/scannet_train_detection_data/<scene>_ins_label.npy  (N,) instance id of each point, 0 = none
    ROOT/scannet_train_detection_data/<scene>_bbox.npy       (K, 7) cx cy cz dx dy dz nyu40id
    ROOT/meta_data/scannetv2_train.txt, scannetv2_val.txt    one scene id per line

votenet's ``scannet/`` folder is such a ROOT: ``batch_load_scannet_data.py`` writes
``scannet_train_detection_data`` there (the scenes of ``meta_data/scannet_train.txt``: train and val), beside
the ``meta_data`` it ships; 3DETR takes the two folders as ``--dataset_root_dir`` and ``--meta_data_dir``.
mmdetection3d's preparation is another layout (``scannet_instance_data``, ``_aligned_bbox.npy`` and
``_unaligned_bbox.npy``) and is not read here.

Frame and boxes: ``load_scannet_data.export`` moves every scan's vertices by its ``axisAlignment`` matrix
first and then takes each instance's min / max, so ``_bbox.npy`` holds axis-aligned boxes in the aligned
frame (z up), and 3DETR reads them as such (``[:, 0:6]`` as centre and size, angle 0). Points and boxes are
stored as read: boxes are never recomputed from the points (batch_load samples a scene down to 50,000
points after computing them, so a box may reach past the points kept).

Classes: ``label_names`` are the 40 NYU40 classes in id order (the ``nyu40class`` column of ScanNet's
``scannetv2-labels.combined.tsv``, spelled as there: ``refridgerator``); a point's label is its id - 1, and
id 0 (unannotated) is 255. ``box_classes`` are votenet's 18 detection classes (``type2class`` of
``model_util_scannet.py``, NYU40 ids :data:`BOX_IDS`); a box of another id is dropped with a note
``boxes dropped: <scene>_bbox.npy: ...`` (batch_load keeps only the 18, other preparations keep every
instance). Instances keep their ids; 0 (none) is -1.

Splits: ``train`` and ``val`` from the lists. votenet and 3DETR skip a listed scene without files silently;
here it is a failed row naming the missing file, so a half-copied folder shows. Scenes in neither list are
not built (a listing note counts them).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

import numpy as np

from cache_schema.layout import IGNORE_LABEL
from preprocess.errors import BadInput
from preprocess.input_files import checked_path
from preprocess.room_sources import RoomCatalog, RoomData, RoomItem

DATA = "scannet_train_detection_data"
META = "meta_data"
SPLITS = ("train", "val")
FILES = ("vert", "sem_label", "ins_label", "bbox")
NYU40_CLASSES = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
                 "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
                 "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
                 "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub",
                 "bag", "otherstructure", "otherfurniture", "otherprop")
BOX_CLASSES = ("cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
               "desk", "curtain", "refrigerator", "showercurtrain", "toilet", "sink", "bathtub", "garbagebin")
BOX_IDS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)  # NYU40 id of each box class
BOX_RULE = "as prepared in <scene>_bbox.npy (axis-aligned, aligned frame); rows of other NYU40 ids dropped"
DROPPED = "boxes dropped"
NPY_MAGIC = b"\x93NUMPY"
DROPPED_ID = re.compile(r"(-?\d+) ([^,()]+?) x(\d+)")


def split_list(root: str, split: str) -> str:
    return os.path.join(root, META, f"scannetv2_{split}.txt")


def _check_root(root: str) -> None:
    """ValueError with a hint unless ``root`` holds ``scannet_train_detection_data``."""
    if os.path.isdir(os.path.join(root, DATA)):
        return
    what = f"{root} is not a prepared ScanNet folder: no {DATA} in it"
    if os.path.basename(os.path.normpath(root)) == DATA:
        raise ValueError(f"{what}; --root is the folder holding {DATA} and {META}: did you mean "
                         f"{os.path.dirname(os.path.normpath(root))}?")
    inner = os.path.join(root, "scannet")
    hint = f"; did you mean {inner}?" if os.path.isdir(os.path.join(inner, DATA)) else \
        f" (votenet's scannet/batch_load_scannet_data.py writes it beside {META})"
    raise ValueError(what + hint)


def _read_list(root: str, split: str) -> list[str]:
    path = split_list(root, split)
    try:
        with open(path) as f:
            names = [line.strip() for line in f]
    except FileNotFoundError:
        raise ValueError(f"missing split list: {path} (votenet ships it in scannet/{META})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable split list: {path} ({e})") from None
    return list(dict.fromkeys(n for n in names if n))  # blank lines and repeats left out, order kept


def list_rooms(root: str, test_area: int | None = None, **_: Any) -> RoomCatalog:
    """The scenes of the train and val lists, in list order; ValueError (one line) for a wrong root, a missing
    list or a scene in both."""
    if test_area is not None:
        raise ValueError(f"--test-area {test_area}: ScanNet has no areas; its splits are {META}/scannetv2_train.txt "
                         "and scannetv2_val.txt")
    root = os.path.abspath(root)
    _check_root(root)
    lists = {split: _read_list(root, split) for split in SPLITS}
    both = sorted(set(lists["train"]) & set(lists["val"]))
    if both:
        raise ValueError(f"{both[0]} is in both {split_list(root, 'train')} and scannetv2_val.txt "
                         f"({len(both)} scenes are)")
    folder = os.path.join(root, DATA)
    items = tuple(RoomItem(scene, split, None, {"dataset": "scannet", "root": root, "folder": folder})
                  for split in SPLITS for scene in lists[split])
    listed = {it.id for it in items}
    try:
        on_disk = {name[:-len("_vert.npy")] for name in os.listdir(folder) if name.endswith("_vert.npy")}
    except OSError as e:
        raise ValueError(f"unreadable folder: {folder} ({e.strerror})") from None
    unlisted = sorted(on_disk - listed)
    more = f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else ""
    notes = (f"in neither split list, not built: {', '.join(unlisted[:5])}{more} ({DATA})",) if unlisted else ()
    return RoomCatalog("scannet", root, NYU40_CLASSES, BOX_CLASSES, None, items, notes, BOX_RULE)


# ---------------------------------------------------------------- one scene

def _load(path: str, root: str) -> np.ndarray:
    """One ``.npy`` as an array of numbers (never unpickled); BadInput naming the file otherwise."""
    checked_path(path, root, what="scene file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
        if head != NPY_MAGIC:  # numpy would call any other file "pickled data"
            raise BadInput(f"unreadable .npy: {path} (no .npy header: starts {head!r})")
        value = np.load(path, allow_pickle=False)
    except BadInput:
        raise
    except Exception as e:  # a truncated file, an object array: whatever numpy or the OS says, on one line
        why = " ".join(str(e).split())
        raise BadInput(f"unreadable .npy: {path} ({type(e).__name__}: {why})"[:500]) from e
    if value.dtype.kind not in "biuf":
        raise BadInput(f"not an array of numbers: {path} ({value.dtype})")
    return value


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _integral(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Mask of values that are not integers in lo..hi (NaN included)."""
    v = values.astype(np.float64)
    return ~((v >= lo) & (v <= hi) & (v % 1 == 0))


def load_room(item: RoomItem) -> RoomData:
    """One scene's four arrays, checked (shapes, finite coordinates, colours 0..255, NYU40 ids), mapped to the
    cache's labels and instances, with the boxes of the 18 box classes; BadInput naming the file otherwise."""
    paths = {k: os.path.join(item.source["folder"], f"{item.id}_{k}.npy") for k in FILES}
    arrays = {k: _load(p, item.source["root"]) for k, p in paths.items()}
    vert, sem, ins, bbox = (arrays[k] for k in FILES)
    if vert.ndim != 2 or vert.shape[1] != 6 or not len(vert):
        raise BadInput(f"bad shape: {paths['vert']} is {vert.shape}, not (N, 6) with N > 0")
    for k in ("sem_label", "ins_label"):
        if arrays[k].shape != (len(vert),):
            raise BadInput(f"bad shape: {paths[k]} is {arrays[k].shape}, not ({len(vert)},): {item.id}_vert.npy "
                           f"has {len(vert)} points")
    if bbox.ndim != 2 or bbox.shape[1] != 7:
        raise BadInput(f"bad shape: {paths['bbox']} is {bbox.shape}, not (K, 7)")
    points = vert[:, :3].astype(np.float32)
    if (i := _first(~np.isfinite(points).all(axis=1))) is not None:
        raise BadInput(f"non-finite coordinates: {paths['vert']}: point {i + 1} has x y z {vert[i, :3].tolist()}")
    if (i := _first(_integral(vert[:, 3:], 0, 255).any(axis=1))) is not None:
        raise BadInput(f"bad colour: {paths['vert']}: point {i + 1} has r g b {vert[i, 3:].tolist()}, "
                       "not integers 0..255")
    if (i := _first(_integral(sem, 0, len(NYU40_CLASSES)))) is not None:
        raise BadInput(f"bad label: {paths['sem_label']}: point {i + 1} has {sem[i].item()}, not a NYU40 id 0..40")
    if (i := _first(_integral(ins, 0, 2**31 - 1))) is not None:
        raise BadInput(f"bad instance id: {paths['ins_label']}: point {i + 1} has {ins[i].item()}, "
                       "not an integer 0..2^31-1")
    labels = sem.astype(np.int64) - 1
    labels[labels < 0] = IGNORE_LABEL
    instances = ins.astype(np.int64)
    instances[instances == 0] = -1
    boxes, box_labels, notes = scene_boxes(bbox, paths["bbox"])
    return RoomData(points, vert[:, 3:].astype(np.uint8), labels.astype(np.uint8), instances.astype(np.int32),
                    boxes, box_labels, notes)


def scene_boxes(bbox: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(K', 6) float32 boxes and (K',) uint8 box classes of the rows of ``bbox`` ((K, 7)) whose NYU40 id is one
    of :data:`BOX_IDS`, in file order, and a note counting the rows dropped by id."""
    if (i := _first(~np.isfinite(bbox).all(axis=1) | (bbox[:, 3:6] < 0).any(axis=1))) is not None:
        raise BadInput(f"bad box: {path}: row {i + 1} is {bbox[i].tolist()}, not finite with sizes >= 0")
    if (i := _first(bbox[:, 6] % 1 != 0)) is not None:
        raise BadInput(f"bad box: {path}: row {i + 1} has class {bbox[i, 6]}, not an integer NYU40 id")
    ids = bbox[:, 6].astype(np.int64)
    index = np.full(len(ids), 255, np.int64)
    for c, nyu in enumerate(BOX_IDS):
        index[ids == nyu] = c
    keep = index != 255
    notes = []
    if not keep.all():
        dropped = Counter(ids[~keep].tolist())
        parts = ", ".join(f"{i} {nyu40_name(i)} x{n}" for i, n in sorted(dropped.items()))
        notes.append(f"{DROPPED}: {os.path.basename(path)}: {int((~keep).sum())} of NYU40 ids outside "
                     f"box_classes ({parts})")
    return bbox[keep, :6].astype(np.float32), index[keep].astype(np.uint8), notes


def nyu40_name(nyu40_id: int) -> str:
    if nyu40_id == 0:
        return "unannotated"
    return NYU40_CLASSES[nyu40_id - 1] if 1 <= nyu40_id <= len(NYU40_CLASSES) else "not NYU40"


def summary_notes(notes: list[str]) -> list[str]:
    """The build summary's total of the boxes dropped, from the rooms' notes (read back from the store)."""
    rooms, total = 0, Counter()
    for note in notes:
        if note.startswith(f"{DROPPED}: "):
            rooms += 1
            for i, _, n in DROPPED_ID.findall(note.rsplit("(", 1)[-1]):
                total[int(i)] += int(n)
    if not rooms:
        return []
    parts = ", ".join(f"{i} {nyu40_name(i)} x{n}" for i, n in sorted(total.items()))
    return [(f"{DROPPED} in total: {sum(total.values())} in {rooms} rooms, of NYU40 ids outside box_classes "
             f"({parts})")]
