"""Dense 2D teacher features at point-pixel pairs: bilinear sampling on the patch grid, optional PCA.

The image is resized (not cropped) to the teacher's input size, so patch
``j`` of a grid ``w`` patches wide has its centre at image column
``(j + 0.5) * W / w``; ``grid_sample`` with ``align_corners=False`` uses
exactly that convention when given ``2 u / W - 1``, which accounts for the
resize without computing it. Pixels beyond the outermost patch centres take
the border value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def sample_at_pixels(grid: torch.Tensor, uv: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Bilinear features (M, D) at pixels ``uv`` (M, 2) of an image of ``image_size`` = (W, H), grid (D, h, w)."""
    w, h = image_size
    if len(uv) == 0:
        return np.zeros((0, grid.shape[0]), np.float32)
    norm = torch.from_numpy(np.asarray(uv, np.float32)) / torch.tensor([w, h], dtype=torch.float32) * 2 - 1
    out = F.grid_sample(grid[None].float(), norm.view(1, 1, -1, 2), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0, :, 0].T.contiguous().numpy()


@dataclass(frozen=True)
class Pca:
    """``reduced = (x - mean) @ components.T``; ``components`` (d, D) has orthonormal rows."""

    components: np.ndarray
    mean: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, dim: int, seed: int = 0) -> Pca:
        from sklearn.decomposition import PCA

        if dim > min(features.shape):
            raise ValueError(f"PCA to {dim} dims needs at least {dim} samples of at least {dim} dims, "
                             f"got {features.shape}")
        pca = PCA(n_components=dim, svd_solver="full", random_state=seed).fit(features.astype(np.float64))
        return cls(pca.components_.astype(np.float32), pca.mean_.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.components.T

    def inverse_transform(self, reduced: np.ndarray) -> np.ndarray:
        return reduced @ self.components + self.mean

    def relative_error(self, x: np.ndarray) -> float:
        """||x - reconstruction|| / ||x - mean|| over a sample: the share of the signal PCA drops."""
        centred = x - self.mean
        return float(np.linalg.norm(centred - self.transform(x) @ self.components) / np.linalg.norm(centred))
