"""The camera conventions round-trip and agree with a hand-computed case."""

from __future__ import annotations

import numpy as np

from cache_schema.cameras import OPENGL_TO_OPENCV, in_image, intrinsics_from_fov, project_points, unproject_pixels


def _random_pose(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, rng.normal(size=3)
    return T


def test_project_then_unproject_is_the_identity():
    rng = np.random.default_rng(0)
    K = intrinsics_from_fov(np.deg2rad(60), 640, 480)
    T = _random_pose(rng)
    xyz = rng.normal(size=(200, 3)) * 5
    uv, depth = project_points(xyz, K, T)
    front = depth > 0.1
    np.testing.assert_allclose(unproject_pixels(uv[front], depth[front], K, T), xyz[front], atol=1e-9)


def test_hand_computed_projection_and_pixel_convention():
    K = intrinsics_from_fov(np.pi / 2, 100, 100)  # f = 50, principal point at the image centre
    assert np.isclose(K[0, 0], 50) and np.allclose(K[:2, 2], [50, 50])
    uv, depth = project_points(np.array([[1.0, -2.0, 4.0], [0, 0, -1.0]]), K, np.eye(4))
    np.testing.assert_allclose(uv[0], [50 + 50 * 1 / 4, 50 - 50 * 2 / 4])  # x right -> u, y down -> v
    assert depth[0] == 4.0
    np.testing.assert_array_equal(in_image(uv, depth, 100, 100, min_depth=1.0), [True, False])


def test_opengl_camera_looks_down_minus_z():
    c2w_gl = np.eye(4)
    c2w_gl[:3, 3] = [0, 0, 3]  # camera on +z looking at the origin, OpenGL axes
    w2c_cv = OPENGL_TO_OPENCV @ np.linalg.inv(c2w_gl)
    uv, depth = project_points(np.array([[0.0, 0.5, 0.0]]), intrinsics_from_fov(np.pi / 2, 10, 10), w2c_cv)
    assert np.isclose(depth[0], 3.0)
    assert uv[0, 1] < 5  # a point above the origin (world y up) is in the upper half of the image
