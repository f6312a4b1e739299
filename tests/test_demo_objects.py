"""The built-in demo shapes: deterministic, enough of them, and not separable by one global statistic."""

from __future__ import annotations

import numpy as np
from sklearn.tree import DecisionTreeClassifier

from preprocess.meshes import normalize_unit_sphere
from preprocess.sources.demo import CATEGORIES, list_items, make_mesh


def test_catalog_has_ten_categories_of_forty_with_a_split():
    catalog = list_items()
    assert len(catalog.label_names) >= 10 and {"chair", "table", "airplane", "car"} <= set(catalog.label_names)
    counts = np.bincount([it.label for it in catalog.items])
    assert (counts >= 40).all()
    splits = catalog.splits()
    assert len(splits["test"]) == len(catalog.items) // 5 and len(splits["train"]) == 4 * len(catalog.items) // 5


def test_same_arguments_same_mesh_and_shapes_vary_within_a_class():
    a, b = make_mesh("chair", 3), make_mesh("chair", 3)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.visual.face_colors, b.visual.face_colors)
    c = make_mesh("chair", 4)
    assert a.vertices.shape != c.vertices.shape or not np.allclose(a.vertices, c.vertices)


def test_no_single_global_statistic_separates_the_classes():
    catalog = list_items()
    stats, labels, train = [], [], []
    for item in catalog.items:
        mesh, _, _ = normalize_unit_sphere(make_mesh(**item.procedural))
        ext = np.sort(np.ptp(mesh.vertices, axis=0))
        up = np.ptp(mesh.vertices[:, 1])
        stats.append([len(mesh.faces), mesh.area, up / ext[2], ext[0] / ext[2], len(mesh.vertices)])
        labels.append(item.label)
        train.append(item.split == "train")
    x, y, tr = np.array(stats), np.array(labels), np.array(train)
    for j, name in enumerate(["faces", "area", "height/extent", "thinness", "vertices"]):
        tree = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x[tr, j:j + 1], y[tr])
        accuracy = tree.score(x[~tr, j:j + 1], y[~tr])
        assert accuracy < 0.65, f"{name} alone classifies {accuracy:.0%} of {len(CATEGORIES)} demo classes"
