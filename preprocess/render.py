"""Offscreen multi-view rendering with pyrender: RGB uint8 and metric depth.

Views sit on a sphere around the unit-sphere-normalised object, looking at the
origin with +y up: view ``i`` has azimuth ``360 * i / V`` degrees and elevation
``elevations[i % len(elevations)]``. Cameras are stored camera-to-world in the
OpenGL convention, intrinsics as a pixel K (see ``cache_schema/cameras.py``).
Depth is the camera z distance in the normalised object's units, 0 where the
background shows.

The OpenGL platform is chosen before OpenGL is first imported: ``egl`` when a
CUDA GPU is present, ``osmesa`` (Debian ``libosmesa6``) otherwise, or whatever
``PYOPENGL_PLATFORM`` / ``--gl-platform`` says. PyOpenGL binds its platform at
import, so a process cannot try EGL and then switch: :func:`working_gl_platform`
tries each candidate in a short-lived subprocess on the machine that will render
(a Dask worker) before any row is built, falls back from EGL to OSMesa with a
warning, and stops the build with one line when neither works.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import trimesh

from cache_schema.cameras import intrinsics_from_fov
from preprocess.errors import EnvironmentFailure

PROBE = "import pyrender; r = pyrender.OffscreenRenderer(16, 16); import trimesh; " \
        "s = pyrender.Scene(); s.add(pyrender.Mesh.from_trimesh(trimesh.creation.box())); r.delete()"


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
    load_llvm_users_first()
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


def gl_platform_error(platform: str, timeout: float = 60.0) -> str | None:
    """None if pyrender can open an offscreen context on ``platform`` here; else the error's last line."""
    env = {**os.environ, "PYOPENGL_PLATFORM": platform}
    try:
        done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"opening an offscreen {platform} context took over {timeout:.0f} s"
    if done.returncode == 0:
        return None
    lines = [x for x in done.stderr.strip().splitlines() if x.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"


_WORKING: dict[tuple, str] = {}


def working_gl_platform(requested: str = "auto") -> str:
    """The platform this machine can render with: ``requested``, or OSMesa (with a warning) when EGL fails.

    Raises :class:`EnvironmentFailure` naming what to install when nothing works. The answer is kept for the
    life of the process (a worker probes once, not once per build).
    """
    key = (requested, os.environ.get("PYOPENGL_PLATFORM"), os.environ.get("EGL_DEVICE_ID"))
    if key not in _WORKING:
        _WORKING[key] = _probe(requested)
    return _WORKING[key]


def _probe(requested: str) -> str:
    first = (os.environ.get("PYOPENGL_PLATFORM") or _default_platform()) if requested == "auto" else requested
    if first not in ("osmesa", "egl"):
        raise ValueError(f"GL platform must be auto, osmesa or egl, got {requested!r}")
    error = gl_platform_error(first)
    if error is None:
        return first
    if first == "egl":
        fallback = gl_platform_error("osmesa")
        if fallback is None:
            warnings.warn(f"EGL cannot open an offscreen context ({error}); rendering with OSMesa on the CPU "
                          "instead, which is slower", RuntimeWarning, stacklevel=2)
            return "osmesa"
        error = f"{error}; OSMesa: {fallback}"
    raise EnvironmentFailure(
        f"no OpenGL renderer works on this machine ({first}: {error}). Install Debian/Ubuntu libosmesa6 for CPU "
        "rendering (make setup does), or libegl1 and an NVIDIA driver for --gl-platform egl")


def load_llvm_users_first() -> None:
    """Import triton (through torch's check for it) before Mesa is loaded for a context.

    Mesa's llvmpipe (OSMesa, and EGL without a GPU) and triton both carry LLVM; triton's library loaded
    after Mesa's (which ``import pyrender`` loads) segfaults at import, and transformers imports it (through
    torch._dynamo). Loaded the other way round, both work. :func:`choose_gl_platform` calls it, and every
    path to pyrender goes through that first.
    """
    try:
        from torch.utils._triton import has_triton_package
    except ImportError:  # no torch here: nothing to protect
        return
    has_triton_package()


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
                self._renderer = pyrender.OffscreenRenderer(self.views.resolution, self.views.resolution)
            except Exception as e:  # libOSMesa.so missing, no EGL device: the machine's fault, not the shape's
                raise EnvironmentFailure(
                    f"pyrender could not open an offscreen {self.platform} context ({type(e).__name__}: {e}). "
                    "On Debian/Ubuntu install libosmesa6 (CPU) or use --gl-platform egl on a GPU machine.") from e
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
