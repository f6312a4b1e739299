"""Loading one shape's mesh, refusing broken ones with a reason, and normalising it.

Every problem with an input raises :class:`BadInput`; the builder records its
message as the row's failure reason and goes on with the next shape.
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import trimesh

from preprocess.sources import MeshItem

MIN_AREA = 1e-12


class BadInput(Exception):
    """An input that cannot become a row; the message is stored as the row's reason."""


def load_mesh(item: MeshItem) -> tuple[trimesh.Trimesh, list[str]]:
    """The item's mesh (a multi-mesh scene is merged) and notes on what was worked around."""
    if item.procedural is not None:
        from preprocess.sources.demo import make_mesh

        return make_mesh(**item.procedural), []
    path = item.path or ""
    if not os.path.exists(path):
        raise BadInput(f"missing file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # trimesh warns on missing textures; we check that ourselves
            loaded = trimesh.load(path, force="scene", process=False)
    except Exception as e:  # trimesh raises many types on garbage input
        raise BadInput(f"unreadable mesh file {os.path.basename(path)}: {type(e).__name__}: {e}") from None
    mesh = _merge(loaded, path)
    check_mesh(mesh)
    notes = ["texture missing: rendered without it"] if _has_missing_texture(path) else []
    return mesh, notes


def _merge(loaded: trimesh.Scene | trimesh.Trimesh, path: str) -> trimesh.Trimesh:
    if isinstance(loaded, trimesh.Trimesh):
        return loaded
    geoms = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)] if isinstance(loaded, trimesh.Scene) else []
    if not geoms:
        raise BadInput(f"mesh has no faces ({os.path.basename(path)} holds no triangles)")
    if len(geoms) == 1:
        return geoms[0]
    try:
        return trimesh.util.concatenate(geoms)
    except Exception:  # mixed texture / colour visuals do not concatenate; keep geometry
        return trimesh.util.concatenate([trimesh.Trimesh(g.vertices, g.faces, process=False) for g in geoms])


def _has_missing_texture(path: str) -> bool:
    """An .obj whose .mtl names a diffuse map that is not there (a regex scan: OBJ files can be large)."""
    if not path.lower().endswith(".obj"):
        return False
    folder = os.path.dirname(path)
    for mtl in _directives(path, rb"mtllib"):
        mtl_path = os.path.join(folder, mtl)
        for image in _directives(mtl_path, rb"map_Kd"):
            if not os.path.exists(os.path.join(os.path.dirname(mtl_path), image.split()[-1])):
                return True
    return False


def _directives(path: str, keyword: bytes) -> list[str]:
    """Arguments of every ``keyword ...`` line of a text file (missing file: none)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    pattern = rb"^[ \t]*" + keyword + rb"[ \t]+(.+?)[ \t]*\r?$"
    return [m.decode(errors="replace") for m in re.findall(pattern, data, flags=re.M | re.I)]


def check_mesh(mesh: trimesh.Trimesh) -> None:
    """Refuse meshes that cannot give points or renders."""
    if len(mesh.faces) == 0:
        raise BadInput("mesh has no faces")
    if not np.isfinite(mesh.vertices).all():
        raise BadInput(f"mesh has {int((~np.isfinite(mesh.vertices)).any(axis=1).sum())} non-finite vertices")
    if mesh.faces.max() >= len(mesh.vertices) or mesh.faces.min() < 0:
        raise BadInput("mesh faces index vertices that do not exist")
    area = float(mesh.area)
    extent = float(np.ptp(mesh.vertices, axis=0).max())
    if not np.isfinite(area) or area <= MIN_AREA * max(extent, 1.0) ** 2:
        raise BadInput(f"degenerate mesh: total surface area {area:.3g}")


def normalize_unit_sphere(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, np.ndarray, float]:
    """Centre on the bounding-box centre and scale so every vertex lies in the unit sphere.

    Returns the moved mesh and (centre, scale) such that ``new = (old - centre) / scale``.
    Done in float64, so huge coordinates lose nothing before the scale.
    """
    v = np.asarray(mesh.vertices, dtype=np.float64)
    centre = (v.min(axis=0) + v.max(axis=0)) / 2
    scale = float(np.linalg.norm(v - centre, axis=1).max())
    if not np.isfinite(scale) or scale <= 0:
        raise BadInput("mesh collapses to a point")
    out = mesh.copy()
    out.vertices = (v - centre) / scale
    return out, centre, scale
