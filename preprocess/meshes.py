"""Loading one shape's mesh, refusing broken ones with a specific reason, and normalising it.

Every problem with an input raises :class:`BadInput` whose message starts with
its kind (the status table groups reasons by the text before the first colon):
``outside dataset root``, ``missing file``, ``empty file``, ``unparsable mesh``,
``truncated file``, ``bad face index``, ``no faces``, ``non-finite vertices``,
``zero-area mesh``. Shapes that are usable but imperfect are built with a note:
``texture missing``, ``non-manifold``.

Why the checks before and after trimesh: trimesh is lenient. It loads the
first half of a truncated OFF or ASCII PLY as if it were whole, maps OBJ index
0 onto a real vertex, and returns an empty scene for a cut binary STL. Each
format's header (or, for OBJ, its face lines) says what the file must hold,
and the loaded mesh is compared with it. An OBJ has no header: one whose last
line has no newline and cannot be whole (``f 1 2``, ``v 0.1 0.2``, ``v 0 0 1e``)
was cut off in the middle of it.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from typing import NamedTuple

import numpy as np
import trimesh
import trimesh.resolvers

from preprocess.errors import BadInput
from preprocess.input_files import checked_path, is_inside
from preprocess.sources import MeshItem

MIN_AREA = 1e-12
__all__ = ["BadInput", "load_mesh", "check_mesh", "normalize_unit_sphere"]


def load_mesh(item: MeshItem, root: str | None = None) -> tuple[trimesh.Trimesh, list[str]]:
    """The item's mesh (a multi-mesh scene is merged) and notes on what was worked around.

    ``root``: the dataset root; the mesh and every file it references must resolve inside it.
    """
    if item.procedural is not None:
        from preprocess.sources.demo import make_mesh

        return make_mesh(**item.procedural), []
    path = checked_path(item.path or "", root)
    name = os.path.basename(path)
    header = read_header(path)
    if header.nbytes is not None and os.path.getsize(path) < header.nbytes:
        raise BadInput(f"truncated file: {name} holds {os.path.getsize(path)} bytes, its header promises "
                       f"{header.nbytes}")
    texture_missing = check_obj(path, root) if path.lower().endswith(".obj") else False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # trimesh warns on missing textures; we check that ourselves
            loaded = trimesh.load(path, force="scene", process=False, resolver=_RootResolver(path, root))
    except BadInput:
        raise
    except Exception as e:  # trimesh raises many types on garbage input
        kind = "truncated file" if header.known else "unparsable mesh"  # a header parsed: the body broke
        raise BadInput(f"{kind}: {name}: {type(e).__name__}: {e}") from None
    mesh = _merge(loaded, name)
    if header.vertices is not None and len(mesh.vertices) < header.vertices:
        raise BadInput(f"truncated file: {name} declares {header.vertices} vertices, holds {len(mesh.vertices)}")
    if header.faces is not None and len(mesh.faces) < header.faces:
        raise BadInput(f"truncated file: {name} declares {header.faces} faces, holds {len(mesh.faces)}")
    check_mesh(mesh, name)
    notes = ["texture missing: rendered without it"] if texture_missing else []
    bad_edges = non_manifold_edges(mesh)
    if bad_edges:
        notes.append(f"non-manifold: {bad_edges} edges shared by more than two faces (surface sampled as is)")
    return mesh, notes


class _RootResolver(trimesh.resolvers.FilePathResolver):
    """trimesh's file resolver (materials, textures), refusing any file outside the dataset root."""

    def __init__(self, path: str, root: str | None) -> None:
        super().__init__(path)
        self.folder = os.path.dirname(path)
        self.dataset_root = root

    def get(self, name: str):
        if self.dataset_root is not None and not is_inside(os.path.join(self.folder, name.strip()),
                                                           self.dataset_root):
            raise BadInput(f"outside dataset root: the mesh references {name.strip()!r}, which resolves to "
                           f"{os.path.realpath(os.path.join(self.folder, name.strip()))}")
        return super().get(name)


class Header(NamedTuple):
    """What a mesh file's header promises (None where the format does not say)."""

    vertices: int | None = None
    faces: int | None = None
    nbytes: int | None = None

    @property
    def known(self) -> bool:
        return any(x is not None for x in self)


def read_header(path: str) -> Header:
    """The counts and length promised by an OFF, PLY, binary STL or GLB header (nothing for other files)."""
    ext = os.path.splitext(path)[1].lower()
    with open(path, "rb") as f:
        head = f.read(4096)
    if ext == ".off":
        tokens = re.sub(rb"#[^\n]*", b"", head).split()
        if tokens[:1] in ([b"OFF"], [b"NOFF"], [b"COFF"]) and len(tokens) >= 3:
            try:
                return Header(int(tokens[1]), int(tokens[2]))
            except ValueError:
                return Header()
    elif ext == ".ply" and head.startswith(b"ply"):
        v = re.search(rb"^element\s+vertex\s+(\d+)", head, re.M)
        f = re.search(rb"^element\s+face\s+(\d+)", head, re.M)
        return Header(int(v.group(1)) if v else None, int(f.group(1)) if f else None)
    elif ext == ".stl" and len(head) >= 84 and not head.lstrip().lower().startswith(b"solid"):
        (n,) = struct.unpack("<I", head[80:84])  # binary STL: 80-byte header, count, 50 bytes per triangle
        return Header(None, n, 84 + 50 * n)
    elif ext == ".glb" and head[:4] == b"glTF" and len(head) >= 12:
        (length,) = struct.unpack("<I", head[8:12])
        return Header(None, None, length)
    return Header()


def check_obj(path: str, root: str | None) -> bool:
    """Check an OBJ in one read; True when a diffuse texture its materials name is missing.

    Vertex indices start at 1 (negative ones count back); 0 or an index past the vertex count is an error.
    Material libraries and their texture maps must resolve inside the dataset root (trimesh skips a refused
    material silently, so the reason is found here). Regex scans over the bytes: OBJ files can be large.
    """
    with open(path, "rb") as f:
        data = f.read()
    name = os.path.basename(path)
    cut = obj_cut_line(data)
    if cut:
        last = data.count(b"\n") + 1
        raise BadInput(f"truncated file: {name} ends in the middle of line {last} ({cut})")
    num_vertices = len(re.findall(rb"^[ \t]*v[ \t]", data, re.M))
    faces = b"\n".join(re.findall(rb"^[ \t]*f[ \t]+([^\r\n]*)", data, re.M))
    index = np.array(re.findall(rb"(?:^|[ \t])(-?\d+)", faces, re.M), dtype=np.int64)  # vertex of each v/vt/vn
    bad = (index == 0) | (np.abs(index) > num_vertices)
    if bad.any():
        value = int(index[np.argmax(bad)])
        why = "OBJ indices start at 1" if value == 0 else f"the file has {num_vertices} vertices"
        raise BadInput(f"bad face index: {name} line {_first_face_line_with(data, value)}: vertex index {value} "
                       f"({why})")
    missing = False
    for mtl in _directives(data, rb"mtllib"):
        mtl_path = os.path.join(os.path.dirname(path), mtl)
        if root is not None and not is_inside(mtl_path, root):
            raise BadInput(f"outside dataset root: {name} names the material library {mtl!r}, which resolves to "
                           f"{os.path.realpath(mtl_path)}")
        for image in _directives(_read_or_empty(mtl_path), rb"map_Kd"):
            image_path = os.path.join(os.path.dirname(mtl_path), image.split()[-1])
            if root is not None and not is_inside(image_path, root):
                raise BadInput(f"outside dataset root: {mtl} names the texture {image!r}, which resolves to "
                               f"{os.path.realpath(image_path)}")
            missing |= not os.path.exists(image_path)
    return missing


_OBJ_VALUES = {b"v": (3, "a vertex needs 3 coordinates"), b"vn": (3, "a normal needs 3 coordinates"),
               b"vt": (1, "a texture coordinate needs a value"), b"f": (3, "a face needs 3 vertices")}
_OBJ_FACE_VERTEX = re.compile(rb"-?\d+(?:/-?\d+|/-?\d*/-?\d+)?")  # v, v/vt, v/vt/vn or v//vn


def obj_cut_line(data: bytes) -> str | None:
    """Why the last line of an OBJ was evidently cut off (an interrupted copy), or None.

    Only a file without a final newline can end mid-line, and only a last line that cannot be whole counts: a
    vertex, normal, texture-coordinate or face line with too few values (``v 0.1 0.2``, ``f 1 2``) or with a
    value that does not parse (``v 0 0 1e``, ``f 1 2 3/``). A complete last line without a newline is fine.
    """
    if not data or data.endswith((b"\n", b"\r")):
        return None
    line = data[max(data.rfind(b"\n"), data.rfind(b"\r")) + 1:]
    keyword, *values = line.split(b"#", 1)[0].split() or [b""]
    if keyword not in _OBJ_VALUES:
        return None
    need, why = _OBJ_VALUES[keyword]
    text = line.strip().decode(errors="replace")
    for value in values:
        whole = bool(_OBJ_FACE_VERTEX.fullmatch(value)) if keyword == b"f" else _is_number(value)
        if not whole:
            return f"{text!r}: {value.decode(errors='replace')!r} is not a {'vertex' if keyword == b'f' else 'number'}"
    return f"{text!r}: {why}" if len(values) < need else None


def _is_number(value: bytes) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _first_face_line_with(data: bytes, value: int) -> int:
    token = re.compile(rb"(?:^|[ \t])" + str(value).encode() + rb"(?=[/ \t]|$)")
    for number, line in enumerate(data.splitlines(), start=1):
        if line.lstrip().startswith(b"f ") and token.search(line[line.index(b"f") + 1:]):
            return number
    return 0


def _merge(loaded: trimesh.Scene | trimesh.Trimesh, name: str) -> trimesh.Trimesh:
    if isinstance(loaded, trimesh.Trimesh):
        return loaded
    geoms = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)] if isinstance(loaded, trimesh.Scene) else []
    if not geoms:
        raise BadInput(f"no faces: {name} holds no triangles")
    if len(geoms) == 1:
        return geoms[0]
    try:
        return trimesh.util.concatenate(geoms)
    except Exception:  # mixed texture / colour visuals do not concatenate; keep geometry
        return trimesh.util.concatenate([trimesh.Trimesh(g.vertices, g.faces, process=False) for g in geoms])


def _read_or_empty(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # a missing .mtl: trimesh renders without it
        return b""


def _directives(data: bytes, keyword: bytes) -> list[str]:
    """Arguments of every ``keyword ...`` line of a text file's bytes."""
    pattern = rb"^[ \t]*" + keyword + rb"[ \t]+(.+?)[ \t]*\r?$"
    return [m.decode(errors="replace") for m in re.findall(pattern, data, flags=re.M | re.I)]


def check_mesh(mesh: trimesh.Trimesh, name: str = "mesh") -> None:
    """Refuse meshes that cannot give points or renders."""
    if len(mesh.faces) == 0:
        raise BadInput(f"no faces: {name} holds no triangles")
    bad = ~np.isfinite(mesh.vertices).all(axis=1)
    if bad.any():
        raise BadInput(f"non-finite vertices: {name} has {int(bad.sum())}")
    if mesh.faces.max() >= len(mesh.vertices) or mesh.faces.min() < 0:
        raise BadInput(f"bad face index: {name} has faces indexing vertices that do not exist")
    area = float(mesh.area)
    extent = float(np.ptp(mesh.vertices, axis=0).max())
    if not np.isfinite(area) or area <= MIN_AREA * max(extent, 1.0) ** 2:
        raise BadInput(f"zero-area mesh: {name} has total surface area {area:.3g}")


def non_manifold_edges(mesh: trimesh.Trimesh) -> int:
    """How many edges are shared by more than two faces (usable for sampling, but worth a note)."""
    if len(mesh.faces) == 0:
        return 0
    _, counts = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    return int((counts > 2).sum())


def normalize_unit_sphere(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, np.ndarray, float]:
    """Centre on the bounding-box centre and scale so every vertex lies in the unit sphere.

    Returns the moved mesh and (centre, scale) such that ``new = (old - centre) / scale``.
    Done in float64, so huge coordinates lose nothing before the scale.
    """
    v = np.asarray(mesh.vertices, dtype=np.float64)
    centre = (v.min(axis=0) + v.max(axis=0)) / 2
    scale = float(np.linalg.norm(v - centre, axis=1).max())
    if not np.isfinite(scale) or scale <= 0:
        raise BadInput("zero-area mesh: it collapses to a point")
    out = mesh.copy()
    out.vertices = (v - centre) / scale
    return out, centre, scale
