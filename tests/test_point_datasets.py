"""`preprocess points`: ScanObjectNN h5, ModelNet40 resampled text and ShapeNet-55 npy files, generated here in
their official layouts, read back exactly; bad files give errors or failed rows that name them."""

from __future__ import annotations

import json
import os
import zlib

import h5py
import numpy as np
import pytest
import torch

from cache_schema import DONE, FAILED, open_cache
from preprocess.build_points import PointBuildConfig, build_points
from preprocess.cli import main as preprocess_main
from preprocess.point_sources import PointDataError, normalize_unit_sphere
from preprocess.point_sources.scanobjectnn import CLASS_NAMES
from train.ops import farthest_point_sample


def _scanobjectnn(root, n_train=7, n_test=5, points=2048, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for folder, pattern in (("main_split", "{}_objectdataset.h5"),
                            ("main_split", "{}_objectdataset_augmentedrot_scale75.h5"),
                            ("main_split_nobg", "{}_objectdataset.h5")):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for split, n in (("training", n_train), ("test", n_test)):
            data = rng.normal(size=(n, points, 3)).astype(np.float32)
            label = rng.integers(0, 15, n)
            with h5py.File(os.path.join(root, folder, pattern.format(split)), "w") as f:
                f["data"], f["label"], f["mask"] = data, label, np.zeros((n, points), np.int32)
            out[(folder, pattern, split)] = (data, label)
    return out


def _rows_by_id(cache):
    ids = [str(x) for x in cache.array("ids")[:]]
    return {i: r for r, i in enumerate(ids)}


def test_scanobjectnn_variants_read_back_exactly(tmp_path):
    files = _scanobjectnn(str(tmp_path / "h5_files"))
    for variant, key in (("obj_bg", ("main_split", "{}_objectdataset.h5")),
                         ("obj_only", ("main_split_nobg", "{}_objectdataset.h5")),
                         ("pb_t50_rs", ("main_split", "{}_objectdataset_augmentedrot_scale75.h5"))):
        url = str(tmp_path / f"{variant}.zarr")
        build_points(url, PointBuildConfig("scanobjectnn", str(tmp_path / "h5_files"), variant), block_rows=4,
                     progress=False)
        cache = open_cache(url)
        assert cache.label_names == CLASS_NAMES and cache.num_rows == 12
        rows = _rows_by_id(cache)
        for split, word in (("train", "training"), ("test", "test")):
            data, label = files[(*key, word)]
            assert sorted(cache.split(split).tolist()) == sorted(rows[f"{variant}/{split}/{i:05d}"]
                                                                for i in range(len(data)))
            for i in range(len(data)):
                r = rows[f"{variant}/{split}/{i:05d}"]
                np.testing.assert_array_equal(cache.array("points")[r], data[i])  # all 2,048, in file order
                assert cache.array("label")[r] == label[i]
        assert (cache.status == DONE).all() and "captions" not in cache.group and not cache.teachers


def test_scanobjectnn_bad_files_are_named_before_anything_is_written(tmp_path):
    root = str(tmp_path / "h5")
    _scanobjectnn(root)
    train = os.path.join(root, "main_split", "training_objectdataset.h5")
    with h5py.File(train, "r+") as f:
        f["label"][0] = 15
    with pytest.raises(PointDataError, match="training_objectdataset.h5: label 15 of cloud 0"):
        build_points(str(tmp_path / "c.zarr"), PointBuildConfig("scanobjectnn", root, "obj_bg"), progress=False)
    with open(train, "rb") as f:
        head = f.read(4096)
    with open(train, "wb") as f:  # a truncated download
        f.write(head)
    with pytest.raises(PointDataError, match="training_objectdataset.h5"):
        build_points(str(tmp_path / "c.zarr"), PointBuildConfig("scanobjectnn", root, "obj_bg"), progress=False)
    assert not os.path.exists(tmp_path / "c.zarr" / "points")
    os.remove(train)
    code = _cli(["points", "scanobjectnn", "--root", root, "--out", str(tmp_path / "c.zarr"), "--no-progress"])
    assert code == 2


def _cli(argv):
    try:
        preprocess_main(argv)
    except SystemExit as e:
        return e.code
    return 0


def _modelnet(root, classes=("airplane", "chair", "night_stand"), per_class=2, points=8300, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(root)
    with open(os.path.join(root, "modelnet40_shape_names.txt"), "w") as f:
        f.write("\n".join(classes) + "\n")
    clouds, listing = {}, {"train": [], "test": []}
    for cls in classes:
        os.makedirs(os.path.join(root, cls))
        for i in range(1, per_class + 1):
            name = f"{cls}_{i:04d}"
            xyz = rng.normal(size=(points, 3)) * [1, 2, 3] + 5
            normals = rng.normal(size=(points, 3))
            cloud = np.concatenate([xyz, normals], 1).astype(np.float32)
            np.savetxt(os.path.join(root, cls, f"{name}.txt"), cloud, fmt="%.6f", delimiter=",")
            clouds[f"{cls}/{name}"] = np.loadtxt(os.path.join(root, cls, f"{name}.txt"), delimiter=",",
                                                 dtype=np.float32)
            listing["train" if i % 2 else "test"].append(name)
    for split, names in listing.items():
        with open(os.path.join(root, f"modelnet40_{split}.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
    return clouds, listing


def test_modelnet40_resampled_stores_fps_8192_in_fps_order_with_normals(tmp_path):
    root = str(tmp_path / "modelnet40_normal_resampled")
    clouds, listing = _modelnet(root)
    url = str(tmp_path / "mn.zarr")
    build_points(url, PointBuildConfig("modelnet40-resampled", root), progress=False)
    cache = open_cache(url)
    assert cache.label_names == ("airplane", "chair", "night_stand")
    rows = _rows_by_id(cache)
    assert {str(cache.array("ids")[r]).split("/")[1] for r in cache.split("train")} == set(listing["train"])
    for shape_id, cloud in clouds.items():
        r = rows[shape_id]
        idx = farthest_point_sample(torch.from_numpy(cloud[None, :, :3]), 8192)[0].numpy()
        assert len(set(idx.tolist())) == 8192
        np.testing.assert_allclose(cache.array("points")[r], normalize_unit_sphere(cloud[idx, :3]), atol=1e-5)
        np.testing.assert_allclose(cache.array("normals")[r], cloud[idx, 3:], atol=1e-6)
        assert cache.label_names[cache.array("label")[r]] == shape_id.split("/")[0]
        # the first 1,024 stored points are FPS(1,024) of the file (Point-MAE's fine-tuning input), checked
        # against the plain PyTorch loop
        first = farthest_point_sample(torch.from_numpy(cloud[None, :, :3]), 1024, use_fpsample=False)[0].numpy()
        np.testing.assert_array_equal(idx[:1024], first)
    pts = cache.array("points")[:].astype(np.float64)
    radius = np.sqrt(((pts - pts.mean(1, keepdims=True)) ** 2).sum(-1)).max(1)
    np.testing.assert_allclose(radius, 1.0, atol=1e-3)


def test_modelnet40_bad_shape_files_become_failed_rows_naming_file_and_line(tmp_path):
    root = str(tmp_path / "mn")
    _modelnet(root, classes=("bed",), per_class=3)
    path = os.path.join(root, "bed", "bed_0002.txt")
    lines = open(path).read().splitlines()
    lines[41] = "0.1,0.2,oops,0,0,1"
    open(path, "w").write("\n".join(lines))
    os.remove(os.path.join(root, "bed", "bed_0003.txt"))
    url = str(tmp_path / "c.zarr")
    summary = build_points(url, PointBuildConfig("modelnet40-resampled", root), progress=False)
    cache = open_cache(url)
    reasons = {str(i): str(r) for i, r, s in zip(cache.array("ids")[:], cache.array("status_reason")[:],
                                                 cache.status) if s == FAILED}
    assert reasons["bed/bed_0002"].startswith("unparsable line: ") and "bed_0002.txt line 42" in \
        reasons["bed/bed_0002"]
    assert reasons["bed/bed_0003"].startswith("missing file: ")
    assert "failed" in str(summary) or summary.failed
    with open(os.path.join(root, "modelnet40_train.txt"), "a") as f:
        f.write("sofa_0001\n")
    with pytest.raises(PointDataError, match="modelnet40_train.txt line 3: 'sofa_0001'"):
        build_points(str(tmp_path / "d.zarr"), PointBuildConfig("modelnet40-resampled", root), progress=False)


def test_shapenet55_reads_npy_without_unpickling(tmp_path):
    root = tmp_path / "ShapeNet55-34"
    (root / "shapenet_pc").mkdir(parents=True)
    (root / "ShapeNet-55").mkdir()
    rng = np.random.default_rng(1)
    names = {"train": ["02691156-aaa.npy", "03001627-bbb.npy", "03001627-ccc.npy"], "test": ["02691156-ddd.npy"]}
    clouds = {}
    for split, files in names.items():
        (root / "ShapeNet-55" / f"{split}.txt").write_text("\n".join(files) + "\n")
        for name in files:
            clouds[name] = rng.normal(size=(8192, 3)).astype(np.float32)
            np.save(root / "shapenet_pc" / name, clouds[name])
    np.save(root / "shapenet_pc" / "03001627-ccc.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    url = str(tmp_path / "sn.zarr")
    build_points(url, PointBuildConfig("shapenet55", str(root)), progress=False)
    cache = open_cache(url)
    assert cache.label_names == ("02691156", "03001627")
    rows = _rows_by_id(cache)
    np.testing.assert_allclose(cache.array("points")[rows["02691156/aaa"]],
                               normalize_unit_sphere(clouds["02691156-aaa.npy"]), atol=1e-6)
    bad = rows["03001627/ccc"]
    assert cache.status[bad] == FAILED and "not a plain .npy" in str(cache.array("status_reason")[bad])
    assert [str(cache.array("ids")[r]) for r in cache.split("test")] == ["02691156/ddd"]


def test_a_killed_points_build_resumes(tmp_path):
    root = str(tmp_path / "h5")
    _scanobjectnn(root, n_train=20, n_test=4)
    url = str(tmp_path / "c.zarr")
    cfg = PointBuildConfig("scanobjectnn", root, "obj_bg")
    build_points(url, cfg, block_rows=8, progress=False)
    again = build_points(url, cfg, block_rows=8, progress=False)
    assert again.already_complete


def test_demo_scan_variants_are_partial_cluttered_and_deterministic(tmp_path):
    clouds = {}
    for variant in ("obj_bg", "obj_only", "pb_t50_rs"):
        url = str(tmp_path / f"{variant}.zarr")
        build_points(url, PointBuildConfig("demo-scan", None, variant, demo_per_class=2), progress=False)
        cache = open_cache(url)
        assert cache.num_rows == 20 and len(cache.label_names) == 10 and (cache.status == DONE).all()
        pts = cache.points()
        assert pts.shape == (20, 2048, 3) and np.isfinite(pts).all()
        np.testing.assert_allclose(np.linalg.norm(pts - pts.mean(1, keepdims=True), axis=-1).max(1), 1, atol=1e-3)
        clouds[variant] = {str(i): p for i, p in zip(cache.array("ids")[:], pts)}
    again = str(tmp_path / "again.zarr")
    build_points(again, PointBuildConfig("demo-scan", None, "obj_bg", demo_per_class=2), progress=False)
    assert open_cache(again).fingerprint == open_cache(str(tmp_path / "obj_bg.zarr")).fingerprint

    def floor_share(p):  # points on the lowest flat layer: the floor patch under a cluttered scan
        return float((p[:, 1] < p[:, 1].min() + 0.03).mean())

    bg = np.mean([floor_share(p) for p in clouds["obj_bg"].values()])
    only = np.mean([floor_share(p) for p in clouds["obj_only"].values()])
    assert bg > 0.1 and bg > 3 * only, (bg, only)
    same = [k.replace("obj_bg", "pb_t50_rs") for k in clouds["obj_bg"]]
    assert not any(np.allclose(clouds["obj_bg"][k], clouds["pb_t50_rs"][s]) for k, s in zip(clouds["obj_bg"], same))


def _shapenetpart(root, per_split=2, seed=0):
    """Two categories (Airplane 0-3, Mug 36-37) in the benchmark's layout; returns id -> (points, labels)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "train_test_split"))
    (open(os.path.join(root, "synsetoffset2category.txt"), "w")
     .write("Airplane\t02691156\nMug\t03797390\n"))
    shapes, lists = {}, {"train": [], "val": [], "test": []}
    for synset, parts in (("02691156", [0, 1, 2, 3]), ("03797390", [36, 37])):
        os.makedirs(os.path.join(root, synset))
        for split in lists:
            for k in range(per_split):
                shape = f"{split}{k}{synset[-2:]}"
                n = int(rng.integers(1900, 2600))
                xyz = rng.normal(size=(n, 3)) * 0.3 + 2.0
                normals = rng.normal(size=(n, 3))
                part = rng.choice(parts, n)
                np.savetxt(os.path.join(root, synset, f"{shape}.txt"), np.column_stack([xyz, normals, part]),
                           fmt=["%.6f"] * 6 + ["%d"])
                shapes[f"{synset}/{shape}"] = np.loadtxt(os.path.join(root, synset, f"{shape}.txt"))
                lists[split].append(f"shape_data/{synset}/{shape}")
    for split, entries in lists.items():
        with open(os.path.join(root, "train_test_split", f"shuffled_{split}_file_list.json"), "w") as f:
            json.dump(entries, f)
    return shapes


def test_shapenetpart_keeps_part_labels_aligned_with_points(tmp_path):
    root = str(tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0_normal")
    shapes = _shapenetpart(root)
    url = str(tmp_path / "sp.zarr")
    build_points(url, PointBuildConfig("shapenetpart", root), progress=False)
    cache = open_cache(url)
    assert len(cache.label_names) == 16 and len(cache.part_names) == 50 and cache.has_part_labels
    assert cache.class_parts[cache.label_names.index("Mug")].tolist() == [36, 37]
    assert sorted(cache.split_names) == ["test", "train", "trainval", "val"]
    assert len(cache.split("trainval")) == len(cache.split("train")) + len(cache.split("val"))
    rows = _rows_by_id(cache)
    for shape_id, table in shapes.items():
        r = rows[shape_id]
        pts, labels = cache.array("points")[r], cache.array("part_label")[r]
        # the stored points are the file's at the seeded indices, normalised; labels and normals at the same
        idx = np.random.default_rng(zlib.crc32(shape_id.encode())).choice(
            len(table), 2048, replace=len(table) < 2048)
        np.testing.assert_allclose(pts, normalize_unit_sphere(table[idx, :3]), atol=1e-5)
        np.testing.assert_array_equal(labels, table[idx, 6].astype(np.uint8))
        np.testing.assert_allclose(cache.array("normals")[r], table[idx, 3:6], atol=1e-5)
    from cache_schema.validate import validate

    assert validate(url) == []


def test_shapenetpart_bad_lines_and_labels_name_file_and_line(tmp_path):
    root = str(tmp_path / "sp")
    shapes = _shapenetpart(root, per_split=1)
    mug = next(k for k in shapes if k.startswith("03797390/train"))
    path = os.path.join(root, f"{mug}.txt")
    lines = open(path).read().splitlines()
    lines[9] = lines[9].rsplit(" ", 1)[0] + " 3"  # an airplane part on a mug
    open(path, "w").write("\n".join(lines) + "\n")
    plane = next(k for k in shapes if k.startswith("02691156/test"))
    with open(os.path.join(root, f"{plane}.txt"), "a") as f:
        f.write("0.1 0.2\n")
    url = str(tmp_path / "c.zarr")
    build_points(url, PointBuildConfig("shapenetpart", root), progress=False)
    cache = open_cache(url)
    reasons = {str(i): str(r) for i, r, s in zip(cache.array("ids")[:], cache.array("status_reason")[:],
                                                 cache.status) if s == FAILED}
    assert reasons[mug].startswith("part outside its class: ") and "line 10: part 3 is not one of Mug's" in \
        reasons[mug]
    assert reasons[plane].startswith("unparsable line: ") and "2 values, expected 7" in reasons[plane]
    with open(os.path.join(root, "train_test_split", "shuffled_val_file_list.json"), "w") as f:
        json.dump(["shape_data/99999999/x"], f)
    with pytest.raises(PointDataError, match="shuffled_val_file_list.json entry 0"):
        build_points(str(tmp_path / "d.zarr"), PointBuildConfig("shapenetpart", root), progress=False)
