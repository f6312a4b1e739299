"""`cache validate` finds each kind of damage and says where; a good store passes."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import zarr

from cache_schema.cli import main as cache_main
from cache_schema.example import example_objects, write_blocks
from cache_schema.validate import validate
from cache_schema.writer import CacheWriter


def _problems(url):
    return [str(p) for p in validate(url)]


def test_finished_stores_are_valid(objects_cache, scenes_cache, capsys):
    for url, _ in (objects_cache, scenes_cache):
        assert validate(url) == []
        assert cache_main(["validate", url]) == 0
    assert "valid" in capsys.readouterr().out


def test_truncated_chunk_file(objects_cache, capsys):
    url, _ = objects_cache
    path = os.path.join(url, "points", "c", "1", "0", "0")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    problems = _problems(url)
    assert any(p.startswith("points: rows 8:16 do not decode") for p in problems), problems
    assert cache_main(["validate", url]) == 1
    assert "points: rows 8:16 do not decode" in capsys.readouterr().out


def test_corrupted_chunk_bytes_fail_the_checksum(objects_cache):
    url, _ = objects_cache
    path = os.path.join(url, "teachers", "clip-tiny", "image", "c", "0", "0", "0")
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    assert any(p.startswith("teachers/clip-tiny/image: rows 0:8 do not decode") for p in _problems(url))


def test_deleted_chunk_file(objects_cache):
    url, _ = objects_cache
    os.remove(os.path.join(url, "label", "c", "2"))
    assert "label: 1 of 3 chunk files are missing (never written?)" in _problems(url)


def test_nan_in_a_teacher_array(objects_cache):
    url, _ = objects_cache
    arr = zarr.open_array(os.path.join(url, "teachers", "dinov2-tiny", "image"), mode="r+")
    arr[3, 1, :2] = np.nan
    problems = _problems(url)
    assert "teachers/dinov2-tiny/image: 2 non-finite values (NaN or Inf)" in problems
    # the recomputed row digests name the changed row (the recorded fingerprint would not match either)
    assert "teachers/dinov2-tiny/image: 1 rows differ from what the build wrote, e.g. rows [3]" in problems


def test_non_monotonic_offsets(scenes_cache):
    url, _ = scenes_cache
    arr = zarr.open_array(os.path.join(url, "frames", "offsets"), mode="r+")
    off = arr[:]
    off[4] = off[5] + 1
    arr[:] = off
    assert "frames/offsets: not monotonic: decreases after frame 4" in _problems(url)


def test_offsets_not_matching_values(scenes_cache):
    url, _ = scenes_cache
    arr = zarr.open_array(os.path.join(url, "pairs", "offsets"), mode="r+")
    arr[-1] = arr[-1] + 5
    assert any(p.startswith("pairs/point: has") and "pairs/offsets ends at" in p for p in _problems(url))


def test_missing_array(scenes_cache):
    url, _ = scenes_cache
    shutil.rmtree(os.path.join(url, "pairs", "uv"))
    assert "pairs/uv: missing" in _problems(url)


def test_rows_left_unfinished(tmp_path, capsys):
    attrs, layout, data = example_objects()
    url = str(tmp_path / "c.zarr")
    with CacheWriter.create(url, attrs, layout, max_block_rows=8) as w:
        write_blocks(w, data, blocks=[0, 2])
    problems = _problems(url)
    assert "status: 8 rows are unfinished (pending), e.g. rows [8, 9, 10, 11, 12]" in problems
    assert any("not 'finalized'" in p for p in problems)
    assert cache_main(["validate", url, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is False and any(p["where"] == "status" for p in out["problems"])


def test_lock_left_by_a_running_or_dead_build_is_reported(tmp_path):
    attrs, layout, data = example_objects()
    url = str(tmp_path / "c.zarr")
    with CacheWriter.create(url, attrs, layout):
        assert any("a writer lock is present" in p for p in _problems(url))


def test_a_pair_pointing_outside_its_frame_is_found_block_by_block(scenes_cache):
    url, _ = scenes_cache
    offsets = zarr.open_array(os.path.join(url, "frames", "offsets"), mode="r")[:]
    pair_off = zarr.open_array(os.path.join(url, "pairs", "offsets"), mode="r")[:]
    point = zarr.open_array(os.path.join(url, "pairs", "point"), mode="r+")
    frame = len(pair_off) - 2  # the last frame: its block is not the first
    point[int(pair_off[frame])] = int(offsets[frame + 1] - offsets[frame])  # one past its frame's points
    problems = _problems(url)
    assert "pairs/point: 1 pairs index a point outside their frame" in problems
    assert f"pairs/point: 1 rows differ from what the build wrote, e.g. rows [{frame}]" in problems


def test_a_changed_ragged_value_names_its_frame(scenes_cache):
    url, _ = scenes_cache
    pair_off = zarr.open_array(os.path.join(url, "pairs", "offsets"), mode="r")[:]
    uv = zarr.open_array(os.path.join(url, "pairs", "uv"), mode="r+")
    uv[int(pair_off[2]) + 1, 0] += 0.5  # the second pair of frame 2
    assert _problems(url) == ["pairs/uv: 1 rows differ from what the build wrote, e.g. rows [2]"]


def test_fingerprint_does_not_depend_on_the_block_size(tmp_path):
    from conftest import build

    a, _ = build(str(tmp_path / "a.zarr"), "scenes", max_block_rows=2)
    b, _ = build(str(tmp_path / "b.zarr"), "scenes", max_block_rows=8)
    assert a == b and validate(str(tmp_path / "a.zarr")) == [] and validate(str(tmp_path / "b.zarr")) == []


def test_caches_finalized_before_row_digests_still_validate(objects_cache):
    from cache_schema.fingerprint import legacy_fingerprint

    url, _ = objects_cache
    shutil.rmtree(os.path.join(url, "_digests"))
    group = zarr.open_group(url, mode="r+")
    group.attrs["build"] = {**group.attrs["build"], "fingerprint": legacy_fingerprint(group)}
    assert validate(url) == []
    zarr.open_array(os.path.join(url, "label"), mode="r+")[0] += 1
    assert any("content fingerprint" in p and "differs from the recorded" in p for p in _problems(url))


def test_validate_on_a_dask_cluster_finds_the_same_problems(scenes_cache):
    from dask.distributed import LocalCluster

    url, _ = scenes_cache
    uv = zarr.open_array(os.path.join(url, "pairs", "uv"), mode="r+")
    uv[5, 1] = 1e6
    local = _problems(url)
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None, processes=True) as cluster:
        remote = [str(p) for p in validate(url, scheduler=cluster.scheduler_address)]
    assert local == remote and len(local) == 1 and "rows differ" in local[0]
    assert cache_main(["validate", url, "--workers", "1"]) == 1
