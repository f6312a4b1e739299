"""Built-in demo objects: procedural, deterministic, ShapeNet-like categories.

Ten categories assembled from the same few primitives (boxes, cylinders, cones,
capsules, spheres, tori) with random proportions, part counts and options, a
random rotation about the up axis (+y, as in ShapeNet) and vertex noise. No
single global statistic (size, aspect ratio, part count) separates them:
chairs, stools, benches and tables share seats, legs and boards; mugs, bottles
and lamps share cylinders. Part colours are drawn from one palette for all
classes, so colour carries no label. Every 5th shape of a class is in `test`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import trimesh

from preprocess.sources import Catalog, MeshItem

CATEGORIES = ("airplane", "bench", "bottle", "car", "chair", "lamp", "mug", "shelf", "stool", "table")
DEFAULT_PER_CLASS = 40
PALETTE = np.array([[200, 60, 50], [60, 120, 200], [220, 190, 80], [90, 170, 90], [150, 150, 150],
                    [120, 80, 50], [240, 240, 235], [40, 40, 45], [170, 100, 180]], dtype=np.uint8)


def list_items(root: str | None = None, per_class: int = DEFAULT_PER_CLASS, seed: int = 0, **_: object) -> Catalog:
    items = tuple(
        MeshItem(f"demo/{cat}/{i:03d}", label, "test" if i % 5 == 4 else "train",
                 procedural={"category": cat, "index": i, "seed": seed})
        for label, cat in enumerate(CATEGORIES) for i in range(per_class)
    )
    return Catalog("demo", "builtin:demo-objects", CATEGORIES, items, parts=part_metadata())


class _Parts:
    """Collects primitive parts (y up) with colours from the shared palette."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.meshes: list[trimesh.Trimesh] = []
        self.part = ""  # the semantic part the next primitives belong to (set by the builders)
        self.face_parts: list[str] = []  # one name per added mesh

    def add(self, mesh: trimesh.Trimesh, at=(0.0, 0.0, 0.0), color: int | None = None) -> None:
        if self.rng.random() < 0.5:
            mesh = mesh.subdivide()  # varies the face count, which should say nothing about the class
        mesh.apply_translation(at)
        c = PALETTE[self.rng.integers(len(PALETTE))] if color is None else PALETTE[color]
        mesh.visual.face_colors = np.tile(np.append(c, 255), (len(mesh.faces), 1))
        self.meshes.append(mesh)
        self.face_parts.append(self.part)

    def sections(self) -> int:
        """Random tessellation, so that the face count says little about the class."""
        return int(self.rng.integers(8, 33))

    def box(self, size, at, color=None) -> None:
        self.add(trimesh.creation.box(extents=size), at, color)

    def cylinder(self, radius, height, at, axis="y", color=None) -> None:
        m = trimesh.creation.cylinder(radius=radius, height=height, sections=self.sections())
        self.add(_orient(m, axis), at, color)

    def cone(self, radius, height, at, flip=False, color=None) -> None:
        m = trimesh.creation.cone(radius=radius, height=height, sections=self.sections())
        m = _orient(m, "y")
        if flip:
            m.apply_transform(trimesh.transformations.rotation_matrix(np.pi, [1, 0, 0]))
        self.add(m, at, color)

    def capsule(self, radius, length, at, axis="x", color=None) -> None:
        n = self.sections()
        self.add(_orient(trimesh.creation.capsule(height=length, radius=radius, count=[n, n]), axis), at, color)

    def sphere(self, radius, at, color=None) -> None:
        self.add(trimesh.creation.icosphere(subdivisions=int(self.rng.integers(1, 3)), radius=radius), at, color)

    def torus(self, major, minor, at, axis="y", color=None) -> None:
        self.add(_orient(trimesh.creation.torus(major_radius=major, minor_radius=minor,
                                                major_sections=self.sections(), minor_sections=8), axis), at, color)

    def legs(self, n, spread_x, spread_z, height, thick, top_y=None, round_legs=None) -> None:
        round_legs = self.rng.random() < 0.5 if round_legs is None else round_legs
        top_y = height if top_y is None else top_y
        corners = [(sx * spread_x, sz * spread_z) for sx in (-1, 1) for sz in (-1, 1)]
        if n == 3:
            corners = [(spread_x * np.cos(a), spread_z * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 4)[:3]]
        elif n == 6:
            corners += [(0.0, -spread_z), (0.0, spread_z)]
        color = int(self.rng.integers(len(PALETTE)))
        for x, z in corners:
            if round_legs:
                self.cylinder(thick / 2, height, (x, top_y - height / 2, z), color=color)
            else:
                self.box((thick, height, thick), (x, top_y - height / 2, z), color=color)


def _orient(mesh: trimesh.Trimesh, axis: str) -> trimesh.Trimesh:
    """trimesh builds cylinders, cones and capsules along +z; turn them to ``axis``."""
    if axis == "y":
        mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    elif axis == "x":
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    return mesh


def _chair(p: _Parts, r: np.random.Generator) -> None:
    w, d, h, t = r.uniform(0.4, 0.6), r.uniform(0.4, 0.6), r.uniform(0.4, 0.5), r.uniform(0.04, 0.08)
    p.part = "seat"
    p.box((w, t, d), (0, h, 0))
    p.part = "leg"
    p.legs(4, w / 2 - 0.03, d / 2 - 0.03, h - t / 2, r.uniform(0.03, 0.06))
    back_h = r.uniform(0.35, 0.7)
    p.part = "back"
    p.box((w, back_h, r.uniform(0.03, 0.06)), (0, h + back_h / 2, -d / 2))
    p.part = "arm"
    if r.random() < 0.4:
        for s in (-1, 1):
            p.box((0.04, 0.04, d), (s * w / 2, h + 0.22, 0))
            p.box((0.04, 0.22, 0.04), (s * w / 2, h + 0.11, d / 2 - 0.04))


def _table(p: _Parts, r: np.random.Generator) -> None:
    w, d, h, t = r.uniform(0.8, 1.6), r.uniform(0.6, 1.0), r.uniform(0.6, 0.8), r.uniform(0.03, 0.07)
    if r.random() < 0.3:
        rad = min(w, d) / 2
        p.part = "top"
        p.cylinder(rad, t, (0, h, 0))
        p.part = "leg"  # a pedestal and its foot
        p.cylinder(r.uniform(0.04, 0.08), h, (0, h / 2, 0))
        p.cylinder(rad * r.uniform(0.3, 0.6), 0.04, (0, 0.02, 0))
    else:
        p.part = "top"
        p.box((w, t, d), (0, h, 0))
        p.part = "leg"
        p.legs(4, w / 2 - 0.05, d / 2 - 0.05, h - t / 2, r.uniform(0.04, 0.08))
        p.part = "shelf"
        if r.random() < 0.3:
            p.box((w * 0.9, t, d * 0.9), (0, h * 0.3, 0))


def _stool(p: _Parts, r: np.random.Generator) -> None:
    h, rad, t = r.uniform(0.45, 0.8), r.uniform(0.15, 0.25), r.uniform(0.04, 0.08)
    p.part = "seat"
    if r.random() < 0.7:
        p.cylinder(rad, t, (0, h, 0))
    else:
        p.box((2 * rad, t, 2 * rad), (0, h, 0))
    n = int(r.choice([3, 4]))
    p.part = "leg"
    p.legs(n, rad * 0.8, rad * 0.8, h - t / 2, r.uniform(0.025, 0.05))
    p.part = "footrest"
    if r.random() < 0.4:
        p.torus(rad * 0.85, 0.012, (0, h * 0.35, 0))


def _bench(p: _Parts, r: np.random.Generator) -> None:
    w, d, h, t = r.uniform(1.2, 2.0), r.uniform(0.35, 0.5), r.uniform(0.4, 0.5), r.uniform(0.04, 0.08)
    p.part = "seat"
    p.box((w, t, d), (0, h, 0))
    p.part = "leg"  # legs or side panels
    if r.random() < 0.3:
        for s in (-1, 1):
            p.box((0.05, h, d * 0.9), (s * (w / 2 - 0.1), h / 2, 0))
    else:
        p.legs(int(r.choice([4, 6])), w / 2 - 0.06, d / 2 - 0.04, h - t / 2, r.uniform(0.04, 0.07))
    p.part = "back"
    if r.random() < 0.5:
        back_h = r.uniform(0.3, 0.5)
        p.box((w, back_h, 0.04), (0, h + back_h / 2 + 0.05, -d / 2))


def _shelf(p: _Parts, r: np.random.Generator) -> None:
    w, d, h = r.uniform(0.6, 1.2), r.uniform(0.25, 0.45), r.uniform(0.8, 1.8)
    p.part = "side"
    for s in (-1, 1):
        p.box((0.03, h, d), (s * w / 2, h / 2, 0))
    p.part = "board"
    for y in np.linspace(0.02, h - 0.02, int(r.integers(3, 7))):
        p.box((w, 0.025, d), (0, y, 0))
    p.part = "back"
    if r.random() < 0.5:
        p.box((w, h, 0.015), (0, h / 2, -d / 2))


def _lamp(p: _Parts, r: np.random.Generator) -> None:
    h = r.uniform(0.8, 1.5)
    p.part = "base"
    if r.random() < 0.6:
        p.cylinder(r.uniform(0.12, 0.22), 0.04, (0, 0.02, 0))
    else:
        p.box((0.3, 0.04, 0.3), (0, 0.02, 0))
    p.part = "stem"
    p.cylinder(r.uniform(0.012, 0.025), h, (0, h / 2, 0))
    shade_r, shade_h = r.uniform(0.12, 0.25), r.uniform(0.15, 0.3)
    p.part = "shade"  # with its bulb
    if r.random() < 0.6:
        p.cone(shade_r, shade_h, (0, h - shade_h * 0.3, 0))
    else:
        p.cylinder(shade_r, shade_h, (0, h, 0))
    if r.random() < 0.3:
        p.sphere(0.05, (0, h - 0.05, 0))


def _mug(p: _Parts, r: np.random.Generator) -> None:
    rad, h = r.uniform(0.3, 0.45), r.uniform(0.6, 1.0)
    p.part = "body"
    p.cylinder(rad, h, (0, h / 2, 0))
    p.part = "handle"
    p.torus(h * r.uniform(0.25, 0.35), r.uniform(0.03, 0.06), (rad, h / 2, 0), axis="z")


def _bottle(p: _Parts, r: np.random.Generator) -> None:
    rad, h = r.uniform(0.15, 0.25), r.uniform(0.5, 0.8)
    p.part = "body"
    p.cylinder(rad, h, (0, h / 2, 0))
    shoulder = r.uniform(0.1, 0.2)
    p.part = "shoulder"
    p.cone(rad, shoulder, (0, h, 0))
    neck_r, neck_h = rad * r.uniform(0.3, 0.45), r.uniform(0.1, 0.25)
    p.part = "neck"  # with its lip
    p.cylinder(neck_r, neck_h, (0, h + shoulder * 0.6 + neck_h / 2, 0))
    if r.random() < 0.7:
        p.cylinder(neck_r * 1.15, 0.05, (0, h + shoulder * 0.6 + neck_h, 0))


def _airplane(p: _Parts, r: np.random.Generator) -> None:
    length, rad, span = r.uniform(1.5, 2.5), r.uniform(0.1, 0.18), r.uniform(1.2, 2.2)
    p.part = "fuselage"
    p.capsule(rad, length, (0, 0, 0), axis="x")
    p.part = "wing"
    p.box((r.uniform(0.25, 0.45), 0.03, span), (r.uniform(-0.2, 0.2), 0, 0))
    tail = -length / 2
    p.part = "tail"
    p.box((0.2, 0.02, span * r.uniform(0.25, 0.4)), (tail, 0.02, 0))
    p.box((0.22, r.uniform(0.2, 0.35), 0.02), (tail, 0.15, 0))
    p.part = "engine"
    for z in [s * span * f for f in (0.2, 0.35)[: int(r.choice([0, 1, 2]))] for s in (-1, 1)]:
        p.cylinder(0.06, 0.25, (0.05, -0.08, z), axis="x")


def _car(p: _Parts, r: np.random.Generator) -> None:
    length, w, h = r.uniform(1.6, 2.2), r.uniform(0.7, 0.9), r.uniform(0.3, 0.45)
    wheel = r.uniform(0.15, 0.22)
    p.part = "body"
    p.box((length, h, w), (0, wheel + h / 2, 0))
    cabin = length * r.uniform(0.4, 0.6)
    p.part = "cabin"
    p.box((cabin, h * r.uniform(0.6, 0.9), w * 0.9), (r.uniform(-0.2, 0.1), wheel + h * 1.3, 0))
    color = 7
    p.part = "wheel"
    for x in (-1, 1):
        for z in (-1, 1):
            p.cylinder(wheel, 0.12, (x * length * 0.33, wheel, z * w / 2), axis="z", color=color)


BUILDERS: dict[str, Callable[[_Parts, np.random.Generator], None]] = {
    "airplane": _airplane, "bench": _bench, "bottle": _bottle, "car": _car, "chair": _chair,
    "lamp": _lamp, "mug": _mug, "shelf": _shelf, "stool": _stool, "table": _table,
}


PARTS = {  # the semantic parts of each category, in part-id order (global ids: categories in CATEGORIES order)
    "airplane": ("fuselage", "wing", "tail", "engine"), "bench": ("seat", "leg", "back"),
    "bottle": ("body", "shoulder", "neck"), "car": ("body", "cabin", "wheel"), "chair": ("seat", "leg", "back", "arm"),
    "lamp": ("base", "stem", "shade"), "mug": ("body", "handle"), "shelf": ("side", "board", "back"),
    "stool": ("seat", "leg", "footrest"), "table": ("top", "leg", "shelf"),
}


def part_metadata() -> dict:
    """``{"names": ["airplane/fuselage", ...], "class_parts": {"airplane": [0, 1, 2, 3], ...}}`` (global ids)."""
    names, class_parts = [], {}
    for category in CATEGORIES:
        class_parts[category] = list(range(len(names), len(names) + len(PARTS[category])))
        names += [f"{category}/{part}" for part in PARTS[category]]
    return {"names": names, "class_parts": class_parts}


def make_mesh(category: str, index: int, seed: int = 0, noise: float = 0.004) -> trimesh.Trimesh:
    """The demo shape ``index`` of ``category``: same arguments, same mesh, on any machine.

    ``mesh.metadata["face_part"]`` holds the global part id of every face (see :func:`part_metadata`).
    """
    rng = np.random.default_rng([seed, zlib.crc32(category.encode()), index])
    parts = _Parts(rng)
    BUILDERS[category](parts, rng)
    mesh = trimesh.util.concatenate(parts.meshes)
    first = part_metadata()["class_parts"][category][0]
    mesh.metadata["face_part"] = np.concatenate([np.full(len(m.faces), first + PARTS[category].index(name), np.uint8)
                                                 for m, name in zip(parts.meshes, parts.face_parts)])
    mesh.apply_transform(trimesh.transformations.rotation_matrix(rng.uniform(0, 2 * np.pi), [0, 1, 0]))
    scale = float(np.ptp(mesh.vertices, axis=0).max())
    mesh.vertices += rng.normal(scale=noise * scale, size=mesh.vertices.shape)
    return mesh
