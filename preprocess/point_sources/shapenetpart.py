"""ShapeNetPart (``shapenetcore_partanno_segmentation_benchmark_v0_normal``): 16 categories, 50 parts.

    ROOT/synsetoffset2category.txt                        "Airplane<TAB>02691156", one per category
    ROOT/train_test_split/shuffled_{train,val,test}_file_list.json    ["shape_data/<synset>/<id>", ...]
    ROOT/<synset>/<id>.txt                                "x y z nx ny nz part_id" per line, part ids 0-49

Stored per shape: 2,048 of its points (about 2,500-3,000 in a file) drawn
without replacement by a seed from the shape id (with replacement when a file
has fewer), with their normals and part labels at the same indices, so labels
stay aligned; centred and scaled into the unit sphere (Point-MAE's
``pc_normalize``). Splits ``train``, ``val``, ``test`` as listed, and
``trainval`` (their union, what Point-MAE trains on). The 50 global part ids
and the parts of each category are the benchmark's (``config.parts``).
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np

from preprocess.point_sources import PointCatalog, PointDataError, PointItem, check_finite, normalize_unit_sphere

NUM_POINTS = 2048
PART_COUNTS = {"Airplane": 4, "Bag": 2, "Cap": 2, "Car": 4, "Chair": 4, "Earphone": 3, "Guitar": 3, "Knife": 2,
               "Lamp": 4, "Laptop": 2, "Motorbike": 6, "Mug": 2, "Pistol": 3, "Rocket": 3, "Skateboard": 3,
               "Table": 3}  # categories in alphabetical order own consecutive global part ids 0-49


def part_metadata() -> dict:
    names, class_parts = [], {}
    for category, count in PART_COUNTS.items():
        class_parts[category] = list(range(len(names), len(names) + count))
        names += [f"{category}/part{k}" for k in range(count)]
    return {"names": names, "class_parts": class_parts}


def catalog(root: str, **_: object) -> PointCatalog:
    offsets = os.path.join(root, "synsetoffset2category.txt")
    if not os.path.exists(offsets):
        raise FileNotFoundError(f"ShapeNetPart file {offsets} does not exist")
    synset_of: dict[str, str] = {}
    with open(offsets) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[0] not in PART_COUNTS:
                raise PointDataError(f"{offsets} line {line_no}: expected '<Category> <synset>' with one of the 16 "
                                     f"ShapeNetPart categories, got {line.strip()!r}")
            synset_of[fields[1]] = fields[0]
    names = tuple(PART_COUNTS)
    parts = part_metadata()
    items, seen = [], {}
    for split in ("train", "val", "test"):
        listing = os.path.join(root, "train_test_split", f"shuffled_{split}_file_list.json")
        if not os.path.exists(listing):
            raise FileNotFoundError(f"ShapeNetPart split list {listing} does not exist")
        try:
            with open(listing) as f:
                entries = json.load(f)
        except json.JSONDecodeError as e:
            raise PointDataError(f"{listing}: not JSON ({e})") from None
        for k, entry in enumerate(entries):
            pieces = str(entry).split("/")
            if len(pieces) != 3 or pieces[1] not in synset_of:
                raise PointDataError(f"{listing} entry {k}: {entry!r} is not shape_data/<synset>/<id> with a synset "
                                     "of synsetoffset2category.txt")
            synset, shape = pieces[1], pieces[2]
            category = synset_of[synset]
            item_id = f"{synset}/{shape}"
            if item_id in seen:
                raise PointDataError(f"{listing} entry {k}: {item_id} is already in the {seen[item_id]} split")
            seen[item_id] = split
            items.append(PointItem(item_id, names.index(category), split,
                                   (os.path.join(root, synset, f"{shape}.txt"), category)))
    allowed = {c: set(ids) for c, ids in parts["class_parts"].items()}

    def read(group: list[PointItem]):
        points = np.zeros((len(group), NUM_POINTS, 3), np.float32)
        normals = np.zeros_like(points)
        labels = np.zeros((len(group), NUM_POINTS), np.uint8)
        reasons = [""] * len(group)
        for k, it in enumerate(group):
            path, category = it.ref
            cloud, reasons[k] = read_shape(path, allowed[category], category)
            if reasons[k]:
                continue
            rng = np.random.default_rng(zlib.crc32(it.id.encode()))
            idx = rng.choice(len(cloud), NUM_POINTS, replace=len(cloud) < NUM_POINTS)
            points[k] = normalize_unit_sphere(cloud[idx, :3])
            normals[k] = cloud[idx, 3:6]
            labels[k] = cloud[idx, 6].astype(np.uint8)
        return points, normals, reasons, labels

    return PointCatalog("shapenetpart", os.path.abspath(root), names, tuple(items), NUM_POINTS, True,
                        f"{NUM_POINTS} of the file's points drawn without replacement (seeded by the id), with "
                        "their normals and part labels; centred, unit sphere", read, parts=parts,
                        extra_splits={"trainval": ("train", "val")})


def read_shape(path: str, allowed: set[int], category: str) -> tuple[np.ndarray, str]:
    """(points with normals and part ids (n, 7), "") or (empty, why, naming the file and line)."""
    if not os.path.exists(path):
        return np.zeros((0, 7), np.float32), f"missing file: {path}"
    values = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = [float(x) for x in line.split()]
            except ValueError:
                return np.zeros((0, 7), np.float32), f"unparsable line: {path} line {line_no}: {line.strip()[:40]!r}"
            if len(row) != 7:
                return np.zeros((0, 7), np.float32), (f"unparsable line: {path} line {line_no}: {len(row)} values, "
                                                      "expected 7 (x y z nx ny nz part)")
            if row[6] != int(row[6]) or int(row[6]) not in allowed:
                return np.zeros((0, 7), np.float32), (f"part outside its class: {path} line {line_no}: part "
                                                      f"{row[6]:g} is not one of {category}'s {sorted(allowed)}")
            values.append(row)
    cloud = np.asarray(values, np.float32).reshape(-1, 7)
    if not len(cloud):
        return cloud, f"empty file: {path}"
    return cloud, check_finite(cloud[:, :6], path)
