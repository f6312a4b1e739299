"""Point-MAE encoder (Pang et al., 2022), as in the reference implementation.

    points (B, N, 3)
      -> Group: FPS picks G centres, kNN takes S neighbours each, centred   # (B, G, S, 3)
      -> Encoder: mini-PointNet per group -> one token                      # (B, G, C)
      -> + pos_embed(centres): MLP 3 -> 128 -> C
      -> [cls] + tokens -> TransformerEncoder (pre-norm ViT blocks)         # (B, 1+G, C)
      -> global feature = concat(cls, max over tokens)                      # (B, 2C)

Presets live in ``train/model_configs/*.json`` (``point-mae-base``: 12 layers,
384 dims, 6 heads, 64 groups of 32; ``point-mae-tiny`` for CPUs).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

from train.ops import farthest_point_sample, knn

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "model_configs")


@dataclass(frozen=True)
class PointMAEConfig:
    trans_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    num_group: int = 64
    group_size: int = 32
    encoder_dims: int = 384
    drop_path_rate: float = 0.1

    @classmethod
    def preset(cls, name: str, **overrides) -> PointMAEConfig:
        path = os.path.join(CONFIG_DIR, f"point-mae-{name}.json")
        if not os.path.exists(path):
            known = sorted(f[len("point-mae-"):-5] for f in os.listdir(CONFIG_DIR) if f.startswith("point-mae-"))
            raise ValueError(f"unknown model preset {name!r}; known: {known}")
        with open(path) as f:
            return cls(**{**json.load(f), **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class Group(nn.Module):
    """FPS centres and their kNN neighbourhoods, relative to the centre."""

    def __init__(self, num_group: int, group_size: int) -> None:
        super().__init__()
        self.num_group, self.group_size = num_group, group_size

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = xyz.shape[0]
        center_idx = farthest_point_sample(xyz, self.num_group)                    # (B, G)
        center = torch.gather(xyz, 1, center_idx.unsqueeze(-1).expand(-1, -1, 3))  # (B, G, 3)
        idx = knn(center, xyz, self.group_size).idx                               # (B, G, S)
        batch = torch.arange(b, device=xyz.device).view(b, 1, 1)
        neighborhood = xyz[batch, idx] - center.unsqueeze(2)                       # (B, G, S, 3)
        return neighborhood, center


class Encoder(nn.Module):
    """Mini-PointNet: shared MLPs, max-pool, concat global, MLPs, max-pool -> one token per group."""

    def __init__(self, encoder_channel: int) -> None:
        super().__init__()
        self.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                        nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                         nn.Conv1d(512, encoder_channel, 1))

    def forward(self, point_groups: torch.Tensor) -> torch.Tensor:
        b, g, s, _ = point_groups.shape
        x = self.first_conv(point_groups.reshape(b * g, s, 3).transpose(2, 1))   # (BG, 256, S)
        x = torch.cat([x.max(dim=2, keepdim=True)[0].expand(-1, -1, s), x], 1)   # (BG, 512, S)
        x = self.second_conv(x).max(dim=2)[0]                                      # (BG, C)
        return x.reshape(b, g, -1)


class DropPath(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = nn.functional.scaled_dot_product_attention(q, k, v)                   # (B, H, N, C/H)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, drop_path: float, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerEncoder(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, drop_path_rate: float) -> None:
        super().__init__()
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList(Block(dim, num_heads, r) for r in rates)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos)  # Point-MAE adds the positional embedding before every block
        return x

    def forward_layers(self, x: torch.Tensor, pos: torch.Tensor, fetch: list[int]) -> list[torch.Tensor]:
        """The outputs of the blocks numbered in ``fetch`` (Point-MAE's part segmentation reads three depths)."""
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x + pos)
            if i in fetch:
                out.append(x)
        return out


class PointMAEEncoder(nn.Module):
    """Point cloud -> token features (B, G, C) and a global feature (B, 2C)."""

    def __init__(self, config: PointMAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config.trans_dim
        self.group_divider = Group(config.num_group, config.group_size)
        self.encoder = Encoder(config.encoder_dims)
        self.reduce_dim = nn.Linear(config.encoder_dims, c) if config.encoder_dims != c else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, c) * 0.02)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, c))
        self.blocks = TransformerEncoder(c, config.depth, config.num_heads, config.drop_path_rate)
        self.norm = nn.LayerNorm(c)
        self.apply(_init_weights)

    @property
    def global_dim(self) -> int:
        return 2 * self.config.trans_dim

    def group(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FPS + kNN patches (B, G, S, 3) and their centres (B, G, 3); deterministic for given points."""
        return self.group_divider(points)

    def forward_groups(self, neighborhood: torch.Tensor, center: torch.Tensor,
                       visible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, G', C) and global feature (B, 2C) of grouped points.

        ``visible`` (B, G) bool keeps only those patches (the same number per
        cloud), in their order, as Point-MAE's masked encoder does.
        """
        tokens = self.reduce_dim(self.encoder(neighborhood))                         # (B, G, C)
        b, _, c = tokens.shape
        if visible is not None:
            tokens = tokens[visible].reshape(b, -1, c)
            center = center[visible].reshape(b, -1, 3)
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)            # (B, 1+G', C)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center)], dim=1)
        x = self.norm(self.blocks(x, pos))
        global_feature = torch.cat([x[:, 0], x[:, 1:].max(dim=1)[0]], dim=-1)       # (B, 2C)
        return x[:, 1:], global_feature

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_groups(*self.group(points))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
