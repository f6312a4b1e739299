"""The object cache builder end to end, with the tiny teachers, on datasets written by the tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mesh_fixtures import bad_meshes_fixture, modelnet_fixture, shapenet_fixture

from cache_schema import FAILED, open_cache
from cache_schema.cli import main as cache_main
from cache_schema.validate import validate
from preprocess.build_objects import ObjectBuildConfig, RunOptions, build_objects
from preprocess.meshes import BadInput, load_mesh
from preprocess.render import ViewConfig
from preprocess.sources import MeshItem

SMALL = dict(num_points=512, views=ViewConfig(num_views=4, resolution=64), teachers=("clip-tiny", "dinov2-tiny"),
             num_captions=2)
QUIET = RunOptions(progress=False, block_rows=4)


def test_shapenet_layout_end_to_end(tmp_path):
    ids = shapenet_fixture(str(tmp_path / "ShapeNetCore.v2"))
    url = str(tmp_path / "shapenet.zarr")
    summary = build_objects(url, ObjectBuildConfig("shapenet", str(tmp_path / "ShapeNetCore.v2"), **SMALL), QUIET)
    assert summary.done == 6 and not summary.failed
    assert validate(url) == []
    cache = open_cache(url)
    assert sorted(cache.ids) == sorted(ids)
    assert cache.label_names == ("chair", "table")  # first name in taxonomy.json
    assert [cache.label_names[label] for label in cache.labels] == [ids[i] for i in cache.ids]
    assert sorted(np.concatenate([cache.split(s) for s in cache.split_names]).tolist()) == list(range(6))
    pts = cache.points()
    assert pts.shape == (6, 512, 3) and np.linalg.norm(pts, axis=-1).max() <= 1.0 + 1e-3
    assert cache.teacher("clip-tiny", "image").shape == (6, 4, 64)
    assert cache.teacher("clip-tiny", "class_text").shape == (2, 64)
    assert cache.teacher("dinov2-tiny", "patch_mean").shape == (6, 4, 64)
    assert not cache.teachers["clip-tiny"].pretrained
    text = cache.teacher("clip-tiny", "text")
    np.testing.assert_allclose(np.linalg.norm(text, axis=-1), 1.0, atol=2e-3)  # stored normalised

    # the textured chair renders with its red texture
    row = int(np.flatnonzero(cache.ids == "03001627/chair00abc")[0])
    rgb = cache.array("views/rgb")[row]
    fg = cache.array("views/depth")[row] > 0
    mean = rgb[fg].astype(float).mean(axis=0)
    assert mean[0] > 1.5 * mean[1] and mean[0] > 1.5 * mean[2], mean


def test_modelnet40_layout_keeps_the_official_split(tmp_path):
    modelnet_fixture(str(tmp_path / "ModelNet40"))
    url = str(tmp_path / "mn.zarr")
    build_objects(url, ObjectBuildConfig("modelnet40", str(tmp_path / "ModelNet40"), **SMALL), QUIET)
    cache = open_cache(url)
    test_ids = sorted(cache.ids[cache.split("test")])
    assert test_ids == ["bottle/test/bottle_0011", "lamp/test/lamp_0011"]
    assert len(cache.split("train")) == 6 and validate(url) == []


def test_bad_inputs_are_recorded_and_the_build_goes_on(tmp_path, capsys):
    expected = bad_meshes_fixture(str(tmp_path / "meshes"))
    url = str(tmp_path / "bad.zarr")
    summary = build_objects(url, ObjectBuildConfig("meshes", str(tmp_path / "meshes"), **SMALL), QUIET)
    cache = open_cache(url)
    reasons = dict(zip(cache.ids, cache.array("status_reason")[:]))
    status = dict(zip(cache.ids, cache.status))
    assert set(reasons) == set(expected)
    for item_id, outcome in expected.items():
        if outcome.startswith("done"):
            assert status[item_id] == 1, (item_id, reasons[item_id])
        else:
            assert status[item_id] == FAILED and outcome in reasons[item_id], (item_id, reasons[item_id])
    assert "texture missing" in reasons["good/untextured/model_normalized.obj"]
    assert "1 edges shared by more than two faces" in reasons["good/fin.obj"]
    huge = int(np.flatnonzero(cache.ids == "good/huge.stl")[0])
    assert 0.95 < np.linalg.norm(cache.points(huge), axis=-1).max() <= 1.001  # normalised, not overflowed
    assert summary.done == 7 and sum(summary.failed.values()) == 13
    kinds = {k for k in summary.failed}  # the status table tells every kind apart
    assert {"unparsable mesh", "no faces", "non-finite vertices", "zero-area mesh", "empty file", "bad face index",
            "truncated file", "outside dataset root"} <= kinds
    assert validate(url) == []
    assert cache_main(["info", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows_failed"] == 13 and info["failures_by_reason"]["truncated file"] == 4
    assert info["notes_on_done_rows"] == {"texture missing": 1, "non-manifold": 1}


TETRA_OBJ = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\n"


@pytest.mark.parametrize("last_line,why", [
    ("f 1 2", "'f 1 2': a face needs 3 vertices"),
    ("f 1/1 2/1", "'f 1/1 2/1': a face needs 3 vertices"),
    ("f", "'f': a face needs 3 vertices"),
    ("f 1 2 4/", "'f 1 2 4/': '4/' is not a vertex"),
    ("v 0.1 0.2", "'v 0.1 0.2': a vertex needs 3 coordinates"),
    ("v 0.1", "'v 0.1': a vertex needs 3 coordinates"),
    ("v 0.1 0.2 1e", "'v 0.1 0.2 1e': '1e' is not a number"),
    ("v 0.1 0.2 -", "'v 0.1 0.2 -': '-' is not a number"),
    ("vn 0 0", "'vn 0 0': a normal needs 3 coordinates"),
])
def test_an_obj_cut_in_its_last_line_is_a_truncated_file(tmp_path, last_line, why):
    path = tmp_path / "cut.obj"
    path.write_text(TETRA_OBJ + "f 1 2 4\n" + last_line)  # an interrupted copy: no final newline
    with pytest.raises(BadInput) as e:
        load_mesh(MeshItem("cut", 0, "train", str(path)), str(tmp_path))
    assert str(e.value) == f"truncated file: cut.obj ends in the middle of line 7 ({why})"


@pytest.mark.parametrize("last_line,faces", [
    ("f 1 2 4", 2), ("f 1/1 2/1 4/1", 2), ("f 1//1 2//1 -1//1", 2), ("f 1 2 4 ", 2),
    ("v 0.1 0.2 0.", 1), ("vt 0.5", 1), ("# the end", 1), ("usemtl skin", 1),
])
def test_a_whole_obj_without_a_final_newline_loads(tmp_path, last_line, faces):
    path = tmp_path / "whole.obj"
    path.write_text(TETRA_OBJ + last_line)
    mesh, _ = load_mesh(MeshItem("whole", 0, "train", str(path)), str(tmp_path))
    assert len(mesh.faces) == faces


def test_missing_shapenet_model_file_is_a_failed_row(tmp_path):
    root = tmp_path / "ShapeNetCore.v2"
    shapenet_fixture(str(root))
    (root / "04379243" / "table01abc" / "models" / "model_normalized.obj").unlink()
    url = str(tmp_path / "c.zarr")
    build_objects(url, ObjectBuildConfig("shapenet", str(root), **SMALL), QUIET)
    assert open_cache(url).failures()["04379243/table01abc"].startswith("missing file: ")


def test_rerun_says_complete_and_other_settings_are_refused(tmp_path):
    from cache_schema import LayoutMismatchError

    url = str(tmp_path / "demo.zarr")
    cfg = ObjectBuildConfig("demo", max_per_class=1, **SMALL)
    first = build_objects(url, cfg, QUIET)
    again = build_objects(url, cfg, QUIET)
    assert again.already_complete and again.fingerprint == first.fingerprint
    assert "already complete" in str(again)
    other = ObjectBuildConfig("demo", max_per_class=1, **{**SMALL, "num_points": 256})
    with pytest.raises(LayoutMismatchError, match="config.num_points"):
        build_objects(url, other, QUIET)
    replaced = build_objects(url, other, RunOptions(progress=False, block_rows=4, overwrite=True))
    assert replaced.done == 10 and open_cache(url).points().shape[1] == 256


def test_two_dask_workers_build_the_same_cache_as_one_process(tmp_path):
    cfg = ObjectBuildConfig("demo", max_per_class=2, **SMALL)
    serial = build_objects(str(tmp_path / "serial.zarr"), cfg, QUIET)
    parallel = build_objects(str(tmp_path / "dask.zarr"), cfg,
                             RunOptions(progress=False, block_rows=4, workers=2, torch_threads=1))
    assert parallel.done == serial.done == 20
    assert parallel.fingerprint == serial.fingerprint


def test_add_teacher_from_stored_renders_equals_a_full_build(tmp_path):
    from preprocess.add_teacher import add_teacher

    both = build_objects(str(tmp_path / "both.zarr"), ObjectBuildConfig("demo", max_per_class=1, **SMALL), QUIET)
    url = str(tmp_path / "clip-only.zarr")
    build_objects(url, ObjectBuildConfig("demo", max_per_class=1, **{**SMALL, "teachers": ("clip-tiny",)}), QUIET)
    message = add_teacher(url, "dinov2-tiny", RunOptions(progress=False))
    assert "added teacher 'dinov2-tiny'" in message
    assert open_cache(url).fingerprint == both.fingerprint
    assert "already has" in add_teacher(url, "dinov2-tiny", RunOptions(progress=False))


def test_rows_are_written_in_a_seeded_random_order_that_depends_on_the_ids_alone():
    from preprocess.sources import MeshItem, row_order

    listed = [MeshItem(f"class{c}/shape{i:03d}", c, "train") for c in range(8) for i in range(64)]  # class by class
    rows = row_order(listed, seed=0)
    assert row_order(list(reversed(listed)), seed=0) == rows  # not the listing order's
    assert row_order(listed, seed=1) != rows
    first_block = {item.label for item in rows[:64]}
    assert len(first_block) >= 7  # a block of rows is a random draw, not one class


def test_the_demo_cache_rows_are_not_class_by_class(small_demo_cache):
    from cache_schema import open_cache
    from preprocess.sources import list_source

    cache = open_cache(small_demo_cache)
    labels = np.asarray(cache.array("label")[:])
    assert (np.diff(labels) != 0).sum() > len(labels) // 3  # the listing changes class only 9 times
    listed = {item.id: item.label for item in list_source("demo", None, per_class=5, seed=0).items}
    ids = [str(i) for i in cache.array("ids")[:]]
    assert [listed[i] for i in ids] == labels.tolist()  # ids still map every row back to its source
    assert cache.attrs.config["row_order"] == "sha256(seed:id)"
