"""Point-cloud augmentation used in pre-training (Point-MAE / ULIP recipes)."""

from __future__ import annotations

import numpy as np


def augment(points: np.ndarray, rng: np.random.Generator, scale=(2 / 3, 3 / 2), translate=0.2,
            rotate_up: bool = True, jitter_sigma=0.01, jitter_clip=0.05) -> np.ndarray:
    """Random rotation about +y, anisotropic scale, translation and clipped jitter of (N, 3) points."""
    p = points
    if rotate_up:
        a = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(a), np.sin(a)
        p = p @ np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]], dtype=np.float32)
    p = p * rng.uniform(*scale, size=(1, 3)).astype(np.float32) + rng.uniform(-translate, translate, (1, 3))
    noise = np.clip(rng.normal(0, jitter_sigma, p.shape), -jitter_clip, jitter_clip)
    return (p + noise).astype(np.float32)
