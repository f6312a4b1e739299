"""ScanNet as votenet prepares it, end to end: a small ``scannet_train_detection_data`` with boxes of kept and
dropped ids, a misshapen, an unreadable, a listed-but-missing and an unlisted scene; splits, notes, the
command, and roots that are not the prepared folder."""

from __future__ import annotations

import os

import numpy as np
import pytest
from typer.testing import CliRunner

from cache_schema import DONE, FAILED, open_cache
from cache_schema.validate import validate
from preprocess.build_common import RunOptions
from preprocess.build_rooms import RoomBuildConfig, build_rooms
from preprocess.cli import app
from preprocess.errors import BadInput
from preprocess.room_sources import RoomItem, list_room_source
from preprocess.room_sources.scannet import BOX_CLASSES, BOX_IDS, DATA, NYU40_CLASSES, _load, load_room

RUN = RunOptions(progress=False, block_rows=4)
TRAIN = ["scene0000_00", "scene0001_00", "scene0002_00", "scene0003_00", "scene0004_00"]
VAL = ["scene0010_00", "scene0011_00", "scene0012_00"]
GOOD = ["scene0000_00", "scene0001_00", "scene0010_00", "scene0011_00"]
SHAPE = "scene0002_00"       # sem_label one point short
MISSING = "scene0003_00"     # listed, no files at all
GARBAGE = "scene0004_00"     # ins_label.npy is not a .npy
BAD_COLOUR = "scene0012_00"  # a colour of 300
UNLISTED = "scene0099_00"
# per good scene: (points, box ids in file order); 1 wall, 22 ceiling, 40 otherprop and 0 are not box classes
SCENES = {"scene0000_00": (3000, [3, 1, 5, 22, 39, 0, 5]), "scene0001_00": (2500, [24, 28, 33]),
          "scene0010_00": (4000, [40, 7, 40]), "scene0011_00": (1500, [])}
DROPPED = {"scene0000_00": {1: 1, 22: 1, 0: 1}, "scene0010_00": {40: 2}}


def _scene(rng: np.random.Generator, n: int, box_ids: list[int]) -> dict[str, np.ndarray]:
    """The four arrays of one scene with votenet's dtypes: float32 vertices, uint32 labels, float64 boxes."""
    xyz = rng.uniform([0, 0, 0], [6, 5, 3], (n, 3))
    rgb = rng.integers(0, 256, (n, 3))
    sem = rng.integers(0, 41, n).astype(np.uint32)
    sem[:50] = 0  # unannotated
    boxes = np.column_stack([rng.uniform(0, 5, (len(box_ids), 3)), rng.uniform(0.1, 2, (len(box_ids), 3)),
                             box_ids]) if box_ids else np.zeros((0, 7))
    return {"vert": np.column_stack([xyz, rgb]).astype(np.float32), "sem_label": sem,
            "ins_label": rng.integers(0, 12, n).astype(np.uint32), "bbox": boxes}


def write_scannet(root: str) -> dict[str, dict[str, np.ndarray]]:
    """The prepared folder under ``root``; returns scene -> its arrays for the scenes that load."""
    rng = np.random.default_rng(3)
    data, meta = os.path.join(root, DATA), os.path.join(root, "meta_data")
    os.makedirs(data)
    os.makedirs(meta)
    scenes = {s: _scene(rng, *SCENES[s]) for s in GOOD}
    broken = {s: _scene(rng, 2000, [3, 4]) for s in (SHAPE, GARBAGE, BAD_COLOUR, UNLISTED)}
    broken[SHAPE]["sem_label"] = broken[SHAPE]["sem_label"][:-1]
    broken[BAD_COLOUR]["vert"][17, 4] = 300.0
    for scene, arrays in {**scenes, **broken}.items():
        for name, value in arrays.items():
            np.save(os.path.join(data, f"{scene}_{name}.npy"), value)
    with open(os.path.join(data, f"{GARBAGE}_ins_label.npy"), "wb") as f:
        f.write(b"not a numpy file\n")
    with open(os.path.join(meta, "scannetv2_train.txt"), "w") as f:
        f.write("\n".join(TRAIN) + "\n\n")
    with open(os.path.join(meta, "scannetv2_val.txt"), "w") as f:
        f.write("\r\n".join(VAL) + "\r\n")  # CRLF as a Windows copy has it
    return scenes


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("scannet") / "scannet")
    return root, write_scannet(root)


@pytest.fixture(scope="module")
def built(prepared, tmp_path_factory):
    root, _ = prepared
    url = str(tmp_path_factory.mktemp("rooms") / "scannet.zarr")
    return url, build_rooms(url, RoomBuildConfig("scannet", root), RUN)


def rows_of(cache) -> dict[str, int]:
    return {str(i): r for r, i in enumerate(cache.array("rooms/ids")[:])}


def test_every_scene_holds_its_points_labels_instances_and_boxes_as_prepared(prepared, built):
    _, scenes = prepared
    url, summary = built
    assert validate(url) == []
    assert (summary.done, sum(summary.failed.values()), summary.rows) == (4, 4, 8)
    cache = open_cache(url)
    assert cache.label_names == NYU40_CLASSES and cache.box_classes == BOX_CLASSES
    assert len(NYU40_CLASSES) == 40 and NYU40_CLASSES[23] == "refridgerator" and len(BOX_IDS) == 18
    rows = rows_of(cache)
    for scene, arrays in scenes.items():
        r = rows[scene]
        room = cache.room(r)
        assert cache.status[r] == DONE
        np.testing.assert_array_equal(room.points, arrays["vert"][:, :3])
        np.testing.assert_array_equal(room.colors, arrays["vert"][:, 3:].astype(np.uint8))
        sem = arrays["sem_label"].astype(np.int64)
        np.testing.assert_array_equal(room.labels, np.where(sem == 0, 255, sem - 1))
        counts = np.bincount(room.labels, minlength=256)
        assert counts[255] == (sem == 0).sum() >= 50
        for c in range(40):  # points per class: those of NYU40 id c + 1
            assert counts[c] == (sem == c + 1).sum(), (scene, NYU40_CLASSES[c])
        ins = arrays["ins_label"].astype(np.int64)
        np.testing.assert_array_equal(room.instances, np.where(ins == 0, -1, ins))
        bbox = arrays["bbox"]
        kept = np.isin(bbox[:, 6], BOX_IDS)
        np.testing.assert_array_equal(room.boxes, bbox[kept, :6].astype(np.float32))  # read, not recomputed
        assert room.box_labels.tolist() == [BOX_IDS.index(int(i)) for i in bbox[kept, 6]]
        assert len(room.boxes) == len(SCENES[scene][1]) - sum(DROPPED.get(scene, {}).values())
    assert int(cache.room_sizes().sum()) == sum(n for n, _ in SCENES.values())
    assert cache.room(rows["scene0001_00"]).box_labels.tolist() == [12, 13, 14]  # refrigerator, showercurtrain, toilet


def test_dropped_boxes_are_noted_per_scene_and_counted_in_the_summary(built):
    url, summary = built
    cache = open_cache(url)
    rows, reasons = rows_of(cache), cache.array("rooms/status_reason")[:]
    assert reasons[rows["scene0000_00"]] == ("boxes dropped: scene0000_00_bbox.npy: 3 of NYU40 ids outside "
                                             "box_classes (0 unannotated x1, 1 wall x1, 22 ceiling x1)")
    assert reasons[rows["scene0010_00"]] == ("boxes dropped: scene0010_00_bbox.npy: 2 of NYU40 ids outside "
                                             "box_classes (40 otherprop x2)")
    assert reasons[rows["scene0001_00"]] == reasons[rows["scene0011_00"]] == ""
    total = ("boxes dropped in total: 5 in 2 rooms, of NYU40 ids outside box_classes (0 unannotated x1, 1 wall x1, "
             "22 ceiling x1, 40 otherprop x2)")
    assert summary.notes[-1] == total and summary.noted == {"boxes dropped": 2}
    assert f"note: {total}" in str(summary) and "done with a note x2: boxes dropped" in str(summary)


def test_broken_scenes_fail_with_one_line_naming_the_file(prepared, built):
    root, _ = prepared
    url, summary = built
    cache = open_cache(url)
    rows, reasons = rows_of(cache), cache.array("rooms/status_reason")[:]
    data = f"{root}/{DATA}"
    why = {s: str(reasons[rows[s]]) for s in (SHAPE, MISSING, GARBAGE, BAD_COLOUR)}
    assert all(cache.status[rows[s]] == FAILED and "\n" not in why[s] for s in why)
    assert all(len(cache.room(rows[s]).points) == 0 for s in why)
    assert why[MISSING] == f"missing scene file: {data}/{MISSING}_vert.npy"
    assert why[SHAPE] == (f"bad shape: {data}/{SHAPE}_sem_label.npy is (1999,), not (2000,): "
                          f"{SHAPE}_vert.npy has 2000 points")
    assert why[GARBAGE] == f"unreadable .npy: {data}/{GARBAGE}_ins_label.npy (no .npy header: starts b'not a ')"
    assert why[BAD_COLOUR] == (f"bad colour: {data}/{BAD_COLOUR}_vert.npy: point 18 has r g b "
                               f"{np.load(f'{data}/{BAD_COLOUR}_vert.npy')[17, 3:].tolist()}, not integers 0..255")
    assert set(summary.failed) == {"missing scene file", "bad shape", "unreadable .npy", "bad colour"}


@pytest.mark.parametrize("name, change, reason", [
    ("vert", lambda a: a[:, :5], r"bad shape: \S+_vert.npy is \(9, 5\), not \(N, 6\)"),
    ("ins_label", lambda a: a[:, None], r"bad shape: \S+_ins_label.npy is \(9, 1\), not \(9,\): s_vert.npy has 9 "),
    ("bbox", lambda a: a[:, :6], r"bad shape: \S+_bbox.npy is \(2, 6\), not \(K, 7\)"),
    ("vert", lambda a: np.where(np.arange(6) == 2, np.nan, a), r"non-finite coordinates: \S+_vert.npy: point 1 "),
    ("vert", lambda a: a + np.r_[0, 0, 0, 0.5, 0, 0], r"bad colour: \S+_vert.npy: point 1 has r g b"),
    ("sem_label", lambda a: np.full_like(a, 41), r"bad label: \S+_sem_label.npy: point 1 has 41, not a NYU40 id 0..40"),
    ("ins_label", lambda a: a.astype(np.int64) - 100, r"bad instance id: \S+_ins_label.npy: point 1 has -"),
    ("bbox", lambda a: a * np.r_[1, 1, 1, -1, 1, 1, 1], r"bad box: \S+_bbox.npy: row 1 is "),
    ("bbox", lambda a: a + np.r_[0, 0, 0, 0, 0, 0, 0.5], r"bad box: \S+_bbox.npy: row 1 has class 3.5, not an"),
    ("sem_label", lambda a: a.astype(str), r"not an array of numbers: \S+_sem_label.npy \(<U"),
    ("bbox", lambda a: a.astype(object), r"unreadable .npy: \S+_bbox.npy \(ValueError: Object arrays cannot"),
])
def test_a_scene_with_a_bad_array_fails_naming_the_file(tmp_path, name, change, reason):
    rng = np.random.default_rng(0)
    arrays = _scene(rng, 9, [3, 4])
    arrays["sem_label"][:] = rng.integers(1, 41, 9)
    arrays[name] = change(arrays[name])
    for k, v in arrays.items():
        np.save(tmp_path / f"s_{k}.npy", v)
    item = RoomItem("s", "train", None, {"dataset": "scannet", "root": str(tmp_path), "folder": str(tmp_path)})
    with pytest.raises(BadInput, match=f"^{reason}"):
        load_room(item)


def test_a_truncated_npy_is_unreadable_naming_the_file(tmp_path):
    np.save(tmp_path / "s_vert.npy", np.zeros((1000, 6), np.float32))
    whole = (tmp_path / "s_vert.npy").read_bytes()
    (tmp_path / "s_vert.npy").write_bytes(whole[:3000])  # a copy cut short
    with pytest.raises(BadInput, match=rf"^unreadable .npy: {tmp_path}/s_vert.npy \(ValueError: Failed to read"):
        _load(str(tmp_path / "s_vert.npy"), str(tmp_path))


def test_splits_are_the_lists_and_unlisted_scenes_are_not_built(prepared, built):
    root, _ = prepared
    url, _ = built
    cache = open_cache(url)
    ids = [str(i) for i in cache.array("rooms/ids")[:]]
    assert sorted(ids) == sorted(TRAIN + VAL) and ids != TRAIN + VAL  # a seeded random order, no unlisted scene
    assert set(cache.split_names) == {"train", "val"}  # no areas, no test split
    assert sorted(ids[r] for r in cache.split("train")) == TRAIN
    assert sorted(ids[r] for r in cache.split("val")) == VAL
    config = cache.attrs.config
    assert config["test_area"] is None and config["boxes"].startswith("as prepared in <scene>_bbox.npy")
    assert cache.attrs.dataset["notes"] == [f"in neither split list, not built: {UNLISTED} ({DATA})"]
    quick = list_room_source("scannet", root).limited(2)  # --max-rooms: the first N of every split
    assert [(it.id, it.split) for it in quick.items] == [(TRAIN[0], "train"), (TRAIN[1], "train"),
                                                         (VAL[0], "val"), (VAL[1], "val")]
    again = build_rooms(url, RoomBuildConfig("scannet", root), RUN)
    assert again.already_complete


def test_a_root_that_is_not_the_prepared_folder_is_one_line(prepared, tmp_path):
    root, _ = prepared
    with pytest.raises(ValueError, match=rf"^{tmp_path} is not a prepared ScanNet folder: no {DATA} in it \("):
        list_room_source("scannet", str(tmp_path))
    with pytest.raises(ValueError, match=f"--root is the folder holding {DATA} and meta_data: did you mean {root}"):
        list_room_source("scannet", os.path.join(root, DATA))
    with pytest.raises(ValueError, match=f"did you mean {root}"):  # votenet's checkout, one folder up
        list_room_source("scannet", os.path.dirname(root))
    with pytest.raises(ValueError, match="^--test-area 5: ScanNet has no areas"):
        list_room_source("scannet", root, test_area=5)
    (tmp_path / DATA).mkdir()
    (tmp_path / "meta_data").mkdir()
    (tmp_path / "meta_data" / "scannetv2_train.txt").write_text("scene0000_00\n")
    with pytest.raises(ValueError, match=rf"^missing split list: {tmp_path}/meta_data/scannetv2_val.txt \("):
        list_room_source("scannet", str(tmp_path))
    (tmp_path / "meta_data" / "scannetv2_val.txt").write_text("scene0000_00\n")
    with pytest.raises(ValueError, match=r"^scene0000_00 is in both \S+scannetv2_train.txt and scannetv2_val.txt"):
        list_room_source("scannet", str(tmp_path))
    out = tmp_path / "x.zarr"
    result = CliRunner().invoke(app, ["rooms", "scannet", "--root", os.path.join(root, DATA), "--out", str(out)])
    assert result.exit_code == 2 and f"did you mean {root}?" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_the_command_builds_the_prepared_folder(prepared, tmp_path):
    root, _ = prepared
    url = str(tmp_path / "scannet.zarr")
    args = ["rooms", "scannet", "--root", root, "--out", url, "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 done, 4 failed of 8 rooms" in result.output and "failed x1: missing scene file" in result.output
    assert "note: boxes dropped in total: 5 in 2 rooms" in result.output
    assert validate(url) == []
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "already complete" in again.output
    quick = CliRunner().invoke(app, ["rooms", "scannet", "--root", root, "--out", str(tmp_path / "q.zarr"),
                                     "--max-rooms", "1", "--no-progress"])
    assert quick.exit_code == 0 and "2 done, 0 failed of 2 rooms" in quick.output
