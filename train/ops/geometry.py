"""FPS, kNN, ball query and Chamfer distance on batched clouds, any device.

Each public function validates its arguments once and dispatches to pytorch3d
(GPU kernels) when it is importable and ``use_pytorch3d`` allows, or to the
vectorised PyTorch version here. Both compute the same function; the naive
twins in ``train/ops/reference.py`` define it and the tests compare all three.

Shapes follow pytorch3d: points (B, N, 3); indices int64.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

try:  # GPU machines with pytorch3d
    from pytorch3d import ops as _p3d

    HAVE_PYTORCH3D = True
except ImportError:  # pragma: no cover - pytorch3d has no build here
    _p3d = None
    HAVE_PYTORCH3D = False

try:  # CPU FPS in compiled code (the `fps` extra): the same greedy choice, several times faster per cloud
    import fpsample as _fpsample

    HAVE_FPSAMPLE = True
except ImportError:  # pragma: no cover - an optional extra
    _fpsample = None
    HAVE_FPSAMPLE = False


class KNN(NamedTuple):
    dists: torch.Tensor  # (B, M, K) squared distances, ascending
    idx: torch.Tensor    # (B, M, K) int64 indices into the searched points


def exact_cdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances from coordinate differences, never the |x|^2 + |y|^2 - 2xy matrix form:
    at LiDAR coordinates (tens of metres) that form cancels catastrophically and swaps neighbours."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def _check_points(name: str, x: torch.Tensor) -> None:
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3), got {tuple(x.shape)}")


def farthest_point_sample(points: torch.Tensor, k: int, start: int = 0,
                          use_pytorch3d: bool = True, use_fpsample: bool = True) -> torch.Tensor:
    """Indices (B, K) of K farthest points, greedily from index ``start``.

    points: (B, N, 3). Each next index maximises the distance to the chosen set;
    ties go to the lowest index (as ``torch.argmax``). On a CPU, fpsample's
    vanilla FPS runs per cloud when it is installed (the Python loop below pays
    a few dispatches per chosen point).
    """
    _check_points("points", points)
    b, n, _ = points.shape
    if not 0 < k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    if use_pytorch3d and HAVE_PYTORCH3D and start == 0 and points.is_cuda:
        return _p3d.sample_farthest_points(points, K=k)[1]
    if use_fpsample and HAVE_FPSAMPLE and points.device.type == "cpu":
        clouds = points.detach().to(torch.float32).contiguous().numpy()
        return torch.from_numpy(np.stack([_fpsample.fps_sampling(c, k, start_idx=start) for c in clouds])
                                .astype(np.int64))
    idx = torch.empty(b, k, dtype=torch.long, device=points.device)
    dist = torch.full((b, n), float("inf"), device=points.device, dtype=points.dtype)
    current = torch.full((b,), start, dtype=torch.long, device=points.device)
    for i in range(k):
        idx[:, i] = current
        chosen = points.gather(1, current.view(b, 1, 1).expand(b, 1, 3))  # (B, 1, 3)
        torch.minimum(dist, ((points - chosen) ** 2).sum(-1), out=dist)
        current = dist.argmax(dim=1)
    return idx


def knn(query: torch.Tensor, points: torch.Tensor, k: int, use_pytorch3d: bool = True) -> KNN:
    """The K nearest ``points`` (B, N, 3) of every ``query`` point (B, M, 3)."""
    _check_points("query", query)
    _check_points("points", points)
    if not 0 < k <= points.shape[1]:
        raise ValueError(f"k must be in 1..{points.shape[1]}, got {k}")
    if use_pytorch3d and HAVE_PYTORCH3D:
        r = _p3d.knn_points(query, points, K=k, return_sorted=True)
        return KNN(r.dists, r.idx)
    d = exact_cdist(query, points) ** 2  # (B, M, N)
    dists, idx = d.topk(k, dim=-1, largest=False, sorted=True)
    return KNN(dists, idx)


def three_nn_interpolate(query: torch.Tensor, points: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Features (B, M, C) at every ``query`` point (B, M, 3) from its 3 nearest ``points`` (B, N, 3) carrying
    ``features`` (B, N, C), weighted by inverse squared distance (PointNet++'s feature propagation)."""
    near = knn(query, points, min(3, points.shape[1]))
    weight = 1.0 / (near.dists.float() + 1e-8)
    weight = weight / weight.sum(dim=-1, keepdim=True)                                  # (B, M, 3)
    b, m, k = near.idx.shape
    gathered = features.gather(1, near.idx.reshape(b, m * k, 1).expand(-1, -1, features.shape[-1]))
    return (gathered.reshape(b, m, k, -1) * weight.unsqueeze(-1).to(features.dtype)).sum(dim=2)


def ball_query(query: torch.Tensor, points: torch.Tensor, radius: float, k: int,
               use_pytorch3d: bool = True) -> torch.Tensor:
    """Indices (B, M, K) of the first K points (in index order) within ``radius``; -1 pads."""
    _check_points("query", query)
    _check_points("points", points)
    if use_pytorch3d and HAVE_PYTORCH3D:
        return _p3d.ball_query(query, points, K=k, radius=radius, return_nn=False)[1]
    inside = exact_cdist(query, points) ** 2 < radius * radius  # (B, M, N)
    n = points.shape[1]
    order = torch.where(inside, torch.arange(n, device=points.device), n)  # outside -> n (sorts last)
    first = order.sort(dim=-1).values[..., :k]
    if first.shape[-1] < k:
        first = torch.cat([first, first.new_full((*first.shape[:-1], k - first.shape[-1]), n)], -1)
    return torch.where(first < n, first, -1)


def chamfer_distance(x: torch.Tensor, y: torch.Tensor, use_pytorch3d: bool = True) -> torch.Tensor:
    """Mean over the batch of mean squared nearest distance x->y plus y->x (pytorch3d's default)."""
    _check_points("x", x)
    _check_points("y", y)
    if use_pytorch3d and HAVE_PYTORCH3D:
        return _p3d.chamfer_distance(x, y)[0]
    d = exact_cdist(x, y) ** 2
    return d.min(dim=2).values.mean(dim=1).mean() + d.min(dim=1).values.mean(dim=1).mean()
