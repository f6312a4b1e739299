"""Built-in demo scenes: procedural streets, a ray-cast spinning LiDAR and pyrender cameras.

Every frame is generated from (seed, frame index) alone, so the same frame is
identical on any worker. A street runs along +x: ground, buildings and walls
along both sides, cars on the road, poles and barrels on the kerb. The LiDAR
is cast analytically against the same boxes and cylinders (exact hits, with
the hit object's class as the point label and an incidence- and
reflectance-dependent intensity); the cameras render the same primitives with
pyrender, and a segmentation pass gives every pixel its class, so labels
exist for points and pixels alike.

Why a hand-written ray caster: trimesh's ray queries need rtree or embree,
neither installable here, and analytic box/cylinder intersection is exact and
vectorised over all rays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cache_schema.cameras import OPENGL_TO_OPENCV
from preprocess.scene_sources import CameraImage, Frame, FrameItem, SceneCatalog

LABEL_NAMES = ("ground", "building", "wall", "car", "pole", "barrel")
REFLECTANCE = np.array([0.25, 0.5, 0.4, 0.85, 0.6, 0.7])
COLOURS = np.array([[90, 90, 95], [170, 140, 110], [200, 200, 190], [40, 70, 160], [120, 120, 120],
                    [220, 110, 30]], np.float64)
CAMERAS = ("CAM_FRONT", "CAM_LEFT", "CAM_RIGHT")


@dataclass(frozen=True)
class DemoSceneConfig:
    """The sensor rig of the demo scenes (stored in the cache config)."""

    lidar_height: float = 1.8
    beams: int = 32
    elevation_deg: tuple[float, float] = (-25.0, 5.0)
    azimuth_steps: int = 1024
    min_range: float = 1.0
    max_range: float = 60.0
    range_noise: float = 0.01
    camera_position: tuple[float, float, float] = (1.0, 0.0, 1.6)
    camera_yaws_deg: tuple[float, ...] = (0.0, 55.0, -55.0)
    hfov_deg: float = 70.0
    image_size: tuple[int, int] = (320, 192)  # width, height

    def K(self) -> np.ndarray:
        w, h = self.image_size
        f = 0.5 * w / np.tan(np.deg2rad(self.hfov_deg) / 2)
        return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])

    def world_to_camera(self, yaw_deg: float) -> np.ndarray:
        """(4, 4) world -> OpenCV camera (x right, y down, z forward) for a camera looking along ``yaw``."""
        a = np.deg2rad(yaw_deg)
        R = np.array([[np.sin(a), -np.cos(a), 0.0], [0.0, 0.0, -1.0], [np.cos(a), np.sin(a), 0.0]])
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, -R @ np.asarray(self.camera_position)
        return T

    def lidar_to_world(self) -> np.ndarray:
        T = np.eye(4)
        T[2, 3] = self.lidar_height
        return T


@dataclass(frozen=True)
class Primitive:
    """A box (size = length, width, height) or vertical cylinder (size = radius, height) standing on z0."""

    kind: str
    label: int
    centre: tuple[float, float]
    z0: float
    size: tuple[float, ...]
    yaw: float = 0.0
    colour: tuple[float, float, float] = (128, 128, 128)


def scene_primitives(seed: int, frame: int) -> list[Primitive]:
    """The street of one frame (everything but the ground plane)."""
    rng = np.random.default_rng([seed, frame])
    out: list[Primitive] = []

    def colour(label: int) -> tuple[float, float, float]:
        return tuple(np.clip(COLOURS[label] * rng.uniform(0.8, 1.2), 0, 255))

    for side in (-1, 1):
        x = -50.0
        while x < 50:  # buildings with gaps
            length = rng.uniform(8, 20)
            depth, height = rng.uniform(6, 12), rng.uniform(5, 18)
            y = side * (rng.uniform(11, 14) + depth / 2)
            out.append(Primitive("box", 1, (x + length / 2, y), 0.0, (length, depth, height), 0.0, colour(1)))
            x += length + rng.uniform(2, 6)
        for x in np.arange(-45, 45, 15) + rng.uniform(-3, 3):  # low walls in front of the buildings
            if rng.random() < 0.6:
                out.append(Primitive("box", 2, (x, side * 9.5), 0.0, (rng.uniform(4, 9), 0.3, rng.uniform(0.8, 1.6)),
                                     0.0, colour(2)))
        for x in np.arange(-40, 40, 12) + rng.uniform(-2, 2):  # poles on the kerb
            out.append(Primitive("cylinder", 4, (x, side * rng.uniform(6.5, 7.5)), 0.0, (0.15, rng.uniform(4, 7)),
                                 0.0, colour(4)))
    for _ in range(rng.integers(6, 12)):  # cars on the road, not on the sensor
        while True:
            x, y = rng.uniform(-40, 40), rng.choice([-3.5, -1.5, 1.5, 3.5]) + rng.uniform(-0.3, 0.3)
            if abs(x) > 4 or abs(y) > 2.5:
                break
        out.append(Primitive("box", 3, (x, y), 0.0, (rng.uniform(3.8, 4.8), rng.uniform(1.7, 2.0),
                                                      rng.uniform(1.4, 1.8)), rng.uniform(-0.2, 0.2), colour(3)))
    for _ in range(rng.integers(3, 7)):  # barrels
        out.append(Primitive("cylinder", 5, (rng.uniform(-30, 30), rng.choice([-1, 1]) * rng.uniform(5.5, 6.2)), 0.0,
                             (0.4, 1.0), 0.0, colour(5)))
    return out


# ---------------------------------------------------------------- LiDAR


def _hit_box(o: np.ndarray, d: np.ndarray, p: Primitive) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameter (inf = miss) and world normals of rays o + t d against an oriented box."""
    c, s = np.cos(p.yaw), np.sin(p.yaw)
    R = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]])  # world -> box axes
    centre = np.array([*p.centre, p.z0 + p.size[2] / 2])
    half = np.asarray(p.size) / 2
    ol, dl = (o - centre) @ R.T, d @ R.T
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - ol) / dl, (half - ol) / dl
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    tmin, tmax = np.nanmax(near, axis=1), np.nanmin(far, axis=1)
    hit = (tmax >= tmin) & (tmin > 1e-6)
    axis = np.nanargmax(near, axis=1)
    normal_local = np.zeros_like(dl)
    normal_local[np.arange(len(dl)), axis] = -np.sign(dl[np.arange(len(dl)), axis])
    return np.where(hit, tmin, np.inf), normal_local @ R


def _hit_cylinder(o: np.ndarray, d: np.ndarray, p: Primitive) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameter and normals against a vertical cylinder with a top cap."""
    r, h = p.size
    ox, oy = o[:, 0] - p.centre[0], o[:, 1] - p.centre[1]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2 * (ox * d[:, 0] + oy * d[:, 1])
    disc = b * b - 4 * a * (ox * ox + oy * oy - r * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        z = o[:, 2] + t_side * d[:, 2]
        side = (disc >= 0) & (a > 0) & (t_side > 1e-6) & (z >= p.z0) & (z <= p.z0 + h)
        t_cap = (p.z0 + h - o[:, 2]) / d[:, 2]
        cx, cy = ox + t_cap * d[:, 0], oy + t_cap * d[:, 1]
        cap = (d[:, 2] < 0) & (t_cap > 1e-6) & (cx * cx + cy * cy <= r * r)
    t = np.where(side, t_side, np.inf)
    t = np.where(cap & (t_cap < t), t_cap, t)
    normals = np.zeros_like(d)
    normals[:, 0], normals[:, 1] = (ox + t_side * d[:, 0]) / r, (oy + t_side * d[:, 1]) / r
    normals[cap & (t == t_cap)] = (0, 0, 1)
    return t, normals


def cast_lidar(primitives: list[Primitive], cfg: DemoSceneConfig, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) points in the LiDAR frame (x, y, z, intensity) and (N,) labels of one spinning sweep."""
    el = np.deg2rad(np.linspace(*cfg.elevation_deg, cfg.beams))
    az = np.linspace(0, 2 * np.pi, cfg.azimuth_steps, endpoint=False)
    el, az = np.meshgrid(el, az, indexing="ij")
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
    o = np.broadcast_to(np.array([0.0, 0.0, cfg.lidar_height]), d.shape)
    with np.errstate(divide="ignore"):
        t_best = np.where(d[:, 2] < 0, -cfg.lidar_height / d[:, 2], np.inf)  # the ground plane z = 0
    label = np.zeros(len(d), np.int64)
    normal = np.tile([0.0, 0.0, 1.0], (len(d), 1))
    for p in primitives:
        t, n = (_hit_box if p.kind == "box" else _hit_cylinder)(o, d, p)
        closer = t < t_best
        t_best[closer], label[closer], normal[closer] = t[closer], p.label, n[closer]
    keep = (t_best >= cfg.min_range) & (t_best <= cfg.max_range)
    t, d, label, normal = t_best[keep], d[keep], label[keep], normal[keep]
    t = t + rng.normal(0, cfg.range_noise, len(t))
    xyz = d * t[:, None]  # LiDAR frame: the sensor at the origin
    cos_inc = np.abs(np.sum(normal * d, axis=1))
    intensity = np.clip(REFLECTANCE[label] * cos_inc * (1 - 0.5 * t / cfg.max_range)
                        + rng.normal(0, 0.02, len(t)), 0, 1)
    return np.column_stack([xyz, intensity]).astype(np.float32), label.astype(np.uint8)


# ---------------------------------------------------------------- cameras

_RENDERERS: dict[tuple[int, int], Any] = {}


def _renderer(size: tuple[int, int]):
    import pyrender

    if size not in _RENDERERS:
        _RENDERERS[size] = pyrender.OffscreenRenderer(*size)
    return _RENDERERS[size]


def street_scene(primitives: list[Primitive]):
    """A pyrender scene of the street (ground and every primitive, one mesh per class) and its segmentation
    map (node -> class + 1)."""
    import pyrender
    import trimesh

    scene = pyrender.Scene(bg_color=[0.62, 0.75, 0.9, 1.0], ambient_light=[0.45, 0.45, 0.45])
    seg_map = {}
    ground = trimesh.creation.box(extents=(400, 400, 0.02))
    ground.apply_translation((0, 0, -0.01))
    items = [(ground, 0, tuple(COLOURS[0]))]
    sink = 0.05  # meshes reach below the ground: no face coplanar with it, so no depth ties between processes
    for p in primitives:
        if p.kind == "box":
            m = trimesh.creation.box(extents=(*p.size[:2], p.size[2] + sink))
            m.apply_translation((0, 0, (p.size[2] + sink) / 2))
            m.apply_transform(trimesh.transformations.rotation_matrix(p.yaw, (0, 0, 1)))
        else:
            m = trimesh.creation.cylinder(radius=p.size[0], height=p.size[1] + sink, sections=96)
            m.apply_translation((0, 0, (p.size[1] + sink) / 2))
        m.apply_translation((*p.centre, p.z0 - sink))
        items.append((m, p.label, p.colour))
    for label in range(len(LABEL_NAMES)):  # one mesh per class: a draw call costs more than its triangles
        parts = []
        for mesh, item_label, colour in items:
            if item_label == label:
                mesh.visual.face_colors = np.array([*colour, 255], np.uint8)
                parts.append(mesh)
        if parts:
            # pyrender draws solid nodes ordered by their distance to the camera, ties in set order (which
            # varies between processes); distinct node positions make the order, and so the pixels on
            # depth ties, the same in every process
            offset = np.array([0.0, 0.0, 0.01 * label])
            mesh = trimesh.util.concatenate(parts)
            mesh.apply_translation(-offset)
            pose = np.eye(4)
            pose[:3, 3] = offset
            node = scene.add(pyrender.Mesh.from_trimesh(mesh, smooth=False), pose=pose)
            seg_map[node] = (label + 1, 0, 0)
    return scene, seg_map


def render_cameras(primitives: list[Primitive], cfg: DemoSceneConfig) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W, 3) uint8 images and (C, H, W) int labels (-1 = sky) of every camera."""
    import pyrender
    import trimesh

    scene, seg_map = street_scene(primitives)
    K = cfg.K()
    camera = pyrender.IntrinsicsCamera(K[0, 0], K[1, 1], K[0, 2], K[1, 2], znear=0.05, zfar=500.0)
    cam_node = scene.add(camera)
    scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=2.5),
              pose=trimesh.transformations.rotation_matrix(np.deg2rad(-50), (1, 0.3, 0)))
    renderer = _renderer(cfg.image_size)
    w, h = cfg.image_size
    rgb = np.zeros((len(cfg.camera_yaws_deg), h, w, 3), np.uint8)
    labels = np.zeros((len(cfg.camera_yaws_deg), h, w), np.int64)
    for i, yaw in enumerate(cfg.camera_yaws_deg):
        scene.set_pose(cam_node, np.linalg.inv(cfg.world_to_camera(yaw)) @ OPENGL_TO_OPENCV)
        rgb[i] = renderer.render(scene)[0][..., :3]
        seg = renderer.render(scene, flags=pyrender.RenderFlags.SEG, seg_node_map=seg_map)[0]
        labels[i] = seg[..., 0].astype(np.int64) - 1
    return rgb, labels


# ---------------------------------------------------------------- source API


def list_frames(root: str | None = None, frames: int = 40, seed: int = 0, **_: Any) -> SceneCatalog:
    """``frames`` procedural frames; the last fifth is the validation split."""
    cfg = DemoSceneConfig()
    n_train = int(round(frames * 0.8))
    items = tuple(FrameItem(f"demo-scene-{i:04d}", "train" if i < n_train else "val",
                            {"dataset": "demo-scenes", "frame": i, "seed": seed}) for i in range(frames))
    return SceneCatalog("demo-scenes", "builtin:procedural", LABEL_NAMES, CAMERAS, cfg.image_size, True, items)


def generate_frame(seed: int, frame: int, cfg: DemoSceneConfig = DemoSceneConfig()
                   ) -> tuple[Frame, np.ndarray]:
    """One demo frame and its per-pixel camera labels (C, H, W) (-1 = sky)."""
    primitives = scene_primitives(seed, frame)
    points, labels = cast_lidar(primitives, cfg, np.random.default_rng([seed, frame, 1]))
    rgb, pixel_labels = render_cameras(primitives, cfg)
    T_lidar = cfg.lidar_to_world()
    cameras = [CameraImage(name, rgb[i], cfg.K(), cfg.world_to_camera(yaw) @ T_lidar)
               for i, (name, yaw) in enumerate(zip(CAMERAS, cfg.camera_yaws_deg))]
    return Frame(points, labels, cameras), pixel_labels


def load_frame(item: FrameItem) -> Frame:
    return generate_frame(item.source["seed"], item.source["frame"])[0]
