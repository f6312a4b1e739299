"""Render conventions: stored depth + cameras land back on the surface; a cube's depth is analytic."""

from __future__ import annotations

import numpy as np
import trimesh

from cache_schema import open_cache
from cache_schema.cameras import depth_to_points
from preprocess.build_objects import ObjectBuildConfig, RunOptions, build_objects
from preprocess.meshes import normalize_unit_sphere
from preprocess.render import Renderer, ViewConfig, look_at


def _nearest_distance(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For each point of a, the distance to its nearest point of b (brute force)."""
    out = []
    for s in range(0, len(a), chunk):
        d = np.linalg.norm(a[s:s + chunk, None, :] - b[None, :, :], axis=-1)
        out.append(d.min(axis=1))
    return np.concatenate(out)


def test_stored_depth_back_projects_onto_the_stored_points(tmp_path):
    url = str(tmp_path / "c.zarr")
    cfg = ObjectBuildConfig("demo", num_points=8192, views=ViewConfig(num_views=6, resolution=96),
                            teachers=("clip-tiny",), num_captions=1, max_per_class=1, point_dtype="float32")
    build_objects(url, cfg, RunOptions(progress=False))
    cache = open_cache(url)
    K = np.array(cache.attrs.config["views"]["intrinsics"])
    cams = cache.view_cameras
    for row in (0, 4, 9):
        surface = cache.points(row)
        seen = []
        for v in range(len(cams)):
            lifted = depth_to_points(cache.array("views/depth")[row, v].astype(np.float32), K, cams[v])
            assert len(lifted) > 50
            d = _nearest_distance(lifted[::4], surface)
            # float16 depth (~1e-3 relative) and 8192 samples: nearly every pixel is within a few hundredths
            assert np.median(d) < 0.02 and np.quantile(d, 0.95) < 0.06, (row, v, np.median(d))
            seen.append(lifted[::4])
        back = _nearest_distance(surface[::8], np.concatenate(seen))  # and the views cover the surface
        assert np.median(back) < 0.03, np.median(back)


def test_unit_cube_head_on_has_the_analytic_depth():
    cube, _, _ = normalize_unit_sphere(trimesh.creation.box(extents=(2, 2, 2)))  # corners on the unit sphere
    half = 1 / np.sqrt(3)
    views = ViewConfig(num_views=1, elevations=(0.0,), resolution=101, yfov_deg=40.0)
    np.testing.assert_allclose(views.cameras()[0], look_at(np.array([0.0, 0.0, views.distance])))
    _, depth = Renderer(views).render(cube)
    d = depth[0]
    expected = views.distance - half  # the front face is the plane z = 1/sqrt(3)
    assert abs(d[50, 50] - expected) < 1e-3
    front = d[d > 0]
    assert abs(np.median(front) - expected) < 1e-3
    f = views.intrinsics()[0, 0]
    width_px = 2 * f * half / expected  # the front face's projected width
    covered = (d[50] > 0).sum()
    assert abs(covered - width_px) <= 2, (covered, width_px)


def test_a_process_that_rendered_can_still_load_the_teachers():
    """Mesa (OSMesa/EGL llvmpipe) and triton both carry LLVM: triton imported after Mesa segfaults, and transformers
    imports it through torch. Rendering first, then loading a DINOv2 teacher, must work in one process."""
    import subprocess
    import sys

    code = ("import trimesh; from preprocess.render import Renderer, ViewConfig; "
            "rgb, _ = Renderer(ViewConfig(num_views=1, resolution=16)).render(trimesh.creation.box()); "
            "from preprocess.teachers import load_teacher; load_teacher('dinov2-tiny'); print('ok', rgb.std() > 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "ok True" in run.stdout, (run.returncode, run.stderr[-2000:])
