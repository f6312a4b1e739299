"""3DETR's set-prediction loss (Misra et al. 2021, ``criterion.py``) for axis-aligned boxes without heading:
every decoder layer's queries are matched one-to-one to the scene's boxes (Hungarian), then classified and
regressed against their match.

One decoder layer's outputs (B scenes, Q queries, C classes), as 3DETR's ``BoxProcessor`` makes them:

    sem_cls_logits (B, Q, C+1)                 the last class is "no object"
    sem_cls_prob (B, Q, C), objectness_prob (B, Q)   softmax[..., :-1] and 1 - softmax[..., -1], no gradient
    center_normalized, size_normalized (B, Q, 3)     in the scene's extent (:func:`normalize_targets`)
    center_unnormalized, size_unnormalized (B, Q, 3) metres

Targets: ``gt_box_centers``, ``gt_box_sizes`` and their ``_normalized`` twins (B, K, 3), ``gt_box_sem_cls_label``
(B, K) long, ``gt_box_present`` (B, K) 0/1; K is padded (3DETR: 64) and padded rows are never matched. Any rows
may be the padded ones (3DETR assumes the real boxes come first).

Matching cost of query q and box k (3DETR's ``Matcher``), on one scene's real boxes, ``linear_sum_assignment``:

    cost_class * -p_q(class_k) + cost_objectness * -p_q(object)
        + cost_center * |c_q - c_k|_1 (normalised centres) + cost_giou * -GIoU(q, k) (boxes in metres)

Losses per layer, each times its weight (ScanNet's ``scannet_ep1080.sh`` values are the defaults):

    sem_cls  cross entropy over C+1 classes on every query, the unmatched ones labelled "no object"; class weights
             1 and ``no_object_weight`` for the last, and F.cross_entropy's weighted mean (divided by the sum of
             the queries' weights, not by the number of boxes)
    center   sum over matched pairs of |c_q - c_k|_1 on normalised centres, / N
    size     sum over matched pairs of |s_q - s_k|_1 on normalised sizes, / N
    giou     sum over matched pairs of 1 - GIoU (metres), / N

N is the batch's number of real boxes averaged over processes, at least 1. The total sums the final layer's and
every auxiliary layer's weighted terms, each layer matched on its own. Matching B=8, Q=256, K=64 (all real) on
one CPU thread: ~11 ms, of which ~9 ms the pairwise GIoU (the criterion computes it once per layer for both
matching and loss), ~1 ms the cost matrix and ~1 ms ``linear_sum_assignment`` for the 8 scenes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from train.ops.boxes import generalized_box_iou

Layer = dict[str, torch.Tensor]
Array = np.ndarray | torch.Tensor
BOX_KEYS = ("gt_box_centers", "gt_box_sizes", "gt_box_centers_normalized", "gt_box_sizes_normalized")
TARGET_KEYS = (*BOX_KEYS, "gt_box_sem_cls_label", "gt_box_present")


class NormalizedBoxes(NamedTuple):
    centers: Array  # (..., K, 3)
    sizes: Array    # (..., K, 3)


def normalize_targets(centers: Array, sizes: Array, present: Array, dims_min: Array, dims_max: Array) -> NormalizedBoxes:
    """Ground-truth centres and sizes (..., K, 3) in the scene's extent, as 3DETR's datasets make them:
    ``(c - dims_min) / (dims_max - dims_min)`` and ``size / (dims_max - dims_min)``; rows whose ``present``
    (..., K) is 0 become 0.

    ``dims_min``, ``dims_max`` (..., 3) bound the scene's sampled, augmented points, not its boxes, so centres
    may fall outside [0, 1]. Numpy arrays or tensors, the same kind out. The extent has no floor, as in 3DETR's
    datasets (its model floors it at 0.1 when it turns predicted sizes back into metres).
    """
    lo, extent = dims_min[..., None, :], (dims_max - dims_min)[..., None, :]
    keep = present[..., None]
    return NormalizedBoxes((centers - lo) / extent * keep, sizes / extent * keep)


def average_over_processes(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over torch.distributed's processes (3DETR's ``all_reduce_average``); ``x`` without a group."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def _boxes(centers: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    return torch.cat([centers, sizes], -1).float()  # (..., 6)


def pairwise_giou(outputs: Layer, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """GIoU (B, Q, K) of every predicted box with every ground-truth box, in metres, with gradient."""
    return generalized_box_iou(_boxes(outputs["center_unnormalized"], outputs["size_unnormalized"]),
                               _boxes(targets["gt_box_centers"], targets["gt_box_sizes"]))


class Assignment(NamedTuple):
    """Queries matched to ground-truth rows (3DETR's ``per_prop_gt_inds``, ``proposal_matched_mask``, ``assignments``)."""

    gt_index: torch.Tensor  # (B, Q) long: the matched row of the targets, 0 where unmatched
    matched: torch.Tensor   # (B, Q) bool
    pairs: list[tuple[torch.Tensor, torch.Tensor]]  # per scene: (queries, their rows), by query; empty without boxes


class HungarianMatcher:
    """Minimal-cost one-to-one matching of each scene's queries to its real boxes (defaults: ScanNet's)."""

    def __init__(self, cost_class: float = 1.0, cost_objectness: float = 0.0, cost_giou: float = 2.0,
                 cost_center: float = 0.0) -> None:
        self.cost_class, self.cost_objectness = cost_class, cost_objectness
        self.cost_giou, self.cost_center = cost_giou, cost_center

    @torch.no_grad()
    def cost_matrix(self, outputs: Layer, targets: dict[str, torch.Tensor],
                    giou: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Q, K) cost of matching query q to row k, padded rows included; ``giou`` (B, Q, K) if computed."""
        q = outputs["sem_cls_prob"].shape[1]
        labels = targets["gt_box_sem_cls_label"].masked_fill(targets["gt_box_present"] <= 0, 0)  # padding may be -1
        cls = -outputs["sem_cls_prob"].float().gather(2, labels.unsqueeze(1).expand(-1, q, -1))  # (B, Q, K)
        objectness = -outputs["objectness_prob"].float().unsqueeze(-1)                           # (B, Q, 1)
        center = torch.cdist(outputs["center_normalized"].float(), targets["gt_box_centers_normalized"].float(), p=1)
        giou = pairwise_giou(outputs, targets) if giou is None else giou.detach()
        return (self.cost_class * cls + self.cost_objectness * objectness + self.cost_center * center
                - self.cost_giou * giou)

    @torch.no_grad()
    def __call__(self, outputs: Layer, targets: dict[str, torch.Tensor],
                 giou: torch.Tensor | None = None) -> Assignment:
        device = outputs["sem_cls_prob"].device
        cost = self.cost_matrix(outputs, targets, giou).cpu().numpy()  # one transfer for the batch
        present = (targets["gt_box_present"] > 0).cpu().numpy()
        b, q = cost.shape[:2]
        gt_index, matched, pairs = np.zeros((b, q), np.int64), np.zeros((b, q), bool), []
        for i in range(b):
            real = np.flatnonzero(present[i])
            scene = cost[i][:, real]
            if not np.isfinite(scene).all():
                raise ValueError(f"matching cost of scene {i} is not finite: check the outputs' probabilities, "
                                 "centres and sizes")
            rows, cols = linear_sum_assignment(scene) if len(real) else (np.zeros(0, np.int64),) * 2
            gt_index[i, rows], matched[i, rows] = real[cols], True
            pairs.append((torch.as_tensor(rows, dtype=torch.long, device=device),
                          torch.as_tensor(real[cols], dtype=torch.long, device=device)))
        return Assignment(torch.from_numpy(gt_index).to(device), torch.from_numpy(matched).to(device), pairs)


def _take(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows (B, K, D) at index (B, Q) -> (B, Q, D)."""
    return rows.gather(1, index.unsqueeze(-1).expand(-1, -1, rows.shape[-1]))


def _with_a_row(targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Targets padded to K = 0 (no boxes in the whole batch) get one absent row, so a gather has a row to read."""
    if targets["gt_box_present"].shape[1] > 0:
        return targets
    pad = {k: targets[k].new_zeros((targets[k].shape[0], 1, *targets[k].shape[2:])) for k in TARGET_KEYS}
    return {**targets, **pad}


class SetCriterion(nn.Module):
    """``forward(outputs, targets) -> (total, logs)``: 3DETR's losses on ``outputs["outputs"]`` and every layer
    of ``outputs.get("aux_outputs", [])``.

    ``logs`` holds the weighted terms, detached (3DETR logs them weighted): ``loss/sem_cls``, ``loss/center``,
    ``loss/size``, ``loss/giou`` for the final layer, ``loss/<term>_<i>`` for auxiliary layer i (3DETR's
    suffix), and ``loss/cardinality[_i]``, |predicted objects - boxes| per scene, logged only. A term whose
    weight is 0 is not computed. ``reduce_mean`` averages the box count over processes (swap it in tests).
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher | None = None, *, sem_cls_weight: float = 1.0,
                 no_object_weight: float = 0.25, center_weight: float = 5.0, size_weight: float = 1.0,
                 giou_weight: float = 1.0,
                 reduce_mean: Callable[[torch.Tensor], torch.Tensor] = average_over_processes) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.weights = {"sem_cls": sem_cls_weight, "center": center_weight, "size": size_weight, "giou": giou_weight}
        self.reduce_mean = reduce_mean
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = no_object_weight  # 3DETR's semcls_percls_weights
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, outputs: dict, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        layers = [outputs["outputs"], *outputs.get("aux_outputs", [])]
        self._check(layers, targets)
        targets = _with_a_row(targets)
        count = (targets["gt_box_present"] > 0).sum().float()
        num_boxes = self.reduce_mean(count).clamp(min=1)  # every process divides by the same N
        total, logs = self._layer(layers[0], targets, num_boxes, "")
        for i, aux in enumerate(layers[1:]):
            loss, aux_logs = self._layer(aux, targets, num_boxes, f"_{i}")
            total = total + loss
            logs.update(aux_logs)
        return total, logs

    def _layer(self, out: Layer, targets: dict[str, torch.Tensor], num_boxes: torch.Tensor,
               suffix: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        giou = pairwise_giou(out, targets)  # (B, Q, K), shared by the matcher and the loss
        match = self.matcher(out, targets, giou)
        index, matched = match.gt_index, match.matched.float()
        terms: dict[str, torch.Tensor] = {}
        if self.weights["sem_cls"] > 0:
            labels = targets["gt_box_sem_cls_label"].gather(1, index).masked_fill(~match.matched, self.num_classes)
            terms["sem_cls"] = F.cross_entropy(out["sem_cls_logits"].float().transpose(1, 2), labels,
                                               self.class_weights)
        if self.weights["center"] > 0:
            l1 = (out["center_normalized"] - _take(targets["gt_box_centers_normalized"], index)).abs().sum(-1)
            terms["center"] = (l1 * matched).sum() / num_boxes
        if self.weights["size"] > 0:
            l1 = (out["size_normalized"] - _take(targets["gt_box_sizes_normalized"], index)).abs().sum(-1)
            terms["size"] = (l1 * matched).sum() / num_boxes
        if self.weights["giou"] > 0:
            terms["giou"] = ((1 - giou.gather(2, index.unsqueeze(-1)).squeeze(-1)) * matched).sum() / num_boxes
        weighted = {k: self.weights[k] * v for k, v in terms.items()}
        total = sum(weighted.values(), out["sem_cls_logits"].new_zeros((), dtype=torch.float32))
        logs = {f"loss/{k}{suffix}": v.detach() for k, v in weighted.items()}
        logs[f"loss/cardinality{suffix}"] = _cardinality(out["sem_cls_logits"], targets["gt_box_present"])
        return total, logs

    def _check(self, layers: list[Layer], targets: dict[str, torch.Tensor]) -> None:
        missing = [k for k in TARGET_KEYS if k not in targets]
        if missing:
            raise ValueError(f"targets lack {', '.join(missing)}")
        b, k = targets["gt_box_present"].shape
        for key in TARGET_KEYS:
            if tuple(targets[key].shape[:2]) != (b, k):
                raise ValueError(f"targets[{key!r}] has shape {tuple(targets[key].shape)}; gt_box_present has {(b, k)}")
        for i, out in enumerate(layers):
            shape = tuple(out["sem_cls_logits"].shape)
            if len(shape) != 3 or shape[0] != b or shape[2] != self.num_classes + 1:
                raise ValueError(f"layer {i}: sem_cls_logits {shape}, expected ({b}, Q, {self.num_classes + 1})")
        labels = targets["gt_box_sem_cls_label"][targets["gt_box_present"] > 0]
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"gt_box_sem_cls_label of real boxes must lie in [0, {self.num_classes})")


@torch.no_grad()
def _cardinality(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean over scenes of |queries whose top class is an object - real boxes| (3DETR's loss_cardinality)."""
    predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
    return (predicted - (present > 0).sum(1).float()).abs().mean()
