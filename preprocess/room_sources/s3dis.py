"""S3DIS as users download it (Stanford3dDataset_v1.2_Aligned_Version)::

    ROOT/Area_N/<room>/Annotations/<class>_<k>.txt     one instance, a line "x y z r g b" per point

A room's points are its class files read in name order (the room's own
``<room>.txt`` is their union and is not read); each file is one instance
(instance id = its index in that order) and its class is the file name before
the last ``_<k>``. ``stairs``, and any other name outside the 13 classes, is
read as clutter with a note naming the file.

Files are parsed with pandas' C reader (a 1M-point room in ~0.3 s). A file it
cannot read is parsed again line by line: characters that cannot be part of a
number and are not printable (the release has a stray ``\\x10`` inside a number
of ``Area_5/hallway_6/Annotations/ceiling_1.txt``) are removed, and a line
that then holds exactly six numbers is kept with a note naming file and line;
any other line fails the room with its file and line, so no point is dropped
silently. Splits: the rooms of ``test_area`` (5, the standard benchmark) are
``test``, the others ``train``.
"""

from __future__ import annotations

import csv
import os
import re
from typing import Any

import numpy as np

from preprocess.errors import BadInput
from preprocess.input_files import checked_path, is_inside
from preprocess.room_sources import BOX_CLASSES, S3DIS_CLASSES, RoomCatalog, RoomData, RoomItem, instance_boxes

RELEASE = "Stanford3dDataset_v1.2_Aligned_Version"
DEFAULT_TEST_AREA = 5
AREA = re.compile(r"Area_(\d+)")
CLASS_FILE = re.compile(r"(.+)_\d+")
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
STRAY = re.compile(r"[^\t\n\r\x20-\x7e]")  # control characters and bytes outside printable ASCII
MAX_REPAIR_NOTES = 10  # per file; one more note counts the rest


def _areas(root: str) -> list[tuple[int, str]]:
    """(area number, folder name) of every ``Area_N`` folder, by number; ValueError naming ``root`` if none."""
    found = sorted((int(m.group(1)), name) for name in (os.listdir(root) if os.path.isdir(root) else ())
                   if (m := AREA.fullmatch(name)) and os.path.isdir(os.path.join(root, name)))
    if not found:
        inner = os.path.join(root, RELEASE)
        hint = f"; did you mean {inner}?" if os.path.isdir(inner) else ""
        raise ValueError(f"{root} is not the S3DIS release ({RELEASE}): no Area_N folders{hint}")
    return found


def class_files(annotations: str) -> list[str]:
    """The class files of a room's ``Annotations`` folder, sorted by name (hidden files left out)."""
    return sorted(f for f in os.listdir(annotations) if f.endswith(".txt") and not f.startswith("."))


def class_of(file_name: str) -> str:
    """``chair_12.txt`` -> ``chair``."""
    stem = file_name[:-len(".txt")]
    m = CLASS_FILE.fullmatch(stem)
    return (m.group(1) if m else stem).lower()


def _mapped_note(cls: str, rel: str) -> str:
    return f"{cls} mapped to clutter: {rel}"


def list_rooms(root: str, test_area: int | None = None, **_: Any) -> RoomCatalog:
    test_area = DEFAULT_TEST_AREA if test_area is None else test_area
    root = os.path.abspath(root)
    areas = _areas(root)
    if test_area not in {a for a, _ in areas}:
        raise ValueError(f"--test-area {test_area}: {root} has no Area_{test_area} "
                         f"(it has {', '.join(name for _, name in areas)})")
    items, notes = [], []
    for area, area_name in areas:
        folder = os.path.join(root, area_name)
        for room in sorted(os.listdir(folder)):
            path = os.path.join(folder, room)
            if room.startswith(".") or not os.path.isdir(path):
                continue
            rid = f"{area_name}/{room}"
            items.append(RoomItem(rid, "test" if area == test_area else "train", area,
                                  {"dataset": "s3dis", "root": root, "folder": path}))
            annotations = os.path.join(path, "Annotations")
            if os.path.isdir(annotations):  # notes known from the names alone go into the cache's dataset notes
                notes += [_mapped_note(class_of(f), f"{rid}/Annotations/{f}") for f in class_files(annotations)
                          if class_of(f) not in S3DIS_CLASSES]
    return RoomCatalog("s3dis", root, S3DIS_CLASSES, BOX_CLASSES, test_area, tuple(items), tuple(notes))


def load_room(item: RoomItem) -> RoomData:
    root, folder = item.source["root"], item.source["folder"]
    annotations = os.path.join(folder, "Annotations")
    if not os.path.isdir(annotations):
        raise BadInput(f"missing Annotations folder: {annotations}")
    files = class_files(annotations)
    if not files:
        raise BadInput(f"no class files: {annotations} holds no <class>_<k>.txt")
    notes: list[str] = []
    values, labels = [], []
    for name in files:
        path = os.path.join(annotations, name)
        rel = f"{item.id}/Annotations/{name}"
        cls = class_of(name)
        if cls not in S3DIS_CLASSES:
            notes.append(_mapped_note(cls, rel))
            cls = "clutter"
        values.append(read_class_file(path, root, rel, notes))
        labels.append(S3DIS_CLASSES.index(cls))
    counts = [len(v) for v in values]
    flat = np.concatenate(values)
    del values
    points = flat[:, :3].astype(np.float32)
    colors = flat[:, 3:].astype(np.uint8)  # checked to be 0..255 per file
    labels_ = np.repeat(np.array(labels, np.uint8), counts)
    instances = np.repeat(np.arange(len(files), dtype=np.int32), counts)
    boxes, box_labels = instance_boxes(points, labels_, instances)
    return RoomData(points, colors, labels_, instances, boxes, box_labels, notes)


def read_class_file(path: str, root: str, rel: str, notes: list[str]) -> np.ndarray:
    """(n, 6) float64 x y z r g b of one class file; repairs go to ``notes``, anything else is BadInput."""
    if is_inside(path, root) and os.path.isfile(path) and os.path.getsize(path) == 0:
        raise BadInput(f"empty class file: {path}")
    checked_path(path, root, what="class file")
    try:
        try:
            values = _parse_fast(path)
        except ValueError:  # pandas: a token that is no number, a line of other length, no data, not UTF-8
            values = None
        if values is None or values.shape[1] != 6 or not np.isfinite(values).all():
            values = _parse_lines(path, rel, notes)
    except OSError as e:
        raise BadInput(f"unreadable class file: {path} ({e})") from e
    if not len(values):
        raise BadInput(f"empty class file: {path}")
    bad = np.flatnonzero(((values[:, 3:] < 0) | (values[:, 3:] > 255) | (values[:, 3:] % 1 != 0)).any(axis=1))
    if bad.size:
        raise BadInput(f"bad colour: {path}: point {bad[0] + 1} has r g b {values[bad[0], 3:].tolist()}, "
                       "not integers 0..255")
    return values


def _parse_fast(path: str) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(path, sep=r"\s+", header=None, dtype=np.float64, engine="c", quoting=csv.QUOTE_NONE,
                       na_filter=False).to_numpy()


def _parse_lines(path: str, rel: str, notes: list[str]) -> np.ndarray:
    """The slow, exact reading: a line by line parse that repairs stray characters or names the bad line."""
    with open(path, "rb") as f:
        text = f.read().decode("latin-1")  # every byte is one character: nothing fails to decode
    rows, repaired = [], 0
    for number, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        clean = STRAY.sub("", raw)
        tokens = clean.split()
        row = [float(t) for t in tokens] if len(tokens) == 6 and all(NUMBER.fullmatch(t) for t in tokens) else []
        if not row or not np.isfinite(row).all():
            raise BadInput(f"bad line: {path}:{number}: {_shown(raw)}")
        if clean != raw:
            repaired += 1
            if repaired <= MAX_REPAIR_NOTES:
                notes.append(f"stray character(s) removed: {rel}:{number} ({_shown(raw)})")
        rows.append(row)
    if repaired > MAX_REPAIR_NOTES:
        notes.append(f"stray character(s) removed: {rel}: {repaired - MAX_REPAIR_NOTES} more lines")
    return np.array(rows, np.float64).reshape(-1, 6)


def _shown(raw: str, limit: int = 100) -> str:
    return ascii(raw.rstrip("\r")[:limit]) + ("..." if len(raw) > limit else "")
