"""ModelNet40: ``<class>/{train,test}/<class>_NNNN.off``, with its official split."""

from __future__ import annotations

import os

from preprocess.sources import Catalog, MeshItem


def list_items(root: str, **_: object) -> Catalog:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"ModelNet40 root {root!r} is not a folder")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, "train"))
                     or os.path.isdir(os.path.join(root, d, "test")))
    if not classes:
        raise FileNotFoundError(f"no <class>/train or <class>/test folders under {root!r}: is this ModelNet40?")
    items = []
    for label, cls in enumerate(classes):
        for split in ("train", "test"):
            folder = os.path.join(root, cls, split)
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                if name.lower().endswith(".off"):
                    items.append(MeshItem(f"{cls}/{split}/{name[:-4]}", label, split, path=os.path.join(folder, name)))
    return Catalog("modelnet40", os.path.abspath(root), tuple(classes), tuple(items))
