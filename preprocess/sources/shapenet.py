"""ShapeNetCore v2: ``taxonomy.json`` + ``<synset>/<model_id>/models/model_normalized.obj``.

Classes are the synsets found on disk, named by the first name in
``taxonomy.json``. ShapeNetCore v2 ships no split, so rows are split 80/20 by
a hash of their id (stable across machines and runs).
"""

from __future__ import annotations

import json
import os

from preprocess.sources import Catalog, MeshItem, hashed_split

MESH_RELPATH = os.path.join("models", "model_normalized.obj")


def list_items(root: str, **_: object) -> Catalog:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"ShapeNet root {root!r} is not a folder")
    names: dict[str, str] = {}
    taxonomy = os.path.join(root, "taxonomy.json")
    if os.path.exists(taxonomy):
        with open(taxonomy) as f:
            for entry in json.load(f):
                names[entry["synsetId"]] = entry["name"].split(",")[0].strip()
    synsets = sorted(d for d in os.listdir(root) if d.isdigit() and os.path.isdir(os.path.join(root, d)))
    if not synsets:
        raise FileNotFoundError(f"no <synset> folders (8-digit ids) under {root!r}: is this ShapeNetCore v2?")
    items = []
    for label, synset in enumerate(synsets):
        for model_id in sorted(os.listdir(os.path.join(root, synset))):
            item_id = f"{synset}/{model_id}"
            path = os.path.join(root, synset, model_id, MESH_RELPATH)
            items.append(MeshItem(item_id, label, hashed_split(item_id), path=path))
    label_names = tuple(names.get(s, s) for s in synsets)
    return Catalog("shapenet", os.path.abspath(root), label_names, tuple(items))
