"""Small datasets on disk in the real layouts (ShapeNetCore v2, ModelNet40, a mesh folder), for tests."""

from __future__ import annotations

import json
import os

import numpy as np
import trimesh
from PIL import Image

from preprocess.sources.demo import make_mesh

CUBE_OBJ = """mtllib model_normalized.mtl
v -0.5 -0.5 0.5
v 0.5 -0.5 0.5
v 0.5 0.5 0.5
v -0.5 0.5 0.5
v -0.5 -0.5 -0.5
v 0.5 -0.5 -0.5
v 0.5 0.5 -0.5
v -0.5 0.5 -0.5
vt 0 0
vt 1 0
vt 1 1
vt 0 1
usemtl skin
f 1/1 2/2 3/3 4/4
f 6/1 5/2 8/3 7/4
f 5/1 1/2 4/3 8/4
f 2/1 6/2 7/3 3/4
f 4/1 3/2 7/3 8/4
f 5/1 6/2 2/3 1/4
"""


def textured_cube(folder: str, texture: str | None = "texture.png", color=(220, 20, 20)) -> str:
    """An OBJ cube with an .mtl whose diffuse map is a solid-colour PNG (or a missing file)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "model_normalized.obj"), "w") as f:
        f.write(CUBE_OBJ)
    with open(os.path.join(folder, "model_normalized.mtl"), "w") as f:
        f.write("newmtl skin\nKa 1 1 1\nKd 1 1 1\n" + (f"map_Kd {texture}\n" if texture else ""))
    if texture == "texture.png":
        Image.fromarray(np.full((8, 8, 3), color, np.uint8)).save(os.path.join(folder, texture))
    return os.path.join(folder, "model_normalized.obj")


def shapenet_fixture(root: str) -> dict[str, str]:
    """Two synsets, three models each; the first chair is textured red. Returns id -> category."""
    synsets = {"03001627": "chair", "04379243": "table"}
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "taxonomy.json"), "w") as f:
        json.dump([{"synsetId": s, "name": f"{n},{n}s", "children": []} for s, n in synsets.items()], f)
    ids = {}
    for synset, name in synsets.items():
        for i in range(3):
            model_id = f"{name}{i:02d}abc"
            folder = os.path.join(root, synset, model_id, "models")
            os.makedirs(folder, exist_ok=True)
            if name == "chair" and i == 0:
                textured_cube(folder)
            else:
                make_mesh(name, i).export(os.path.join(folder, "model_normalized.obj"))
            ids[f"{synset}/{model_id}"] = name
    return ids


def modelnet_fixture(root: str) -> None:
    """Two classes with train and test OFF files (three train, one test each)."""
    for cls in ("bottle", "lamp"):
        for split, count in (("train", 3), ("test", 1)):
            folder = os.path.join(root, cls, split)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                index = i + (10 if split == "test" else 0)
                make_mesh(cls, index).export(os.path.join(folder, f"{cls}_{index + 1:04d}.off"))


def bad_meshes_fixture(root: str) -> dict[str, str]:
    """A mesh folder where almost everything is wrong. Returns relative id -> expected outcome."""
    os.makedirs(root, exist_ok=True)
    good = os.path.join(root, "good")
    bad = os.path.join(root, "bad")
    os.makedirs(good)
    os.makedirs(bad)
    make_mesh("mug", 0).export(os.path.join(good, "mug.ply"))
    cube = trimesh.creation.box()
    (cube.copy().apply_scale(1e12)).export(os.path.join(good, "huge.stl"))
    scene = trimesh.Scene([make_mesh("car", 0), trimesh.creation.icosphere().apply_translation([3, 0, 0])])
    scene.export(os.path.join(good, "scene.glb"))
    textured_cube(os.path.join(good, "untextured"), texture="missing.png")
    os.makedirs(os.path.join(good, "deep", "a\\b"))
    cube.export(os.path.join(good, "deep", "a\\b", "odd name #1.obj"))
    with open(os.path.join(bad, "garbage.ply"), "wb") as f:
        f.write(os.urandom(3000))
    with open(os.path.join(bad, "nofaces.obj"), "w") as f:
        f.write("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with open(os.path.join(bad, "nan.obj"), "w") as f:
        f.write("v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n")
    with open(os.path.join(bad, "flat.obj"), "w") as f:
        f.write("v 0 0 0\nv 1 0 0\nv 2 0 0\nv 3 0 0\nf 1 2 3\nf 2 3 4\n")
    with open(os.path.join(bad, "empty.off"), "w") as f:
        f.write("")
    tetra = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n"
    with open(os.path.join(bad, "index0.obj"), "w") as f:
        f.write(tetra + "f 1 2 3\nf 0 2 4\n")  # trimesh alone maps 0 onto a real vertex
    with open(os.path.join(bad, "index9.obj"), "w") as f:
        f.write(tetra + "f 1 2 3\nf 1/1 3/1 9/1\n")
    with open(os.path.join(bad, "cut.off"), "w") as f:  # header promises 4 faces, the file stops after 2
        f.write("OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n")
    with open(os.path.join(bad, "cut.ply"), "w") as f:
        f.write("ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
                "property float z\nelement face 4\nproperty list uchar int vertex_indices\nend_header\n"
                "0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n")
    cube.export(os.path.join(bad, "cut.stl"))
    with open(os.path.join(bad, "cut.stl"), "r+b") as f:
        f.truncate(84 + 50 * 5)  # a binary STL of 12 triangles cut after 5
    with open(os.path.join(bad, "cut.obj"), "w") as f:  # an interrupted copy: the last face line is cut
        f.write(tetra + "f 1 2 3\nf 1 2")
    with open(os.path.join(good, "no_newline.obj"), "w") as f:  # whole, only without a final newline
        f.write(tetra + "f 1 2 3\nf 1 2 4\nf 1 3 4")
    outside = os.path.join(os.path.dirname(os.path.abspath(root)), "outside_the_root.obj")
    with open(outside, "w") as f:
        f.write(tetra + "f 1 2 3\n")
    os.symlink(outside, os.path.join(bad, "link_out.obj"))
    with open(os.path.join(bad, "mtl_out.obj"), "w") as f:  # a material library outside the root
        f.write("mtllib ../../outside.mtl\n" + tetra + "f 1 2 3\nf 1 2 4\n")
    with open(os.path.join(os.path.dirname(os.path.abspath(root)), "outside.mtl"), "w") as f:
        f.write("newmtl x\nKd 1 0 0\n")
    with open(os.path.join(good, "fin.obj"), "w") as f:  # three triangles on one edge: usable, noted
        f.write(tetra + "v 1 1 1\nf 1 2 3\nf 1 2 4\nf 1 2 5\n")
    return {
        "good/mug.ply": "done", "good/huge.stl": "done", "good/scene.glb": "done",
        "good/untextured/model_normalized.obj": "done, texture missing",
        "good/deep/a\\b/odd name #1.obj": "done", "good/fin.obj": "done, non-manifold",
        "bad/garbage.ply": "unparsable mesh: garbage.ply", "bad/nofaces.obj": "no faces: nofaces.obj",
        "bad/nan.obj": "non-finite vertices: nan.obj", "bad/flat.obj": "zero-area mesh: flat.obj",
        "bad/empty.off": "empty file: ", "bad/index0.obj": "bad face index: index0.obj line 6: vertex index 0",
        "bad/index9.obj": "bad face index: index9.obj line 6: vertex index 9",
        "bad/cut.off": "truncated file: cut.off declares 4 faces, holds 2",
        "bad/cut.ply": "truncated file: cut.ply declares 4 faces, holds 2",
        "bad/cut.stl": "truncated file: cut.stl holds 334 bytes, its header promises 684",
        "bad/cut.obj": "truncated file: cut.obj ends in the middle of line 6 ('f 1 2': a face needs 3 vertices)",
        "good/no_newline.obj": "done",
        "bad/link_out.obj": "outside dataset root: ", "bad/mtl_out.obj": "outside dataset root: ",
    }
