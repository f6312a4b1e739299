"""Both kinds written and read back unchanged, through a local path and memory://."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import build

from cache_schema import DONE, FAILED, ObjectCache, SceneCache, open_cache


def test_objects_round_trip(any_url):
    fingerprint, data = build(any_url, "objects", max_block_rows=8)
    cache = open_cache(any_url)
    assert isinstance(cache, ObjectCache)
    assert cache.fingerprint == fingerprint and fingerprint.startswith("sha256:")
    rows = data["rows"]
    np.testing.assert_array_equal(cache.ids, rows["ids"])
    np.testing.assert_array_equal(cache.labels, rows["label"])
    np.testing.assert_allclose(cache.points(), rows["points"].astype(np.float16), rtol=0)
    np.testing.assert_array_equal(cache.captions(), rows["captions"])
    np.testing.assert_allclose(cache.teacher("clip-tiny", "image"),
                               rows["teachers/clip-tiny/image"].astype(np.float16), rtol=0)
    np.testing.assert_allclose(cache.teacher_array("clip-tiny", "class_text")[:],
                               data["fixed"]["teachers/clip-tiny/class_text"].astype(np.float16))
    for name, idx in data["splits"].items():
        np.testing.assert_array_equal(cache.split(name), idx)
    assert cache.failures() == {"shape_0005": "mesh has no faces"}
    assert cache.status[5] == FAILED and (np.delete(cache.status, 5) == DONE).all()
    assert cache.label_names == ("chair", "table", "lamp")
    assert cache.teachers["clip-tiny"].pretrained is False


def test_fancy_row_selection_keeps_caller_order(objects_cache):
    url, data = objects_cache
    cache = open_cache(url)
    rows = [7, 2, 19, 2]
    np.testing.assert_array_equal(cache.captions(rows), data["rows"]["captions"][rows])
    np.testing.assert_allclose(cache.points(np.array(rows)), data["rows"]["points"][rows].astype(np.float16))


def test_scenes_round_trip_ragged(any_url):
    fingerprint, data = build(any_url, "scenes", max_block_rows=4)
    cache = open_cache(any_url)
    assert isinstance(cache, SceneCache)
    assert cache.num_frames == 10
    ragged = data["ragged"]
    counts = [len(p) for p in ragged["points"]]
    np.testing.assert_array_equal(cache.offsets("points"), np.concatenate([[0], np.cumsum(counts)]))
    for i in range(cache.num_frames):
        f = cache.frame(i)
        assert f.id == f"frame_{i:04d}"
        np.testing.assert_allclose(f.points, ragged["points"][i].astype(np.float32))
        np.testing.assert_array_equal(f.labels, ragged["labels"][i])
        np.testing.assert_array_equal(f.pair_point, ragged["pairs/point"][i])
        np.testing.assert_array_equal(f.pair_camera, ragged["pairs/camera"][i])
        np.testing.assert_allclose(f.pair_uv, ragged["pairs/uv"][i].astype(np.float32))
        np.testing.assert_allclose(f.pair_features["dinov2-tiny"],
                                   ragged["teachers/dinov2-tiny/pair_features"][i].astype(np.float16))
        np.testing.assert_allclose(f.K, data["rows"]["cameras/K"][i])


def test_unicode_strings_are_utf8_not_pickled(tmp_path):
    from cache_schema.example import example_objects, finish, write_blocks
    from cache_schema.writer import CacheWriter

    attrs, layout, data = example_objects()
    data["rows"]["captions"][0, 0] = "ein Stuhl – 椅子 🪑"
    url = str(tmp_path / "u.zarr")
    with CacheWriter.create(url, attrs, layout) as w:
        write_blocks(w, data)
        finish(w, data)
    assert open_cache(url).captions(0)[0] == "ein Stuhl – 椅子 🪑"
    meta = zarr.open_array(f"{url}/captions", mode="r").metadata.to_dict()
    assert meta["data_type"] == "string"
    assert [c["name"] for c in meta["codecs"]][0] == "vlen-utf8"


def test_plain_zarr_client_reads_a_project_store(objects_cache, scenes_cache):
    """No project code: a stock zarr client sees the documented arrays and attributes."""
    url, data = objects_cache
    g = zarr.open_group(url, mode="r")
    assert g.attrs["schema"] == "teacher-cache" and g.attrs["kind"] == "objects"
    np.testing.assert_array_equal(g["ids"][:], data["rows"]["ids"])
    assert g["points"].shape == data["rows"]["points"].shape
    np.testing.assert_array_equal(g["split/train"][:], data["splits"]["train"])
    url, data = scenes_cache
    g = zarr.open_group(url, mode="r")
    off = g["frames/offsets"][:]
    np.testing.assert_allclose(g["points"][off[3]:off[4]], data["ragged"]["points"][3].astype(np.float32))


def test_unfinished_store_is_refused_by_default(tmp_path):
    from cache_schema import IncompleteCacheError
    from cache_schema.example import example_objects, write_blocks
    from cache_schema.writer import CacheWriter

    attrs, layout, data = example_objects()
    url = str(tmp_path / "c.zarr")
    with CacheWriter.create(url, attrs, layout, max_block_rows=8) as w:
        write_blocks(w, data, blocks=[0])
    with pytest.raises(IncompleteCacheError, match="not finalized"):
        open_cache(url)
    assert open_cache(url, allow_incomplete=True).num_rows == 24


def test_missing_store_is_a_clear_error(tmp_path):
    from cache_schema import NotACacheError

    with pytest.raises(NotACacheError, match="no cache at"):
        open_cache(str(tmp_path / "nothing.zarr"))


def test_consolidation_reads_only_the_staged_blocks_each_output_chunk_overlaps():
    """Linear in frames: each output chunk visits the blocks it overlaps, not every block."""
    from cache_schema.writer import _gather

    class Counted:
        def __init__(self, values):
            self.values, self.reads = values, 0

        def __getitem__(self, key):
            self.reads += 1
            return self.values[key]

    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 50, 2000)  # 2,000 staged blocks, some empty
    whole = np.arange(int(sizes.sum()))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    parts = [Counted(whole[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    step = 1000
    out = np.concatenate([_gather(parts, starts, c0, min(c0 + step, len(whole))) for c0 in range(0, len(whole), step)])
    np.testing.assert_array_equal(out, whole)
    reads = sum(p.reads for p in parts)
    assert reads <= len(parts) + len(whole) // step + 1  # each block once, plus one split per chunk edge
