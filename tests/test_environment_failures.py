"""The machine's failures are not the data's: EGL falls back to OSMesa, no renderer stops the build before any
row, and rows lost to the environment (CUDA out of memory, a lost GL context) are retried by the next run."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch
from kill_build import PREPROCESS
from mesh_fixtures import bad_meshes_fixture

from cache_schema import DONE, FAILED, PENDING, open_cache
from cache_schema.errors import IncompleteCacheError
from preprocess import render
from preprocess.build_common import RunOptions
from preprocess.build_objects import ObjectBuildConfig, build_objects
from preprocess.errors import EnvironmentFailure
from preprocess.render import ViewConfig, working_gl_platform

SMALL = dict(num_points=64, views=ViewConfig(num_views=2, resolution=32), teachers=("clip-tiny",), num_captions=1)
RUN = RunOptions(progress=False, block_rows=4)


def test_egl_that_cannot_open_a_context_falls_back_to_osmesa_with_a_warning(monkeypatch):
    monkeypatch.setenv("EGL_DEVICE_ID", "99")  # a real EGL failure: no such device on this machine
    with pytest.warns(RuntimeWarning, match=r"EGL cannot open an offscreen context \(ValueError: Invalid device"):
        assert working_gl_platform("egl") == "osmesa"


def test_cli_build_with_broken_egl_renders_with_osmesa(tmp_path):
    url = str(tmp_path / "c.zarr")
    env = {"EGL_DEVICE_ID": "99", "PYTHONWARNINGS": "default"}
    run = subprocess.run([*PREPROCESS, "objects", "demo", "--out", url, "--teachers",
                          "clip-tiny", "--points", "64", "--views", "2", "--resolution", "32", "--num-captions", "1",
                          "--max-per-class", "1", "--demo-per-class", "1", "--gl-platform", "egl", "--no-progress"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    assert "rendering with OSMesa" in run.stderr
    cache = open_cache(url)
    assert (cache.status == DONE).all() and cache.array("views/rgb")[:].std() > 0  # really rendered


def test_no_working_renderer_stops_before_any_row_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "gl_platform_error", lambda platform, timeout=60.0: f"{platform} is broken")
    monkeypatch.setattr(render, "_WORKING", {})
    url = str(tmp_path / "c.zarr")
    with pytest.raises(EnvironmentFailure, match="no OpenGL renderer works on this machine .egl: egl is broken; "
                                                 "OSMesa: osmesa is broken.. Install Debian/Ubuntu libosmesa6"):
        build_objects(url, ObjectBuildConfig("demo", max_per_class=1, demo_per_class=1, **SMALL),
                      RunOptions(progress=False, gl_platform="egl"))
    assert (open_cache(url, allow_incomplete=True).status == PENDING).all()


def test_rows_lost_to_the_environment_are_retried_and_bad_rows_are_not(tmp_path, monkeypatch):
    root = str(tmp_path / "meshes")
    expected = bad_meshes_fixture(root)
    cfg = ObjectBuildConfig("meshes", root, **SMALL)
    clean = build_objects(str(tmp_path / "clean.zarr"), cfg, RUN)

    real_render = render.Renderer.render
    calls = {"n": 0}

    def out_of_memory_twice(self, mesh):
        calls["n"] += 1
        if calls["n"] in (2, 5):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_render(self, mesh)

    monkeypatch.setattr(render.Renderer, "render", out_of_memory_twice)
    url = str(tmp_path / "c.zarr")
    first = build_objects(url, cfg, RUN)
    assert not first.complete and "NOT finalized" in str(first)
    assert first.failed["environment: OutOfMemoryError"] == 2
    cache = open_cache(url, allow_incomplete=True)
    reasons = cache.array("status_reason")[:]
    lost = [str(r) for r in reasons if str(r).startswith("environment: ")]
    assert len(lost) == 2 and "CUDA out of memory" in lost[0]
    with pytest.raises(IncompleteCacheError):
        open_cache(url)

    monkeypatch.setattr(render.Renderer, "render", real_render)
    rendered: list[int] = []
    monkeypatch.setattr(render.Renderer, "render", lambda self, mesh: rendered.append(1) or real_render(self, mesh))
    second = build_objects(url, cfg, RUN)
    assert second.complete and second.fingerprint == clean.fingerprint  # as if nothing had happened
    lost_rows = np.flatnonzero([str(r).startswith("environment: ") for r in reasons])
    clean_status = open_cache(str(tmp_path / "clean.zarr")).status
    again = {int(r) // RUN.block_rows for r in lost_rows}  # the blocks holding a lost row
    in_those_blocks = sum(int((clean_status[b * RUN.block_rows:(b + 1) * RUN.block_rows] == DONE).sum())
                          for b in again)
    assert len(rendered) == in_those_blocks < int((clean_status == DONE).sum())  # those blocks' shapes, no others
    final = open_cache(url)
    bad = [i for i in expected if not expected[i].startswith("done")]
    status = dict(zip(final.ids, final.status))
    assert all(status[i] == FAILED for i in bad)  # the data's own failures stay failed, with their reasons
    assert not any(str(r).startswith("environment: ") for r in final.array("status_reason")[:])
    assert np.array_equal(final.status, open_cache(str(tmp_path / "clean.zarr")).status)


def test_a_teacher_that_cannot_load_on_a_worker_stops_the_build_and_the_rerun_finishes_it(tmp_path, monkeypatch):
    """Loading on the worker's device fails (as CUDA out of memory would): one clear error, no row written."""
    from preprocess import build_common

    def no_memory(name, batch_size, device=None):
        if device != "cpu":  # the coordinator's CPU copy loads; the worker's GPU copy does not
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")
        return real(name, batch_size, device)

    real = build_common.cached_teacher
    monkeypatch.setattr(build_common, "cached_teacher", no_memory)
    from preprocess.build_objects import _worker_tools

    _worker_tools.cache_clear()
    url = str(tmp_path / "c.zarr")
    cfg = ObjectBuildConfig("demo", max_per_class=1, demo_per_class=1, **SMALL)
    with pytest.raises(EnvironmentFailure, match="teacher 'clip-tiny' could not be loaded on this worker"):
        build_objects(url, cfg, RUN)
    assert (open_cache(url, allow_incomplete=True).status == PENDING).all()
    monkeypatch.setattr(build_common, "cached_teacher", real)
    _worker_tools.cache_clear()
    assert build_objects(url, cfg, RUN).complete
