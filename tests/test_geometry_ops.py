"""Geometry ops against brute-force references on seeded random clouds of uneven sizes."""

from __future__ import annotations

import pytest
import torch

from train.ops import ball_query, chamfer_distance, farthest_point_sample, knn
from train.ops.reference import ball_query_naive, chamfer_naive, fps_naive, knn_naive


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    diff = (a.double() - b.double()).abs()
    assert diff.max() <= tol, f"largest difference {diff.max():.3g} at {tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])}"


@pytest.mark.parametrize("use_fpsample", [False, True])
@pytest.mark.parametrize("b,n,k", [(1, 7, 3), (2, 40, 10), (3, 65, 16)])
def test_fps_matches_the_naive_loop(b, n, k, use_fpsample):
    if use_fpsample:
        pytest.importorskip("fpsample", reason="the fps extra is not installed")  # `make setup` installs it
    pts = torch.randn(b, n, 3, generator=torch.Generator().manual_seed(n))
    fps = lambda **kw: farthest_point_sample(pts, k, use_pytorch3d=False, use_fpsample=use_fpsample, **kw)  # noqa: E731
    assert torch.equal(fps(), fps_naive(pts, k))
    assert torch.equal(fps(start=2), fps_naive(pts, k, start=2))


def test_fpsample_and_the_torch_loop_agree_on_a_shapenet_sized_cloud():
    pytest.importorskip("fpsample", reason="the fps extra is not installed")
    pts = torch.rand(2, 8192, 3, generator=torch.Generator().manual_seed(0))
    for start in (0, 77):
        compiled = farthest_point_sample(pts, 1024, start=start, use_pytorch3d=False)
        looped = farthest_point_sample(pts, 1024, start=start, use_pytorch3d=False, use_fpsample=False)
        assert torch.equal(compiled, looped) and compiled[0, 0] == start


@pytest.mark.parametrize("b,m,n,k", [(1, 5, 9, 1), (2, 11, 37, 4), (2, 8, 64, 8)])
def test_knn_matches_exhaustive_search(b, m, n, k):
    g = torch.Generator().manual_seed(m * n)
    q, p = torch.randn(b, m, 3, generator=g), torch.randn(b, n, 3, generator=g)
    result = knn(q, p, k, use_pytorch3d=False)
    assert torch.equal(result.idx, knn_naive(q, p, k))
    assert_close(result.dists, ((q.unsqueeze(2) - p.gather(1, result.idx.flatten(1).unsqueeze(-1).expand(-1, -1, 3))
                                 .view(b, m, k, 3)) ** 2).sum(-1))


def test_ball_query_matches_the_naive_loop_with_padding():
    g = torch.Generator().manual_seed(3)
    q, p = torch.randn(2, 6, 3, generator=g), torch.randn(2, 30, 3, generator=g)
    for radius, k in [(0.5, 4), (1.0, 8), (3.0, 5)]:
        assert torch.equal(ball_query(q, p, radius, k, use_pytorch3d=False), ball_query_naive(q, p, radius, k))


def test_chamfer_matches_the_naive_sum_and_has_gradients():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 13, 3, generator=g, requires_grad=True)
    y = torch.randn(2, 21, 3, generator=g)
    d = chamfer_distance(x, y, use_pytorch3d=False)
    assert_close(d, chamfer_naive(x.detach(), y))
    d.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="points must have shape"):
        farthest_point_sample(torch.zeros(4, 3), 2)
    with pytest.raises(ValueError, match="k must be in 1..5"):
        knn(torch.zeros(1, 2, 3), torch.zeros(1, 5, 3), 6)
