"""Camera conventions of the cache, defined once, with the maths both sides need.

Scenes (LiDAR): ``T_lidar_to_cam`` maps homogeneous LiDAR-frame points to the
**OpenCV camera frame** (x right, y down, z forward, metres). ``K`` maps camera
coordinates to **pixels** with the origin at the top-left corner of the
top-left pixel: pixel (row r, col c) covers ``u in [c, c+1)``, ``v in [r, r+1)``;
its centre is ``(c + 0.5, r + 0.5)``. ``uv`` is (u = column axis, v = row axis).
Depth is the camera z coordinate (not the ray length).

Objects (renders): ``views/camera`` holds **camera-to-world** matrices in the
**OpenGL camera convention** that pyrender uses (x right, y up, the camera
looks along -z); the world frame is the unit-sphere-normalised object frame,
y up. ``K`` for renders lives in the root ``config`` (``intrinsics``) in the
same pixel convention as above. ``OPENGL_TO_OPENCV`` converts between them.
"""

from __future__ import annotations

import numpy as np

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips y and z; its own inverse


def intrinsics_from_fov(yfov: float, width: int, height: int) -> np.ndarray:
    """(3, 3) pinhole K for a vertical field of view in radians and square pixels."""
    fy = 0.5 * height / np.tan(0.5 * yfov)
    return np.array([[fy, 0.0, 0.5 * width], [0.0, fy, 0.5 * height], [0.0, 0.0, 1.0]])


def project_points(xyz: np.ndarray, K: np.ndarray, T_to_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project (n, 3) points through ``T_to_cam`` (4, 4, to OpenCV camera) and K (3, 3).

    Returns uv (n, 2) pixels and depth (n,) camera z; points behind the camera get
    depth <= 0 and meaningless uv, so callers filter on depth.
    """
    cam = xyz @ T_to_cam[:3, :3].T + T_to_cam[:3, 3]
    depth = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ K.T)[:, :2] / depth[:, None]
    return uv, depth


def unproject_pixels(uv: np.ndarray, depth: np.ndarray, K: np.ndarray, T_to_cam: np.ndarray) -> np.ndarray:
    """Inverse of :func:`project_points`: (n, 2) pixels at camera depth (n,) back to (n, 3) points."""
    rays = np.concatenate([uv, np.ones((len(uv), 1))], axis=1) @ np.linalg.inv(K).T
    cam = rays * depth[:, None]
    T_from_cam = np.linalg.inv(T_to_cam)
    return cam @ T_from_cam[:3, :3].T + T_from_cam[:3, 3]


def in_image(uv: np.ndarray, depth: np.ndarray, width: int, height: int, min_depth: float = 0.0) -> np.ndarray:
    """(n,) bool: in front of the camera beyond ``min_depth`` and inside the image."""
    return (depth > min_depth) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)


def depth_to_points(depth: np.ndarray, K: np.ndarray, cam_to_world_gl: np.ndarray) -> np.ndarray:
    """Back-project a rendered depth map (H, W; 0 = background) to (n, 3) world points.

    Pixel centres ``(c + 0.5, r + 0.5)`` are lifted with K in OpenCV axes, then
    taken to the world by an OpenGL camera-to-world matrix (as in ``views/camera``).
    """
    rows, cols = np.nonzero(depth > 0)
    uv = np.stack([cols + 0.5, rows + 0.5], axis=1)
    w2c_cv = OPENGL_TO_OPENCV @ np.linalg.inv(cam_to_world_gl)
    return unproject_pixels(uv, depth[rows, cols].astype(np.float64), K, w2c_cv)
