"""Shape classification on a point encoder (any family), under the three protocols of ACT / ReCon.

    points (B, N, 3) -> encoder -> global feature (B, F): Point-MAE concat(cls, max over tokens), F = 2C;
                                   Point-M2AE mean + max (ModelNet40) or concat(mean, max) (ScanObjectNN)
      full    encoder trained, MLP-3 head: Linear(F, 256)-BN-ReLU-Dropout(0.5)-Linear(256, 256)-BN-ReLU-
              Dropout(0.5)-Linear(256, classes)  (Point-MAE's and Point-M2AE's ``cls_head_finetune``)
      mlp3    encoder frozen, the same MLP-3 head
      linear  encoder frozen, one Linear(F, classes)

A frozen encoder stays in eval mode (its BatchNorm statistics and dropout
paths do not move) and runs without gradients: its weights and buffers end a
run bit-identical.
"""

from __future__ import annotations

import torch
from torch import nn

from train.models.encoders import PointEncoder
from train.models.layers import init_weights

PROTOCOLS = ("full", "mlp3", "linear")


def classification_head(in_dim: int, num_classes: int, protocol: str) -> nn.Module:
    if protocol == "linear":
        head = nn.Sequential(nn.Linear(in_dim, num_classes))
    else:
        head = nn.Sequential(
            nn.Linear(in_dim, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, num_classes))
    head.apply(init_weights)
    return head


class PointClassifier(nn.Module):
    """Encoder + head; ``forward(points) -> logits (B, classes)``."""

    def __init__(self, encoder: PointEncoder, num_classes: int, protocol: str) -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"--protocol is one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.encoder, self.protocol = encoder, protocol
        self.head = classification_head(encoder.global_dim, num_classes, protocol)
        self.frozen = protocol != "full"
        if self.frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> PointClassifier:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                _, feature = self.encoder(points)
        else:
            _, feature = self.encoder(points)
        return self.head(feature)
