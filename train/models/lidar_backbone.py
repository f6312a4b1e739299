"""A WaffleIron-style LiDAR backbone (Puy et al., ICCV 2023; the backbone of ScaLR) in plain PyTorch.

    point embedding: MLP of (x, y, z, intensity, range)                         (N, C)
    L blocks, block l projects onto plane l mod 3 (xy, xz, yz):
        token mixing:   mean of point features per 2D cell (scatter)  -> (B, C, H, W)
                        -> depthwise 3x3 conv, BN, ReLU, depthwise 3x3 conv
                        -> each point takes its cell's value back (gather), residual
        channel mixing: x + MLP(BN(x))                                            (N, C)

Why this one: it needs only scatter/gather and dense 2D convolutions, so it
runs tens of thousands of points per frame on a CPU without sparse-conv
libraries (none installs here) and scales on a GPU as ScaLR shows; every
point keeps its own feature, which point-pixel distillation needs. Frames of
a batch share no cells (the batch index is part of the cell id), so a frame's
features do not depend on what it is batched with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PLANES = ((0, 1), (0, 2), (1, 2))  # xy, xz, yz


@dataclass(frozen=True)
class WaffleConfig:
    dim: int = 64
    depth: int = 6
    # the scene box (m) and the 2D cell size per axis
    min_xyz: tuple[float, float, float] = (-51.2, -51.2, -4.0)
    max_xyz: tuple[float, float, float] = (51.2, 51.2, 12.0)
    cell: tuple[float, float, float] = (0.8, 0.8, 0.5)

    def grid(self) -> tuple[int, int, int]:
        return tuple(int(round((hi - lo) / c)) for lo, hi, c in zip(self.min_xyz, self.max_xyz, self.cell))


class TokenMixing(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = nn.Sequential(nn.BatchNorm2d(dim), nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.ReLU(),
                                 nn.Conv2d(dim, dim, 3, padding=1, groups=dim))

    def forward(self, x: torch.Tensor, cell: torch.Tensor, batch: int, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        c = x.shape[1]
        # sums and counts in fp32 whatever the autocast dtype: a bf16 count stops at 256
        sums = x.new_zeros(batch * h * w, c, dtype=torch.float32).index_add_(0, cell, x.float())
        ones = x.new_ones(len(x), dtype=torch.float32)
        counts = x.new_zeros(batch * h * w, dtype=torch.float32).index_add_(0, cell, ones)
        grid = (sums / counts.clamp(min=1)[:, None]).to(x.dtype).reshape(batch, h, w, c).permute(0, 3, 1, 2)
        mixed = self.mix(grid).permute(0, 2, 3, 1).reshape(batch * h * w, c)
        return x + mixed[cell]


class ChannelMixing(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.BatchNorm1d(dim), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class WaffleBackbone(nn.Module):
    """Points (N, 4: x, y, z, intensity) of a batch with ``batch_index`` (N,) -> per-point features (N, C)."""

    def __init__(self, config: WaffleConfig = WaffleConfig()) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Sequential(nn.Linear(5, config.dim), nn.BatchNorm1d(config.dim), nn.ReLU(),
                                   nn.Linear(config.dim, config.dim))
        self.token = nn.ModuleList(TokenMixing(config.dim) for _ in range(config.depth))
        self.channel = nn.ModuleList(ChannelMixing(config.dim) for _ in range(config.depth))
        self.register_buffer("lo", torch.tensor(config.min_xyz), persistent=False)
        self.register_buffer("size", torch.tensor(config.cell), persistent=False)

    def cells(self, xyz: torch.Tensor, batch_index: torch.Tensor) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """Per plane: the flat cell id of every point (points outside the box go to the border cells)."""
        grid = self.config.grid()
        idx = torch.floor((xyz - self.lo) / self.size).long()
        idx = torch.minimum(idx.clamp(min=0), torch.tensor(grid, device=xyz.device) - 1)
        out = []
        for a, b in PLANES:
            h, w = grid[a], grid[b]
            out.append((batch_index * (h * w) + idx[:, a] * w + idx[:, b], (h, w)))
        return out

    def forward(self, points: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        xyz = points[:, :3]
        feats = torch.cat([points[:, :4], xyz.norm(dim=1, keepdim=True) / 50.0], dim=1)
        x = self.embed(feats)
        cells = self.cells(xyz, batch_index)
        batch = int(batch_index.max()) + 1 if len(batch_index) else 1
        for layer, (token, channel) in enumerate(zip(self.token, self.channel)):
            cell, hw = cells[layer % 3]
            x = channel(token(x, cell, batch, hw))
        return x
