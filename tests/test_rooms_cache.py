"""The rooms kind of the contract: ragged rooms and boxes read back exactly, and validate, info and show know it."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import build

from cache_schema import RoomCache, open_cache
from cache_schema.info import format_summary, summarize
from cache_schema.validate import validate


@pytest.fixture
def rooms(tmp_path):
    url = str(tmp_path / "rooms.zarr")
    _, data = build(url, "rooms", max_block_rows=2)
    return url, data


def test_every_room_reads_back_its_own_points_labels_instances_and_boxes(rooms):
    url, data = rooms
    cache = open_cache(url)
    assert isinstance(cache, RoomCache) and cache.num_rooms == 6 and validate(url) == []
    for r in range(cache.num_rooms):
        room = cache.room(r)
        assert room.id == data["rows"]["rooms/ids"][r]
        np.testing.assert_array_equal(room.points, data["ragged"]["points"][r].astype(np.float32))
        np.testing.assert_array_equal(room.labels, data["ragged"]["labels"][r])
        np.testing.assert_array_equal(room.instances, data["ragged"]["instances"][r])
        np.testing.assert_array_equal(room.colors, data["ragged"]["colors"][r])
        np.testing.assert_allclose(room.boxes, data["ragged"]["boxes/box"][r], rtol=1e-6)
        np.testing.assert_array_equal(room.box_labels, data["ragged"]["boxes/label"][r])
    np.testing.assert_array_equal(cache.room_sizes(), [len(p) for p in data["ragged"]["points"]])
    assert cache.box_classes == cache.label_names == ("floor", "wall", "chair")


@pytest.mark.parametrize("path, value, message", [
    ("labels", 7, "not a class index below 3 nor 255"),
    ("boxes/label", 5, "not a class index below 3 nor 255"),
    ("boxes/box", -1.0, "negative sizes"),
])
def test_validate_names_a_class_outside_the_names_and_a_negative_box(rooms, path, value, message):
    url, _ = rooms
    arr = zarr.open_group(url, mode="r+")[path]
    values = arr[:]
    values.reshape(len(values), -1)[0, -1] = value
    arr[:] = values
    assert any(p.where == path and message in p.what for p in validate(url))


def test_unlabelled_points_are_valid(rooms):
    url, _ = rooms
    arr = zarr.open_group(url, mode="r+")["labels"]
    values = arr[:]
    values[:5] = 255
    arr[:] = values
    assert not [p for p in validate(url) if "class index" in p.what]


def test_info_counts_points_and_boxes_and_show_draws_a_room(rooms, tmp_path):
    url, data = rooms
    s = summarize(url)
    assert s["num_points"] == sum(len(p) for p in data["ragged"]["points"])
    assert s["num_boxes"] == sum(len(b) for b in data["ragged"]["boxes/box"])
    assert f"{s['num_points']} points, {s['num_boxes']} boxes" in format_summary(s)
    pytest.importorskip("matplotlib")
    from cache_schema.show import show

    out = show(url, str(tmp_path / "room.png"), frame=2)
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
