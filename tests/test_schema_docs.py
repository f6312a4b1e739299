"""SCHEMA.md and layout.py declare the same arrays with the same dtypes."""

from __future__ import annotations

import pathlib
import re

import pytest

from cache_schema.layout import objects_layout, rooms_layout, scenes_layout
from cache_schema.metadata import TEACHER_ROLES, TeacherRecord

DOC = (pathlib.Path(__file__).resolve().parents[1] / "cache_schema" / "SCHEMA.md").read_text()


def _documented(kind: str) -> dict[str, str]:
    """path -> dtype column of the objects, scenes or rooms table."""
    objects_part, rest = DOC.split("## Scenes caches")
    scenes_part, rooms_part = rest.split("## Rooms caches")
    section = {"objects": objects_part.split("## Objects caches")[1], "scenes": scenes_part, "rooms": rooms_part}[kind]
    rows = re.findall(r"^\| `([^`]+)` \| [^|]+ \| ([^|]+) \|", section, flags=re.M)
    return {path: dtype.strip() for path, dtype in rows}


def _all_layout_arrays():
    obj_roles = tuple(r for r in TEACHER_ROLES if r != "pair_features")
    t = {"<name>": TeacherRecord("<name>", "lib", "m", "-", "x", 8, obj_roles, extra={"num_tokens": 4})}
    s = {"<name>": TeacherRecord("<name>", "lib", "m", "-", "x", 8, ("pair_features",),
                                  extra={"pca_input_dim": 16, "patch_grid": [2, 3]})}
    obj = objects_layout(4, 16, 2, 2, t, num_classes=3, image_hw=(8, 8), store_rgb=True, store_depth=True,
                         with_normals=True, with_part_labels=True)
    scn = scenes_layout(3, 2, s, with_labels=True, image_hw=(8, 8), store_images=True)
    return {"objects": obj.arrays, "scenes": scn.arrays, "rooms": rooms_layout(3).arrays}


@pytest.mark.parametrize("kind", ["objects", "scenes", "rooms"])
def test_every_layout_array_is_documented_with_its_dtype(kind):
    doc = _documented(kind)
    for spec in _all_layout_arrays()[kind]:
        assert spec.path in doc, f"{spec.path} is missing from SCHEMA.md"
        assert spec.dtype in doc[spec.path], \
            f"{spec.path}: SCHEMA.md says {doc[spec.path]}, layout.py says {spec.dtype}"


@pytest.mark.parametrize("kind", ["objects", "scenes", "rooms"])
def test_every_documented_array_exists_in_the_layout(kind):
    declared = {s.path for s in _all_layout_arrays()[kind]} | {"split/<name>"}
    documented = set(_documented(kind))
    assert documented and documented - declared == set(), "SCHEMA.md documents arrays layout.py does not declare"
