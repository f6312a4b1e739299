"""Workers in separate processes fill disjoint blocks; a killed build resumes where it stopped."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr
from conftest import build

from cache_schema import BlockWriter, CacheWriter, IncompleteCacheError, LayoutMismatchError
from cache_schema.example import example_objects, example_scenes, finish, write_blocks
from cache_schema.fingerprint import array_paths


def _worker(url: str, token: str, kind: str, blocks: list[int]) -> None:
    data = (example_objects() if kind == "objects" else example_scenes())[2]
    write_blocks(BlockWriter.attach(url, token), data, blocks=blocks)


def _assert_same_arrays(url_a: str, url_b: str) -> None:
    a, b = zarr.open_group(url_a, mode="r"), zarr.open_group(url_b, mode="r")
    paths = array_paths(a)
    assert paths == array_paths(b)
    for p in paths:
        assert a[p].chunks == b[p].chunks, p
        np.testing.assert_array_equal(a[p][...], b[p][...], err_msg=p)


@pytest.mark.parametrize("kind,block_rows", [("objects", 8), ("scenes", 2)])
def test_two_processes_give_the_same_store_as_one(tmp_path, kind, block_rows):
    single = str(tmp_path / "single.zarr")
    fp_single, _ = build(single, kind, max_block_rows=block_rows)

    parallel = str(tmp_path / "parallel.zarr")
    attrs, layout, data = example_objects() if kind == "objects" else example_scenes()
    with CacheWriter.create(parallel, attrs, layout, max_block_rows=block_rows) as w:
        blocks = w.pending_blocks()
        assert len(blocks) >= 3
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(parallel, w.token, kind, blocks[i::2])) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
        assert w.pending_blocks() == []
        fp_parallel = finish(w, data)
    assert fp_parallel == fp_single
    _assert_same_arrays(single, parallel)


KILLED_BUILD = textwrap.dedent("""
    import os, sys
    from cache_schema.example import example_objects, write_blocks
    from cache_schema.writer import CacheWriter
    attrs, layout, data = example_objects()
    w = CacheWriter.create(sys.argv[1], attrs, layout, max_block_rows=8)
    write_blocks(w, data, blocks=[0])
    os._exit(9)  # killed: no finalize, lock left behind
""")


def test_killed_build_resumes_and_keeps_finished_blocks(tmp_path):
    url = str(tmp_path / "c.zarr")
    run = subprocess.run([sys.executable, "-c", KILLED_BUILD, url], cwd=os.getcwd())
    assert run.returncode == 9
    chunk0 = os.path.join(url, "points", "c", "0", "0", "0")
    mtime = os.stat(chunk0).st_mtime_ns

    attrs, layout, data = example_objects()
    with pytest.warns(UserWarning, match="stale writer lock"):
        w = CacheWriter.create(url, attrs, layout, max_block_rows=8)
    with w:
        assert w.pending_blocks() == [1, 2]
        write_blocks(w, data)
        fp = finish(w, data)
    assert os.stat(chunk0).st_mtime_ns == mtime, "a finished block was written again"
    fp_clean, _ = build(str(tmp_path / "clean.zarr"), "objects", max_block_rows=8)
    assert fp == fp_clean


def test_resume_with_different_settings_is_refused(objects_cache):
    url, _ = objects_cache
    attrs, layout, _ = example_objects(num_points=32)
    with pytest.raises(LayoutMismatchError, match="different settings.*config.num_points.*layout"):
        CacheWriter.create(url, attrs, layout, max_block_rows=8)
    with CacheWriter.create(url, attrs, layout, max_block_rows=8, overwrite=True) as w:
        assert w.pending_blocks() == [0, 1, 2]


def test_rerunning_a_finished_build_writes_nothing_and_keeps_the_fingerprint(objects_cache):
    url, data = objects_cache
    before = zarr.open_group(url, mode="r").attrs["build"]["fingerprint"]
    attrs, layout, _ = example_objects()
    with CacheWriter.create(url, attrs, layout, max_block_rows=8) as w:
        assert w.pending_blocks() == [] and w.is_finalized
        assert w.finalize() == before
        with pytest.raises(IncompleteCacheError, match="is finalized"):
            w.write_split("extra", [0, 1])


def test_finalize_refuses_pending_rows(tmp_path):
    from cache_schema import IncompleteCacheError

    attrs, layout, data = example_objects()
    with CacheWriter.create(str(tmp_path / "c.zarr"), attrs, layout, max_block_rows=8) as w:
        write_blocks(w, data, blocks=[0, 2])
        with pytest.raises(IncompleteCacheError, match="8 rows are still pending \\(blocks \\[1\\]\\)"):
            w.finalize()


def test_block_writes_are_checked(tmp_path):
    attrs, layout, data = example_objects()
    with CacheWriter.create(str(tmp_path / "c.zarr"), attrs, layout, max_block_rows=8) as w:
        rows = {k: v[:8] for k, v in data["rows"].items()}
        ok = np.ones(8, np.uint8)
        with pytest.raises(LayoutMismatchError, match=r"missing arrays \['points'\]"):
            w.write_block(0, {k: v for k, v in rows.items() if k != "points"}, ok)
        with pytest.raises(LayoutMismatchError, match="points has shape"):
            w.write_block(0, {**rows, "points": rows["points"][:, :10]}, ok)
        with pytest.raises(LayoutMismatchError, match=r"failed rows \[3\] need a reason"):
            w.write_block(0, rows, np.where(np.arange(8) == 3, 2, 1))
        with pytest.raises(IndexError, match="block 7 is outside"):
            w.write_block(7, rows, ok)
        assert w.pending_blocks() == [0, 1, 2]
