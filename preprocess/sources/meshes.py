"""Any folder of meshes: ``<root>/<class>/.../*.{obj,off,ply,stl,glb}``.

The class is the first sub-folder under the root; files directly in the root
get the class ``unlabelled``. Rows are split 80/20 by a hash of their id.
"""

from __future__ import annotations

import os

from cache_schema.layout import UNLABELLED_CLASS as UNLABELLED
from preprocess.sources import Catalog, MeshItem, hashed_split

EXTENSIONS = (".obj", ".off", ".ply", ".stl", ".glb")


def list_items(root: str, **_: object) -> Catalog:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"mesh folder {root!r} is not a folder")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(EXTENSIONS):
                rel = os.path.relpath(os.path.join(folder, name), root)
                parts = rel.split(os.sep)
                found.append((rel, parts[0] if len(parts) > 1 else UNLABELLED))
    if not found:
        raise FileNotFoundError(f"no {'/'.join(EXTENSIONS)} files under {root!r}")
    classes = sorted({c for _, c in found})
    items = tuple(MeshItem(rel.replace(os.sep, "/"), classes.index(c), hashed_split(rel),
                           path=os.path.join(root, rel)) for rel, c in found)
    return Catalog("meshes", os.path.abspath(root), tuple(classes), items)
