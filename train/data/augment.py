"""Point-cloud augmentation used in pre-training (Point-MAE / ULIP recipes), vectorised over clouds."""

from __future__ import annotations

import numpy as np
import torch


def augment_batch(points: np.ndarray, rng: np.random.Generator, scale=(2 / 3, 3 / 2), translate=0.2,
                  rotate_up: bool = True, jitter_sigma=0.01, jitter_clip=0.05) -> np.ndarray:
    """Per cloud of (R, N, 3): random rotation about +y, anisotropic scale, translation, clipped jitter."""
    r = points.shape[0]
    p = points.astype(np.float32, copy=False)
    if rotate_up:
        a = rng.uniform(0, 2 * np.pi, r)
        c, s = np.cos(a), np.sin(a)
        rot = np.zeros((r, 3, 3), np.float32)
        rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = c, -s, 1, s, c
        p = p @ rot                                                    # (R, N, 3) @ (R, 3, 3)
    p = p * rng.uniform(*scale, size=(r, 1, 3)).astype(np.float32)
    p += rng.uniform(-translate, translate, (r, 1, 3)).astype(np.float32)  # float32 throughout: no float64 pass
    # torch's normal sampler is ~3x faster than numpy's; seeded from rng, so still reproducible
    generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
    noise = torch.randn(p.shape, generator=generator).numpy()
    noise *= np.float32(jitter_sigma)
    p += np.clip(noise, -jitter_clip, jitter_clip, out=noise)
    return p


def augment(points: np.ndarray, rng: np.random.Generator, **kwargs) -> np.ndarray:
    """One (N, 3) cloud."""
    return augment_batch(points[None], rng, **kwargs)[0]
