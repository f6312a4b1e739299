"""Offscreen multi-view rendering with pyrender: RGB uint8 and metric depth.

Views sit on a sphere around the unit-sphere-normalised object, looking at the
origin with +y up: view ``i`` has azimuth ``360 * i / V`` degrees and elevation
``elevations[i % len(elevations)]``. Cameras are stored camera-to-world in the
OpenGL convention, intrinsics as a pixel K (see ``cache_schema/cameras.py``).
Depth is the camera z distance in the normalised object's units, 0 where the
background shows.

The OpenGL platform is chosen before OpenGL is first imported: ``egl`` when a
CUDA GPU is present, ``osmesa`` (Debian ``libosmesa6``) otherwise, or whatever
``PYOPENGL_PLATFORM`` / ``--gl-platform`` says.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import trimesh

from cache_schema.cameras import intrinsics_from_fov


@dataclass(frozen=True)
class ViewConfig:
    """Where the cameras are and what they see."""

    num_views: int = 12
    elevations: tuple[float, ...] = (30.0, -15.0)
    resolution: int = 224
    yfov_deg: float = 40.0
    margin: float = 1.05  # the unit sphere fills the frame up to this factor

    @property
    def distance(self) -> float:
        return self.margin / np.sin(np.deg2rad(self.yfov_deg) / 2)

    def intrinsics(self) -> np.ndarray:
        return intrinsics_from_fov(np.deg2rad(self.yfov_deg), self.resolution, self.resolution)

    def cameras(self) -> np.ndarray:
        """(V, 4, 4) camera-to-world matrices, OpenGL axes (camera looks along -z, +y up)."""
        out = np.zeros((self.num_views, 4, 4))
        for i in range(self.num_views):
            az = np.deg2rad(360.0 * i / self.num_views)
            el = np.deg2rad(self.elevations[i % len(self.elevations)])
            eye = self.distance * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
            out[i] = look_at(eye)
        return out


def look_at(eye: np.ndarray, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Camera-to-world (OpenGL) for a camera at ``eye`` looking at ``target``."""
    z = eye - np.asarray(target)
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-8:  # looking straight up or down
        x = np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, np.cross(z, x), z, eye
    return c2w


def choose_gl_platform(requested: str = "auto") -> str:
    """Set ``PYOPENGL_PLATFORM`` (must happen before OpenGL is imported) and return it."""
    if requested == "auto":
        requested = os.environ.get("PYOPENGL_PLATFORM") or _default_platform()
    if requested not in ("osmesa", "egl"):
        raise ValueError(f"GL platform must be auto, osmesa or egl, got {requested!r}")
    current = os.environ.get("PYOPENGL_PLATFORM")
    if "OpenGL" in sys.modules and current and current != requested:
        raise RuntimeError(f"OpenGL was already loaded for {current!r}; cannot switch to {requested!r} "
                           "in this process")
    os.environ["PYOPENGL_PLATFORM"] = requested
    return requested


def _default_platform() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return "egl"
    except ImportError:
        pass
    return "osmesa"


class Renderer:
    """Renders every view of a mesh; one offscreen context per process, made on first use."""

    def __init__(self, views: ViewConfig, gl_platform: str = "auto") -> None:
        self.views = views
        self.platform = choose_gl_platform(gl_platform)
        self._cameras = views.cameras()
        self._renderer = None

    def _context(self):
        if self._renderer is None:
            try:
                import pyrender
            except ImportError as e:  # e.g. libOSMesa.so missing
                raise RuntimeError(
                    f"pyrender could not load the {self.platform} OpenGL platform ({e}). On Debian/Ubuntu "
                    "install libosmesa6 (CPU) or use --gl-platform egl on a GPU machine.") from e
            self._renderer = pyrender.OffscreenRenderer(self.views.resolution, self.views.resolution)
        return self._renderer

    def render(self, mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
        """(V, H, W, 3) uint8 RGB and (V, H, W) float32 depth of a normalised mesh."""
        import pyrender

        renderer = self._context()
        scene = pyrender.Scene(bg_color=[1.0, 1.0, 1.0, 1.0], ambient_light=[0.35, 0.35, 0.35])
        scene.add(pyrender.Mesh.from_trimesh(mesh, smooth=False))
        camera = pyrender.PerspectiveCamera(yfov=np.deg2rad(self.views.yfov_deg), aspectRatio=1.0,
                                            znear=0.05, zfar=2 * self.views.distance + 2)
        cam_node = scene.add(camera, pose=self._cameras[0])
        light_node = scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=3.0), pose=self._cameras[0])
        v, r = self.views.num_views, self.views.resolution
        rgb = np.zeros((v, r, r, 3), np.uint8)
        depth = np.zeros((v, r, r), np.float32)
        for i, pose in enumerate(self._cameras):
            scene.set_pose(cam_node, pose)
            scene.set_pose(light_node, pose)
            color, d = renderer.render(scene)
            rgb[i], depth[i] = color[..., :3], d
        return rgb, depth

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.delete()
            self._renderer = None
