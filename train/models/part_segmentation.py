"""Part segmentation on a Point-MAE encoder, as Point-MAE's ``segmentation/models/pt.py`` builds it.

    points (B, N, 3), object class c (B,)
      -> Group + mini-PointNet tokens + pos_embed (the pre-trained encoder)
      -> transformer; the patch tokens after blocks fetch = (d/3, 2d/3, d) (3, 7, 11 of 12), normed, concatenated
                                                                               # (B, G, 3C)
      -> global: max and mean over patches (B, 3C each) + label_conv(one-hot c) (B, 64), repeated to every point
      -> propagation: 3-NN inverse-distance interpolation from the patch centres to every point, concatenated
         with its xyz, MLP (4C, 8C/3) = (1536, 1024) at C = 384                  # (B, N, 8C/3)
      -> per-point MLP: conv 512-BN-ReLU-dropout 0.5, 256-BN-ReLU, num_parts    # (B, N, parts)

Scores for parts outside the object's class are masked at evaluation (``restrict_to_class``).
"""

from __future__ import annotations

import torch
from torch import nn

from train.models.point_mae import PointMAEEncoder
from train.ops import three_nn_interpolate


def fetch_layers(depth: int) -> list[int]:
    """Block indices read by the head: [3, 7, 11] for 12 blocks, [0, 2, 3] for 4."""
    return sorted({max(0, round(depth * (k + 1) / 3) - 1) for k in range(3)})


def _mlp(channels: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv1d(a, b, 1), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


class PartSegmentation(nn.Module):
    """``forward(points, object_class) -> logits (B, N, num_parts)``."""

    def __init__(self, encoder: PointMAEEncoder, num_classes: int, num_parts: int) -> None:
        super().__init__()
        self.encoder, self.num_classes, self.num_parts = encoder, num_classes, num_parts
        c = encoder.config.trans_dim
        self.fetch = fetch_layers(encoder.config.depth)
        feat = len(self.fetch) * c
        prop = round(8 * c / 3)
        self.label_conv = nn.Sequential(nn.Conv1d(num_classes, 64, 1, bias=False), nn.BatchNorm1d(64),
                                        nn.LeakyReLU(0.2))
        self.propagation = _mlp([feat + 3, 4 * c, prop])
        self.head = nn.Sequential(nn.Conv1d(prop + 2 * feat + 64, 512, 1), nn.BatchNorm1d(512), nn.ReLU(),
                                  nn.Dropout(0.5), nn.Conv1d(512, 256, 1), nn.BatchNorm1d(256), nn.ReLU(),
                                  nn.Conv1d(256, num_parts, 1))

    def token_features(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, G, len(fetch) * C) patch features from three depths and the patch centres (B, G, 3)."""
        enc = self.encoder
        neighborhood, center = enc.group(points)
        tokens = enc.reduce_dim(enc.encoder(neighborhood))
        b = tokens.shape[0]
        x = torch.cat([enc.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([enc.cls_pos.expand(b, -1, -1), enc.pos_embed(center)], dim=1)
        layers = enc.blocks.forward_layers(x, pos, self.fetch)
        return torch.cat([enc.norm(h)[:, 1:] for h in layers], dim=-1), center

    def forward(self, points: torch.Tensor, object_class: torch.Tensor) -> torch.Tensor:
        b, n, _ = points.shape
        feats, center = self.token_features(points)                                   # (B, G, F)
        one_hot = nn.functional.one_hot(object_class, self.num_classes).to(feats.dtype).unsqueeze(-1)
        global_feature = torch.cat([feats.max(dim=1)[0], feats.mean(dim=1), self.label_conv(one_hot)[..., 0]],
                                   dim=-1)                                            # (B, 2F + 64)
        per_point = three_nn_interpolate(points, center, feats)                       # (B, N, F)
        x = self.propagation(torch.cat([per_point, points.to(per_point.dtype)], dim=-1).transpose(1, 2))
        x = torch.cat([x, global_feature.unsqueeze(-1).expand(-1, -1, n)], dim=1)
        return self.head(x).transpose(1, 2)                                           # (B, N, parts)


def restrict_to_class(logits: torch.Tensor, object_class: torch.Tensor, class_parts: torch.Tensor) -> torch.Tensor:
    """Predicted part ids (B, N), chosen among the parts of each object's class only.

    ``class_parts`` (classes, parts) bool: which parts each class owns."""
    allowed = class_parts[object_class].unsqueeze(1)                                  # (B, 1, parts)
    return logits.masked_fill(~allowed, float("-inf")).argmax(dim=-1)
