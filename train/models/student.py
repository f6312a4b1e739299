"""The stage-1 student: a point encoder (any registered family) with one projection head per teacher."""

from __future__ import annotations

import torch
from torch import nn

from train.models.encoders import PointEncoder


class ProjectionHead(nn.Module):
    """Global feature -> a teacher's embedding space (ULIP-style linear projection)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Student(nn.Module):
    """Encoder + heads; ``heads`` maps teacher name -> embedding dim."""

    def __init__(self, encoder: PointEncoder, heads: dict[str, int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict({name: ProjectionHead(self.encoder.global_dim, dim) for name, dim in heads.items()})

    def forward(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per teacher, the (unnormalised) point embedding (B, D); plus ``"_global"`` (B, global_dim)."""
        _, g = self.encoder(points)
        return self.project(g)

    def project(self, global_feature: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`forward` from the encoder's global feature (B, global_dim), for a caller that encoded already."""
        return {"_global": global_feature, **{name: head(global_feature) for name, head in self.heads.items()}}
