"""Surface points: area-weighted samples with their face normals (trimesh)."""

from __future__ import annotations

import zlib

import numpy as np
import trimesh


def seed_for(item_id: str, seed: int) -> int:
    """A per-shape seed from its id: the same points whichever worker or run samples them."""
    return (zlib.crc32(item_id.encode()) ^ (seed * 0x9E3779B1)) & 0xFFFFFFFF


def sample_points(mesh: trimesh.Trimesh, num_points: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P, 3) points uniformly by area on the surface, (P, 3) unit normals of their faces and (P,) the faces."""
    points, face_index = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    normals = mesh.face_normals[face_index]
    return np.asarray(points, dtype=np.float32), np.asarray(normals, dtype=np.float32), np.asarray(face_index)
