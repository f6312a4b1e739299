"""Point-cloud augmentations, vectorised over clouds (R, N, 3), seeded by a numpy Generator.

- ``pretrain`` (Point-MAE / ULIP pre-training): rotation about +y, anisotropic scale, translation, jitter;
- ``scale-translate`` (Point-MAE's ``PointcloudScaleAndTranslate``, ModelNet40 fine-tuning and voting);
- ``rotate`` (ReCon / ACT's ``PointcloudRotate`` about the up axis, ScanObjectNN fine-tuning);
- ``scale-shift`` (PointNet++'s ``random_scale_point_cloud`` 0.8-1.25 and ``shift_point_cloud`` +-0.1, which
  Point-MAE's part segmentation trains with).
"""

from __future__ import annotations

import numpy as np
import torch

AUGMENTATIONS = ("pretrain", "scale-translate", "rotate", "scale-shift")


def rotate_up(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random rotation of each cloud about +y (the up axis of the caches)."""
    r = points.shape[0]
    a = rng.uniform(0, 2 * np.pi, r)
    c, s = np.cos(a), np.sin(a)
    rot = np.zeros((r, 3, 3), np.float32)
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = c, -s, 1, s, c
    return points.astype(np.float32, copy=False) @ rot                    # (R, N, 3) @ (R, 3, 3)


def scale_and_translate(points: np.ndarray, rng: np.random.Generator, scale=(2 / 3, 3 / 2),
                        translate=0.2) -> np.ndarray:
    """Per cloud: a random scale per axis in ``scale``, then a random shift per axis in +-``translate``."""
    r = points.shape[0]
    p = points.astype(np.float32, copy=False) * rng.uniform(*scale, size=(r, 1, 3)).astype(np.float32)
    p += rng.uniform(-translate, translate, (r, 1, 3)).astype(np.float32)  # float32 throughout
    return p


def augment_batch(points: np.ndarray, rng: np.random.Generator, kind: str = "pretrain", jitter_sigma=0.01,
                  jitter_clip=0.05) -> np.ndarray:
    """``points`` (R, N, 3) augmented per cloud with one of :data:`AUGMENTATIONS`."""
    if kind == "scale-translate":
        return scale_and_translate(points, rng)
    if kind == "rotate":
        return rotate_up(points, rng)
    if kind == "scale-shift":
        r = points.shape[0]
        p = points.astype(np.float32, copy=False) * rng.uniform(0.8, 1.25, (r, 1, 1)).astype(np.float32)
        return p + rng.uniform(-0.1, 0.1, (r, 1, 3)).astype(np.float32)
    if kind != "pretrain":
        raise ValueError(f"augmentation is one of {', '.join(AUGMENTATIONS)}, got {kind!r}")
    p = scale_and_translate(rotate_up(points, rng), rng)
    # torch's normal sampler is ~3x faster than numpy's; seeded from rng, so still reproducible
    generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
    noise = torch.randn(p.shape, generator=generator).numpy()
    noise *= np.float32(jitter_sigma)
    p += np.clip(noise, -jitter_clip, jitter_clip, out=noise)
    return p


def augment(points: np.ndarray, rng: np.random.Generator, **kwargs) -> np.ndarray:
    """One (N, 3) cloud."""
    return augment_batch(points[None], rng, **kwargs)[0]
