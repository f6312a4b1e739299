"""S3DIS as users download it (Stanford3dDataset_v1.2_Aligned_Version)::

    ROOT/Area_N/<room>/Annotations/<class>_<k>.txt     one instance, a line "x y z r g b" per point

A room's points are its class files read in name order (the room's own
``<room>.txt`` is their union and is not read); each file is one instance
(instance id = its index in that order) and its class is the file name before
the last ``_<k>``. ``stairs``, and any other name outside the 13 classes, is
read as clutter with a note naming the file.

Files are parsed with pandas' C reader (~0.5 s per million lines). A file
it refuses is read again without its stray characters (control characters and
bytes outside printable ASCII: the release has a ``\\x10`` inside a number of
``Area_5/hallway_6/Annotations/ceiling_1.txt``), with a note naming file and
line for every repaired line; if that fails too, an exact line-by-line reading
names the first line that does not hold six finite numbers and the room
fails, so no point is dropped silently. Other characters (a letter, a comma)
are never removed: that would change a value, not repair it.

Splits: the rooms of ``test_area`` (5, the standard benchmark) are ``test``,
the others ``train``, and every area is ``area_N``.
"""

from __future__ import annotations

import csv
import io
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
        try:
            rooms = sorted(os.listdir(folder))
        except OSError as e:
            raise ValueError(f"unreadable area folder: {folder} ({e.strerror})") from None
        for room in rooms:
            path = os.path.join(folder, room)
            if room.startswith(".") or not os.path.isdir(path):
                continue
            rid = f"{area_name}/{room}"
            items.append(RoomItem(rid, "test" if area == test_area else "train", area,
                                  {"dataset": "s3dis", "root": root, "folder": path}))
            annotations = os.path.join(path, "Annotations")
            try:  # notes known from the names alone go into the cache's dataset notes
                names = class_files(annotations) if os.path.isdir(annotations) else []
            except OSError:
                names = []  # unreadable: the worker fails this room with the reason
            notes += [_mapped_note(class_of(f), f"{rid}/Annotations/{f}") for f in names
                      if class_of(f) not in S3DIS_CLASSES]
    return RoomCatalog("s3dis", root, S3DIS_CLASSES, BOX_CLASSES, test_area, tuple(items), tuple(notes))


def load_room(item: RoomItem) -> RoomData:
    root, folder = item.source["root"], item.source["folder"]
    annotations = os.path.join(folder, "Annotations")
    if not os.path.isdir(annotations):
        raise BadInput(f"missing Annotations folder: {annotations}")
    try:
        files = class_files(annotations)
    except OSError as e:
        raise BadInput(f"unreadable Annotations folder: {annotations} ({e.strerror})") from e
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
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadInput(f"unreadable class file: {path} ({e})") from e
    values = _parse_fast(data)
    if values is None:
        values = _parse_repaired(data.decode("latin-1"), path, rel, notes)  # latin-1: every byte is a character
    if not len(values):
        raise BadInput(f"empty class file: {path}")
    bad = np.flatnonzero(((values[:, 3:] < 0) | (values[:, 3:] > 255) | (values[:, 3:] % 1 != 0)).any(axis=1))
    if bad.size:
        raise BadInput(f"bad colour: {path}: point {bad[0] + 1} has r g b {values[bad[0], 3:].tolist()}, "
                       "not integers 0..255")
    return values


def _parse_fast(data: bytes) -> np.ndarray | None:
    """pandas' C reader; None when it refuses the text (a token that is no number, a line of another length,
    no data, not UTF-8) or reads other than six finite numbers per line."""
    import pandas as pd

    try:
        values = pd.read_csv(io.BytesIO(data), sep=r"\s+", header=None, dtype=np.float64, engine="c",
                             quoting=csv.QUOTE_NONE, na_filter=False).to_numpy()
    except ValueError:
        return None
    return values if values.shape[1] == 6 and np.isfinite(values).all() else None


def _parse_repaired(text: str, path: str, rel: str, notes: list[str]) -> np.ndarray:
    """The text without its stray characters, read fast, a note per repaired line; if that fails too, the
    exact line-by-line reading, which names the first bad line."""
    repaired = _stray_lines(text)
    values = _parse_fast(STRAY.sub("", text).encode("latin-1")) if repaired else None
    if values is None:
        return _parse_lines(text, path, rel, notes)
    _note_repairs(repaired, rel, notes)
    return values


def _stray_lines(text: str) -> list[tuple[int, str]]:
    """(line number, raw line) of every line holding a stray character."""
    out: list[tuple[int, str]] = []
    line, pos = 1, 0
    for m in STRAY.finditer(text):
        start = text.rfind("\n", 0, m.start()) + 1
        if out and start == pos:
            continue  # another stray character on the same line
        line += text.count("\n", pos, start)
        pos = start
        end = text.find("\n", start)
        out.append((line, text[start:end if end >= 0 else len(text)]))
    return out


def _note_repairs(repaired: list[tuple[int, str]], rel: str, notes: list[str]) -> None:
    notes += [f"stray character(s) removed: {rel}:{number} ({_shown(raw)})"
              for number, raw in repaired[:MAX_REPAIR_NOTES]]
    if len(repaired) > MAX_REPAIR_NOTES:
        notes.append(f"stray character(s) removed: {rel}: {len(repaired) - MAX_REPAIR_NOTES} more lines")


def _parse_lines(text: str, path: str, rel: str, notes: list[str]) -> np.ndarray:
    """The slow, exact reading: line by line, stray characters removed, the first line without six finite
    numbers named. A line that held nothing but stray characters holds no point and is dropped (noted)."""
    rows, repaired = [], []
    for number, raw in enumerate(text.split("\n"), 1):
        clean = STRAY.sub("", raw)
        if clean != raw:
            repaired.append((number, raw))
        if not clean.strip():
            continue
        tokens = clean.split()
        row = [float(t) for t in tokens] if len(tokens) == 6 and all(NUMBER.fullmatch(t) for t in tokens) else []
        if not row or not np.isfinite(row).all():
            raise BadInput(f"bad line: {path}:{number}: {_shown(raw)}")
        rows.append(row)
    _note_repairs(repaired, rel, notes)
    return np.array(rows, np.float64).reshape(-1, 6)


def _shown(raw: str, limit: int = 100) -> str:
    return ascii(raw.rstrip("\r")[:limit]) + ("..." if len(raw) > limit else "")
