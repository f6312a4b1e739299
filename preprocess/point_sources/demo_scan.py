"""`demo-scan`: the demo shapes scanned the way ScanObjectNN differs from ModelNet (built in, no download).

Per shape (deterministic from its id and the seed):

- **partial surface**: the mesh is rendered from 1 or 2 of four cameras around
  it (pyrender) and the depth pixels are back-projected (``depth_to_points``),
  so only the sides a sensor saw exist, and their density follows the view;
- **background** (``obj_bg``, ``pb_t50_rs``): a floor patch under the object and
  one to four neighbouring box fragments around it, partly inside the crop;
- **sensor noise**: Gaussian jitter of every point;
- ``pb_t50_rs`` (harder, like PB_T50_RS): the crop box is shifted by up to
  half the object's size (parts of the object cut off, more background), the
  scene is rotated about the up axis and scaled anisotropically by 0.8-1.2,
  and the noise is doubled.

2,048 points per shape, centred and scaled into the unit sphere like the h5
files, in a random order. Splits and classes are the demo's.
"""

from __future__ import annotations

import zlib

import numpy as np
import trimesh

from cache_schema.cameras import depth_to_points
from preprocess.point_sources import PointCatalog, PointItem, normalize_unit_sphere

VARIANTS = ("obj_bg", "obj_only", "pb_t50_rs")
NUM_POINTS = 2048
VIEW_RESOLUTION = 96


def catalog(root: str | None = None, variant: str = "obj_bg", per_class: int = 40, seed: int = 0,
            gl_platform: str = "auto", **_: object) -> PointCatalog:
    from preprocess.render import Renderer, ViewConfig
    from preprocess.sources.demo import list_items

    if variant not in VARIANTS:
        raise ValueError(f"--variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    demo = list_items(per_class=per_class, seed=seed)
    items = tuple(PointItem(f"demo-scan/{variant}/{it.id.split('/', 1)[1]}", it.label, it.split, it.procedural)
                  for it in demo.items)
    views = ViewConfig(num_views=4, elevations=(25.0, 10.0), resolution=VIEW_RESOLUTION)
    renderer = {}

    def read(group: list[PointItem]):
        if "r" not in renderer:  # one offscreen context for the build, made on first use
            renderer["r"] = Renderer(views, gl_platform)
        points = np.stack([scan(it, variant, renderer["r"], views) for it in group]).astype(np.float32)
        return points, None, [""] * len(group)

    return PointCatalog("demo-scan", "builtin:demo-scan", demo.label_names, items, NUM_POINTS, False,
                        f"demo shapes scanned ({variant}): back-projected depth of 1-2 views, background, noise; "
                        f"{NUM_POINTS} points in a random order, unit sphere", read,
                        {"variant": variant, "per_class": per_class})


def scan(item: PointItem, variant: str, renderer, views) -> np.ndarray:
    """(2048, 3) points of one scanned demo shape."""
    from preprocess.meshes import normalize_unit_sphere as normalize_mesh
    from preprocess.sources.demo import make_mesh

    p = item.ref
    rng = np.random.default_rng([p["seed"], zlib.crc32(item.id.encode())])
    mesh, _, _ = normalize_mesh(make_mesh(p["category"], p["index"], p["seed"]))
    _, depth = renderer.render(mesh)
    seen = rng.choice(views.num_views, rng.integers(1, 3), replace=False)
    obj = np.concatenate([depth_to_points(depth[v], views.intrinsics(), views.cameras()[v]) for v in seen])
    hard = variant == "pb_t50_rs"
    parts = [obj]
    if variant != "obj_only":
        parts += background(obj, rng, hard)
    scene = np.concatenate(parts)
    if hard:  # the crop box moves: some of the object is cut off, more background comes in
        shift = rng.uniform(-0.5, 0.5, 3) * np.ptp(obj, axis=0)
        keep = np.all(np.abs(scene - (obj.mean(0) + shift)) <= 1.1 * np.ptp(obj, axis=0).max(), axis=1)
        scene = scene[keep] if keep.sum() >= 256 else scene
        a = rng.uniform(0, 2 * np.pi)
        rot = trimesh.transformations.rotation_matrix(a, [0, 1, 0])[:3, :3]
        scene = (scene @ rot.T) * rng.uniform(0.8, 1.2, 3)
    idx = rng.choice(len(scene), NUM_POINTS, replace=len(scene) < NUM_POINTS)
    cloud = scene[idx] + rng.normal(scale=0.02 if hard else 0.01, size=(NUM_POINTS, 3))
    return normalize_unit_sphere(cloud)


def background(obj: np.ndarray, rng: np.random.Generator, hard: bool) -> list[np.ndarray]:
    """A floor patch under the object and neighbouring box fragments around it, as seen points."""
    lo, hi = obj.min(0), obj.max(0)
    size = float(np.ptp(obj, axis=0).max())
    n_floor = int(len(obj) * rng.uniform(0.2, 0.4))
    floor = np.stack([rng.uniform(lo[0] - 0.4 * size, hi[0] + 0.4 * size, n_floor),
                      np.full(n_floor, lo[1]) + rng.normal(scale=0.005, size=n_floor),
                      rng.uniform(lo[2] - 0.4 * size, hi[2] + 0.4 * size, n_floor)], 1)
    out = [floor]
    for _ in range(rng.integers(2, 5) if hard else rng.integers(1, 3)):
        extent = rng.uniform(0.15, 0.5, 3) * size
        box = trimesh.creation.box(extent)
        angle = rng.uniform(0, 2 * np.pi)
        centre = obj.mean(0) + 0.75 * size * np.array([np.cos(angle), 0.0, np.sin(angle)])
        centre[1] = lo[1] + extent[1] / 2
        box.apply_translation(centre)
        n = int(len(obj) * rng.uniform(0.05, 0.15))
        pts, _ = trimesh.sample.sample_surface(box, n, seed=int(rng.integers(2**31)))
        out.append(np.asarray(pts))
    return out
