"""The rooms cache builder end to end: a small S3DIS release with the real one's flaws (a stray character,
stairs) and worse (an empty file, a line without numbers, a room without annotations), resume, the command, and
the built-in demo rooms."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from room_fixtures import BAD_LINE, EMPTY, NO_ANNOTATIONS, STRAY, STRAY_Z, write_s3dis
from typer.testing import CliRunner

from cache_schema import DONE, FAILED, open_cache
from cache_schema.validate import validate
from preprocess.build_common import RunOptions
from preprocess.build_rooms import RoomBuildConfig, build_rooms
from preprocess.cli import app
from preprocess.errors import BadInput
from preprocess.room_sources import BOX_CLASSES, S3DIS_CLASSES, list_room_source
from preprocess.room_sources.s3dis import read_class_file

RUN = RunOptions(progress=False, block_rows=4)
FAILED_ROOMS = {BAD_LINE[0], EMPTY[0], NO_ANNOTATIONS}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3dis") / "Stanford3dDataset_v1.2_Aligned_Version"
    return str(root), write_s3dis(str(root))


@pytest.fixture(scope="module")
def built(release, tmp_path_factory):
    root, expected = release
    url = str(tmp_path_factory.mktemp("rooms") / "s3dis.zarr")
    return url, build_rooms(url, RoomBuildConfig("s3dis", root), RUN)


def row_of(cache) -> dict[str, int]:
    return {str(i): r for r, i in enumerate(cache.array("rooms/ids")[:])}


def class_of(stem: str) -> str:
    name = stem.rsplit("_", 1)[0]
    return name if name in S3DIS_CLASSES else "clutter"


def test_every_room_holds_its_files_points_classes_instances_and_boxes(release, built):
    root, expected = release
    url, summary = built
    cache = open_cache(url)
    assert validate(url) == []
    assert (summary.done, sum(summary.failed.values()), summary.rows) == (6, 3, 9)
    rows = row_of(cache)
    assert list(rows) != sorted(rows)  # written in a seeded random order, not area by area
    assert cache.label_names == S3DIS_CLASSES and cache.box_classes == BOX_CLASSES
    for room, files in expected.items():
        if room in FAILED_ROOMS:
            continue
        r = rows[room]
        stored = cache.room(r)
        assert cache.status[r] == DONE
        values = np.concatenate([v for _, v in files])
        np.testing.assert_array_equal(stored.points, values[:, :3].astype(np.float32))
        np.testing.assert_array_equal(stored.colors, values[:, 3:].astype(np.uint8))
        counts = np.bincount(stored.labels, minlength=13)
        for c, name in enumerate(S3DIS_CLASSES):  # points per class: the lines of that class's files
            assert counts[c] == sum(len(v) for stem, v in files if class_of(stem) == name), (room, name)
        # one instance per file, in name order; a box per file of a box class: the bounds of its points
        assert np.array_equal(stored.instances, np.repeat(np.arange(len(files)), [len(v) for _, v in files]))
        boxed = [(stem, v[:, :3].astype(np.float32)) for stem, v in files if class_of(stem) in BOX_CLASSES]
        assert stored.box_labels.tolist() == [BOX_CLASSES.index(class_of(s)) for s, _ in boxed]
        for box, (_, pts) in zip(stored.boxes, boxed):
            lo, hi = pts.min(0).astype(np.float64), pts.max(0).astype(np.float64)
            np.testing.assert_allclose(box, np.r_[(lo + hi) / 2, hi - lo], atol=1e-5)
    assert int(cache.room_sizes().sum()) == sum(len(v) for room, files in expected.items()
                                               if room not in FAILED_ROOMS for _, v in files)


def test_the_stray_character_is_repaired_with_a_note_and_stairs_become_clutter(release, built):
    root, expected = release
    url, summary = built
    cache = open_cache(url)
    rows, reasons = row_of(cache), cache.array("rooms/status_reason")[:]
    room, stem, line = STRAY
    stray = cache.room(rows[room])
    first = sum(len(v) for s, v in expected[room] if s < stem)
    assert stray.points[first + line - 1, 2] == np.float32(103.0)  # 103.0\x100000 read as 103.00000
    note = f"stray character(s) removed: {room}/Annotations/{stem}.txt:{line} ("
    assert reasons[rows[room]].startswith(note) and repr(STRAY_Z)[1:-1] in reasons[rows[room]]
    stairs = "stairs mapped to clutter: Area_1/conferenceRoom_1/Annotations/stairs_1.txt"
    assert reasons[rows["Area_1/conferenceRoom_1"]] == stairs
    assert cache.attrs.dataset["notes"] == [stairs]  # known from the listing: the cache's own notes
    assert summary.notes[0] == stairs and summary.notes[1].startswith(note) and len(summary.notes) == 2
    assert summary.noted == {"stairs mapped to clutter": 1, "stray character(s) removed": 1}
    assert "done with a note x1: stray character(s) removed" in str(summary)


def test_broken_rooms_fail_with_one_line_naming_the_file(release, built):
    root, _ = release
    url, _ = built
    cache = open_cache(url)
    rows, reasons = row_of(cache), cache.array("rooms/status_reason")[:]
    why = {room: str(reasons[rows[room]]) for room in FAILED_ROOMS}
    assert all(cache.status[rows[room]] == FAILED and "\n" not in why[room] for room in FAILED_ROOMS)
    assert why[NO_ANNOTATIONS] == f"missing Annotations folder: {root}/{NO_ANNOTATIONS}/Annotations"
    assert why[EMPTY[0]] == f"empty class file: {root}/{EMPTY[0]}/Annotations/{EMPTY[1]}.txt"
    room, stem, line, text = BAD_LINE
    assert why[room] == f"bad line: {root}/{room}/Annotations/{stem}.txt:{line}: {text!r}"
    assert all(len(cache.room(rows[room]).points) == 0 for room in FAILED_ROOMS)


def test_splits_are_the_test_area_the_rest_and_every_area(release, built):
    url, _ = built
    cache = open_cache(url)
    ids = [str(i) for i in cache.array("rooms/ids")[:]]
    named = {s: sorted(ids[r] for r in cache.split(s)) for s in cache.split_names}
    assert set(named) == {"train", "test", "area_1", "area_2", "area_5"}
    assert named["test"] == named["area_5"] == ["Area_5/hallway_6", "Area_5/office_1", "Area_5/office_2"]
    assert named["train"] == sorted(named["area_1"] + named["area_2"]) and len(named["train"]) == 6
    assert cache.attrs.config["test_area"] == 5 and cache.attrs.config["rooms"] is None
    first = list_room_source("s3dis", release[0]).limited(1)  # a quick run keeps every area, so every split
    assert [it.id for it in first.items] == ["Area_1/conferenceRoom_1", "Area_2/office_1", "Area_5/hallway_6"]
    assert first.notes == ("stairs mapped to clutter: Area_1/conferenceRoom_1/Annotations/stairs_1.txt",)
    area_5 = dataclasses.replace(first, items=tuple(it for it in first.items if it.area == 5))
    assert area_5.limited(1).notes == ()  # a note on a room left out goes with it


def test_a_rerun_confirms_and_an_interrupted_build_resumes_to_the_same_cache(release, built, tmp_path,
                                                                            monkeypatch):
    root, _ = release
    url, summary = built
    again = build_rooms(url, RoomBuildConfig("s3dis", root), RUN)
    assert again.already_complete and again.fingerprint == summary.fingerprint
    assert "already complete" in str(again)

    import preprocess.build_rooms as builder

    class Killed(BaseException):
        """Stands for SIGKILL: nothing of the build catches it."""

    loaded = []
    real = builder.load_room

    def dies_at_the_sixth_room(item):
        loaded.append(item.id)
        if len(loaded) == 6:
            raise Killed
        return real(item)

    killed = str(tmp_path / "killed.zarr")
    monkeypatch.setattr(builder, "load_room", dies_at_the_sixth_room)
    with pytest.raises(Killed):
        build_rooms(killed, RoomBuildConfig("s3dis", root), RUN)
    monkeypatch.setattr(builder, "load_room", real)
    status = open_cache(killed, allow_incomplete=True).status
    assert (status[:4] != 0).all() and (status[4:] == 0).all()  # the first block of 4 rooms was written
    resumed = build_rooms(killed, RoomBuildConfig("s3dis", root), RUN)
    assert resumed.fingerprint == summary.fingerprint and resumed.done == 6
    assert validate(killed) == []


def test_a_root_that_is_not_the_release_is_one_line(release, tmp_path):
    root, _ = release
    with pytest.raises(ValueError, match=r"^\S+ is not the S3DIS release \(Stanford3dDataset_v1.2_Aligned_Version\): "
                                         r"no Area_N folders$"):
        list_room_source("s3dis", str(tmp_path))
    parent = root.rsplit("/", 1)[0]
    with pytest.raises(ValueError, match=f"did you mean {root}"):
        list_room_source("s3dis", parent)
    with pytest.raises(ValueError, match="--test-area 4: .* has no Area_4 .it has Area_1, Area_2, Area_5."):
        list_room_source("s3dis", root, test_area=4)
    result = CliRunner().invoke(app, ["rooms", "s3dis", "--root", str(tmp_path), "--out", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2 and "is not the S3DIS release" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "x.zarr").exists()


def test_the_command_builds_the_release_with_another_test_area(release, tmp_path):
    root, _ = release
    url = str(tmp_path / "s3dis.zarr")
    result = CliRunner().invoke(app, ["rooms", "s3dis", "--root", root, "--out", url, "--test-area", "2",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "6 done, 3 failed of 9 rooms" in result.output and "note: stairs mapped to clutter" in result.output
    assert "failed x1: bad line" in result.output and "failed x1: missing Annotations folder" in result.output
    cache = open_cache(url)
    ids = [str(i) for i in cache.array("rooms/ids")[:]]
    assert sorted(ids[r] for r in cache.split("test")) == ["Area_2/office_1", "Area_2/office_2", "Area_2/storage_1"]
    assert validate(url) == []
    again = CliRunner().invoke(app, ["rooms", "s3dis", "--root", root, "--out", url, "--test-area", "2"])
    assert again.exit_code == 0 and "already complete" in again.output


def test_class_files_are_read_exactly_or_refused_naming_file_and_line(tmp_path):
    def write(name: str, data: bytes) -> str:
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    notes: list[str] = []
    good = write("a_1.txt", b"1 2 3 4 5 6\n\n 7.5 -8 9e-1 10 11 12 \r\n")
    np.testing.assert_array_equal(read_class_file(good, str(tmp_path), "a_1.txt", notes),
                                  [[1, 2, 3, 4, 5, 6], [7.5, -8, 0.9, 10, 11, 12]])
    latin = write("b_1.txt", b"1 2 3 4 5 6\n1 2\xff 3 4 5 6\n")  # not UTF-8 either: repaired all the same
    np.testing.assert_array_equal(read_class_file(latin, str(tmp_path), "b_1.txt", notes)[1], [1, 2, 3, 4, 5, 6])
    assert notes == ["stray character(s) removed: b_1.txt:2 ('1 2\\xff 3 4 5 6')"]
    many = write("g_1.txt", b"\x10\n" + b"1 2 3 4 5 6\x07\n" * 12)  # a line of nothing but a stray character
    notes.clear()
    assert len(read_class_file(many, str(tmp_path), "g_1.txt", notes)) == 12
    assert notes[0] == "stray character(s) removed: g_1.txt:1 ('\\x10')" and len(notes) == 11
    assert notes[-1] == "stray character(s) removed: g_1.txt: 3 more lines"
    for i, (line, why) in enumerate([(b"1 2 3 4 5", "five numbers"), (b"1 2 3 4 5 6 7", "seven"),
                                     (b"1 2 3 4 5 nan", "not a number"), (b"1 2 1e400 4 5 6", "infinite"),
                                     (b"1,5 2 3 4 5 6", "a comma is not removed: it would join numbers"),
                                     (b"1 2 3 4 5\x0c6", "a control character between numbers")]):
        path = write(f"c_{i}.txt", b"1 2 3 4 5 6\n" + line + b"\n")
        with pytest.raises(BadInput, match=f"^bad line: {path}:2: "):
            read_class_file(path, str(tmp_path), f"c_{i}.txt", [])
    colour = write("d_1.txt", b"1 2 3 4 5 256\n")
    with pytest.raises(BadInput, match=f"^bad colour: {colour}: point 1 has r g b"):
        read_class_file(colour, str(tmp_path), "d_1.txt", [])
    (tmp_path / "e_1.txt").mkdir()
    with pytest.raises(BadInput, match=f"^unreadable class file: {tmp_path}/e_1.txt "):
        read_class_file(str(tmp_path / "e_1.txt"), str(tmp_path), "e_1.txt", [])
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_bytes(b"1 2 3 4 5 6\n")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "f_1.txt").symlink_to(outside)
    with pytest.raises(BadInput, match="^outside dataset root: "):
        read_class_file(str(tmp_path / "root" / "f_1.txt"), str(tmp_path / "root"), "f_1.txt", [])


# ---------------------------------------------------------------- demo rooms


def test_demo_rooms_hold_every_class_boxes_around_their_instances_and_build_the_same_twice(tmp_path):
    cfg = RoomBuildConfig("demo-rooms", rooms=6, room_points=20000, areas=3)
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    first = build_rooms(a, cfg, RUN)
    assert first.done == 6 and first.seconds < 20
    assert build_rooms(b, cfg, RUN).fingerprint == first.fingerprint  # every room from (seed, index) alone
    cache = open_cache(a)
    assert validate(a) == []
    assert cache.room_sizes().tolist() == [20000] * 6
    seen = set()
    for r in range(cache.num_rooms):
        room = cache.room(r)
        seen |= set(room.labels.tolist())
        boxed = [i for i in np.unique(room.instances) if S3DIS_CLASSES[room.labels[room.instances == i][0]]
                 in BOX_CLASSES]
        assert len(room.boxes) == len(boxed) >= 10  # beam, column, door, window, board, ..., chairs, clutter
        for box, label, inst in zip(room.boxes, room.box_labels, boxed):
            pts = room.points[room.instances == inst]
            assert set(room.labels[room.instances == inst].tolist()) == {S3DIS_CLASSES.index(BOX_CLASSES[label])}
            assert (np.abs(pts - box[:3]) <= box[3:] / 2 + 1e-5).all()
        counts = np.bincount(room.labels, minlength=13)
        assert (counts[:3] > 0).all() and counts[S3DIS_CLASSES.index("chair")] > 0
    assert seen == set(range(13))
    ids = [str(i) for i in cache.array("rooms/ids")[:]]
    assert sorted(ids) == ["Area_1/room_1", "Area_1/room_2", "Area_2/room_1", "Area_2/room_2", "Area_3/room_1",
                           "Area_3/room_2"]
    assert sorted(ids[r] for r in cache.split("test")) == ["Area_3/room_1", "Area_3/room_2"]  # the last area
