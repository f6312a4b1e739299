"""Axis-aligned 3D boxes as ``(..., 6)`` tensors ``cx, cy, cz, dx, dy, dz`` (centre and full size), the way
the rooms cache stores them and ScanNet's 18 detection classes are evaluated (no heading).

Pairwise IoU and generalised IoU (Rezatofighi et al. 2019) of two sets, batched. 3DETR computes both from box
corners with a rotated-rectangle clip; for boxes without heading that clip is the axis-aligned overlap used
here, and its enclosing box is the axis-aligned hull of the two boxes.
"""

from __future__ import annotations

import torch

EPS = 1e-8  # 3DETR's floor for volumes and unions


def box_bounds(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) corners (..., 3) of centre-size boxes (..., 6)."""
    half = boxes[..., 3:6] / 2
    return boxes[..., :3] - half, boxes[..., :3] + half


def box_volume(boxes: torch.Tensor) -> torch.Tensor:
    return boxes[..., 3:6].clamp(min=0).prod(-1)


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intersection, union and enclosing-box volumes (..., K1, K2) of boxes a (..., K1, 6) and b (..., K2, 6)."""
    lo_a, hi_a = box_bounds(a.unsqueeze(-2))
    lo_b, hi_b = box_bounds(b.unsqueeze(-3))
    inter = (torch.minimum(hi_a, hi_b) - torch.maximum(lo_a, lo_b)).clamp(min=0).prod(-1)
    enclosing = (torch.maximum(hi_a, hi_b) - torch.minimum(lo_a, lo_b)).clamp(min=0).prod(-1)
    union = box_volume(a).unsqueeze(-1) + box_volume(b).unsqueeze(-2) - inter
    return inter, union, enclosing


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU (..., K1, K2) of every box of ``a`` (..., K1, 6) with every box of ``b`` (..., K2, 6); 0 for two
    empty boxes."""
    inter, union, _ = _pairwise(a, b)
    return inter / union.clamp(min=EPS)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU (..., K1, K2) = IoU - (enclosing - union) / enclosing, in [-1, 1]; 0 where the enclosing box is
    empty (3DETR's ``good_boxes`` filter)."""
    inter, union, enclosing = _pairwise(a, b)
    union = union.clamp(min=EPS)
    giou = inter / union - (enclosing - union) / enclosing.clamp(min=EPS)
    return torch.where(enclosing > 2 * EPS, giou, torch.zeros_like(giou))
