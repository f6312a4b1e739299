"""Segmentation heads on a point encoder's intermediates, one per published design: part segmentation (object
class given) and, without the object class, indoor semantic segmentation (ACT's ``semantic_segmentation/models/
pt.py``: the same head with no label branch, 3,328 input channels at C = 384).

The encoder names the design it was published with (``segmentation_head``); no head names a family.

``shared-centres`` (Point-MAE's ``segmentation/models/pt.py``): levels at the same centres

    points (B, N, 3), object class c (B,)
      -> encoder.forward_intermediates: the normed patch tokens after blocks (d/3, 2d/3, d) = 3, 7, 11 of 12,
         concatenated                                                          # (B, G, 3C)
      -> global: max and mean over patches (B, 3C each) + label_conv(one-hot c) (B, 64), repeated to every point
      -> propagation: 3-NN inverse-distance interpolation from the patch centres to every point, concatenated
         with its xyz, MLP (4C, 8C/3) = (1536, 1024) at C = 384                  # (B, N, 8C/3)
      -> per-point MLP: conv 512-BN-ReLU-dropout 0.5, 256-BN-ReLU, num_parts    # (B, N, parts)

``per-level`` (Point-M2AE's ``segmentation/Point_M2AE_SEG.py``): levels at their own centres

      -> encoder.forward_intermediates: each scale's tokens, normed by its own norm   # (B, G_l, C_l)
      -> propagation per level: 3-NN interpolation to every point, with its xyz, MLP (C_l + 3 -> 4C -> 1024)
         at C = the last level's width, concatenated                             # (B, N, 3 x 1024)
      -> global: max + mean over points (one sum, B, 3072) + label_conv(one-hot c) (B, 64), to every point
      -> per-point MLP: conv 1024-BN-ReLU-dropout 0.5, 512-BN-ReLU, 256-BN-ReLU, num_parts

Scores for parts outside the object's class are masked at evaluation (``restrict_to_class``). With
``num_classes=0`` there is no object class: no ``label_conv`` and no 64 channels in the global feature.
"""

from __future__ import annotations

import torch
from torch import nn

from train.models.encoders import PointEncoder
from train.ops import three_nn_interpolate


def _mlp(channels: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv1d(a, b, 1), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


def _label_conv(num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(num_classes, 64, 1, bias=False), nn.BatchNorm1d(64), nn.LeakyReLU(0.2))


class PartSegmentation(nn.Module):
    """``forward(points, object_class) -> logits (B, N, num_parts)``; the design is the encoder's.

    ``num_classes=0``: no object class (scene segmentation), ``forward(points)``."""

    def __init__(self, encoder: PointEncoder, num_classes: int, num_parts: int) -> None:
        super().__init__()
        if encoder.segmentation_head not in DESIGNS:
            raise ValueError(f"{encoder.family} names segmentation head {encoder.segmentation_head!r}; known: "
                             f"{', '.join(DESIGNS)}")
        self.encoder, self.num_classes, self.num_parts = encoder, num_classes, num_parts
        self.design = encoder.segmentation_head
        unused = encoder.unused_by_intermediates()
        for name, p in encoder.named_parameters():
            if name in unused:  # kept (an export carries them), never trained: no gradient reaches them
                p.requires_grad_(False)
        self.label_channels = 64 if num_classes else 0
        self.label_conv = _label_conv(num_classes) if num_classes else None
        DESIGNS[self.design][0](self, encoder.intermediate_dims, encoder.token_dim)

    def _build_shared_centres(self, dims: list[int], c: int) -> None:
        feat, prop = sum(dims), round(8 * c / 3)
        self.propagation = _mlp([feat + 3, 4 * c, prop])
        self.head = nn.Sequential(nn.Conv1d(prop + 2 * feat + self.label_channels, 512, 1), nn.BatchNorm1d(512), nn.ReLU(),
                                  nn.Dropout(0.5), nn.Conv1d(512, 256, 1), nn.BatchNorm1d(256), nn.ReLU(),
                                  nn.Conv1d(256, self.num_parts, 1))

    def _build_per_level(self, dims: list[int], c: int) -> None:
        self.propagations = nn.ModuleList(_mlp([d + 3, 4 * c, 1024]) for d in dims)
        feat = 1024 * len(dims)
        self.head = nn.Sequential(nn.Conv1d(2 * feat + self.label_channels, 1024, 1), nn.BatchNorm1d(1024), nn.ReLU(),
                                  nn.Dropout(0.5), nn.Conv1d(1024, 512, 1), nn.BatchNorm1d(512), nn.ReLU(),
                                  nn.Conv1d(512, 256, 1), nn.BatchNorm1d(256), nn.ReLU(),
                                  nn.Conv1d(256, self.num_parts, 1))

    def token_features(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, G, F) patch features of every level, concatenated, and the patch centres (B, G, 3): the
        ``shared-centres`` design's input."""
        levels = self.encoder.forward_intermediates(self.encoder.tokenize(points))
        return torch.cat([level.features for level in levels], dim=-1), levels[0].centers

    def _forward_shared_centres(self, points: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        n = points.shape[1]
        feats, center = self.token_features(points)                                   # (B, G, F)
        global_feature = torch.cat([feats.max(dim=1)[0], feats.mean(dim=1), label], dim=-1)  # (B, 2F + 64)
        per_point = three_nn_interpolate(points, center, feats)                       # (B, N, F)
        x = self.propagation(torch.cat([per_point, points.to(per_point.dtype)], dim=-1).transpose(1, 2))
        return torch.cat([x, global_feature.unsqueeze(-1).expand(-1, -1, n)], dim=1)

    def _forward_per_level(self, points: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        n = points.shape[1]
        levels = self.encoder.forward_intermediates(self.encoder.tokenize(points))
        x = torch.cat([prop(torch.cat([points.to(lv.features.dtype), three_nn_interpolate(points, lv.centers,
                                                                                          lv.features)],
                                      dim=-1).transpose(1, 2))
                       for prop, lv in zip(self.propagations, levels)], dim=1)       # (B, L x 1024, N)
        global_feature = torch.cat([x.max(dim=2)[0] + x.mean(dim=2), label], dim=-1)  # (B, L x 1024 + 64)
        return torch.cat([global_feature.unsqueeze(-1).expand(-1, -1, n), x], dim=1)

    def forward(self, points: torch.Tensor, object_class: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_conv is None:
            label = points.new_zeros(len(points), 0)                                  # no object class
        else:
            one_hot = nn.functional.one_hot(object_class, self.num_classes).to(points.dtype).unsqueeze(-1)
            label = self.label_conv(one_hot)[..., 0]                                  # (B, 64)
        x = DESIGNS[self.design][1](self, points, label)
        return self.head(x).transpose(1, 2)                                           # (B, N, parts)


# What a segmentation checkpoint records of its intermediates; runs saved before it read Point-MAE's intermediates
# with the cls token in the sequence (see ``check_intermediates``).
INTERMEDIATES = "no-cls"


def check_intermediates(state: dict, encoder: PointEncoder, path: str, resuming: bool = False) -> None:
    """A segmentation checkpoint saved before the intermediates left the cls token out cannot be resumed (its
    optimiser trained the cls token) and scores a little differently now: an error, or a warning to stderr."""
    if state.get("intermediates") == INTERMEDIATES or not encoder.unused_by_intermediates():
        return
    message = (f"{path} was trained when the segmentation intermediates still held the cls token; this version "
               "leaves it out, as Point-MAE's and ACT's segmentation models do")
    if resuming:
        raise ValueError(f"{message}: it cannot be resumed; start the run again")
    import sys

    print(f"warning: {message}: its scores differ slightly from the run's own", file=sys.stderr)


DESIGNS = {"shared-centres": (PartSegmentation._build_shared_centres, PartSegmentation._forward_shared_centres),
           "per-level": (PartSegmentation._build_per_level, PartSegmentation._forward_per_level)}


def restrict_to_class(logits: torch.Tensor, object_class: torch.Tensor, class_parts: torch.Tensor) -> torch.Tensor:
    """Predicted part ids (B, N), chosen among the parts of each object's class only.

    ``class_parts`` (classes, parts) bool: which parts each class owns."""
    allowed = class_parts[object_class].unsqueeze(1)                                  # (B, 1, parts)
    return logits.masked_fill(~allowed, float("-inf")).argmax(dim=-1)
