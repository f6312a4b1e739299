"""Indoor 3D detection scores as votenet and 3DETR compute them: ScanNetV2's AP25 / AP50 (mAP over 18 classes).

Two steps, each a port of the reference's semantics (3DETR ``utils/ap_calculator.py``, ``utils/nms.py`` and
``utils/eval_det.py``; votenet's ``eval_det.py`` is the same code):

1. :func:`parse_predictions` turns one scene's Q queries into detections, with the evaluation config both papers
   report (``use_3d_nms``, ``cls_nms``, ``per_class_proposal``, ``nms_iou=0.25``, ``conf_thresh=0.05``): optional
   removal of boxes holding fewer than 5 input points, 3D NMS within each query's argmax class scored by
   objectness, then every kept query with objectness > ``conf_thresh`` emits one detection per class, scored
   ``sem_cls_prob[c] * objectness``.
2. :func:`average_precision` scores the detections of a split: per class over all scenes, detections by
   descending score, each matched to the same-class ground-truth box of its scene with the highest IoU; a TP if
   that IoU > the threshold and that box is not yet taken, else a FP; VOC all-point interpolated AP.

Boxes are axis-aligned ``(..., 6)`` = ``cx, cy, cz, dx, dy, dz`` (:mod:`train.ops.boxes`); every IoU is its
:func:`~train.ops.boxes.box_iou`. The reference's own choices this module follows (ties, strict thresholds, the
max-IoU match, classes without ground truth) are spelled out where each happens. Checked once against 3DETR's
own ``parse_predictions`` and ``APCalculator`` on random scenes: the same detections in the same order, per-class
AP and recall equal to the last bit, the mean within 6e-8 (the reference averages in float32, this in float64)
where every class has ground truth, as on ScanNet val (the mean runs over the classes with ground truth).

``P.npz`` of a detection evaluation holds ``scenes`` (S,), ``offsets`` (S+1,), ``boxes`` (D, 6), ``scores`` (D,),
``classes`` (D,), ``gt_offsets`` (S+1,), ``gt_boxes`` (G, 6), ``gt_classes`` (G,), scene s's rows being
``offsets[s]:offsets[s+1]``; ``split_scores(**np.load("P.npz"), class_names=...)`` recomputes the scores.

Time (measured once on 2 shared cores, not asserted): the test-sized split (8 scenes, 91 detections, 5 classes)
takes about 2 ms; a ScanNet-sized random one (312 scenes x 256 queries x 18 classes = 1.44 M detections, 20
ground-truth boxes a scene) about 1.6 s for AP25 and AP50 together. :func:`parse_predictions` takes about 2.5 ms
a scene of 256 queries, 70 ms with 40k input points for the empty-box removal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from train.ops.boxes import box_iou


class Detections(NamedTuple):
    """Detections of one scene: boxes (D, 6), scores (D,), classes (D,) int64."""
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


class ThresholdScores(NamedTuple):
    """Scores at one IoU threshold, per class (C,): AP and final recall (TP / ground-truth boxes), NaN for a class
    with neither ground truth nor detections (3DETR's calculator never sees it); and the number of ground-truth
    boxes. The means run over the classes with ground truth (see :func:`average_precision`)."""
    ap: np.ndarray
    recall: np.ndarray
    num_gt: np.ndarray

    @property
    def mean_ap(self) -> float:
        return float(self.ap[self.num_gt > 0].mean()) if (self.num_gt > 0).any() else 0.0

    @property
    def mean_recall(self) -> float:
        return float(self.recall[self.num_gt > 0].mean()) if (self.num_gt > 0).any() else 0.0


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K1, K2) float64 IoU of numpy boxes through :func:`box_iou`."""
    return box_iou(torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64))).numpy()


# ---- one scene: NMS and per-class proposals ----------------------------------------------------------------


def nms_same_class(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = 0.25) -> np.ndarray:
    """Greedy 3D NMS that only suppresses boxes of the same class (3DETR's ``nms_3d_faster_samecls``).

    Args:
        boxes: (N, 6) boxes; scores: (N,) ranking scores; classes: (N,) int class of each box.
        iou: a box is suppressed by a higher-ranked kept box of its class when their IoU is *strictly* greater
            (the reference's ``o > overlap_threshold``; an IoU equal to ``iou`` survives).

    Returns:
        (K,) int64 indices of the kept boxes in the order they were picked (descending score). Equal scores pick
        the higher index first: the reference pops the last element of an ascending ``np.argsort``, which is
        stable for the short arrays numpy insertion-sorts (unspecified for longer ones).

    The reference's overlap with ``use_old_type_nms=False`` is the plain IoU ``inter / (vol_i + vol_j - inter)``
    of the two boxes' min/max corners, which :func:`box_iou` computes (its union floored at 1e-8 m^3).
    """
    boxes, scores, classes = np.asarray(boxes), np.asarray(scores), np.asarray(classes)
    if boxes.ndim != 2 or boxes.shape[1] != 6 or scores.shape != (len(boxes),) or classes.shape != (len(boxes),):
        raise ValueError(f"boxes (N, 6), scores (N,), classes (N,) expected, got {boxes.shape}, {scores.shape}, "
                         f"{classes.shape}")
    over = (_iou(boxes, boxes) > iou) & (classes[:, None] == classes[None, :])  # (N, N)
    suppressed = np.zeros(len(boxes), bool)
    kept = []
    for i in np.argsort(scores, kind="stable")[::-1]:
        if not suppressed[i]:
            kept.append(i)
            suppressed |= over[i]
    return np.array(kept, np.int64)


def points_in_boxes(points: np.ndarray, boxes: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """(K,) number of points (N, 3) inside each box (K, 6), faces included (the reference's convex-hull test
    counts points on the hull as inside)."""
    lo, hi = boxes[:, :3] - boxes[:, 3:] / 2, boxes[:, :3] + boxes[:, 3:] / 2
    counts = np.zeros(len(boxes), np.int64)
    for s in range(0, len(points), chunk):
        p = points[s:s + chunk]
        inside = np.ones((len(boxes), len(p)), bool)  # (K, n)
        for k in range(3):
            inside &= (p[:, k] >= lo[:, k, None]) & (p[:, k] <= hi[:, k, None])
        counts += np.count_nonzero(inside, axis=1)
    return counts


def parse_predictions(boxes: np.ndarray, sem_cls_prob: np.ndarray, objectness_prob: np.ndarray, *,
                      nms_iou: float = 0.25, conf_thresh: float = 0.05, points: np.ndarray | None = None,
                      min_points: int = 5) -> Detections:
    """Detections of one scene from its Q queries, as 3DETR's ``parse_predictions`` with its ScanNet config.

    Args:
        boxes: (Q, 6) predicted boxes.
        sem_cls_prob: (Q, C) class probabilities (3DETR's softmax without its background column, so rows need not
            sum to 1); a query's NMS class is its argmax (the first on ties).
        objectness_prob: (Q,) objectness; NMS ranks by it, and only kept queries with objectness strictly above
            ``conf_thresh`` emit detections (the threshold is on objectness, not on the per-class score, so
            detections scored far below ``conf_thresh`` remain, and count for recall).
        points: (N, 3) the network's input points, in the boxes' frame. When given, queries whose box holds fewer
            than ``min_points`` of them are dropped before NMS (all of them empty: the most objective is kept, as
            3DETR does; votenet keeps none). 3DETR's ``evaluate`` (``exact_eval=True``, during training and in
            ``--test_only``) and votenet's ``eval.py`` (without ``--faster_eval``) do this; only the training-set AP
            that 3DETR logs while training skips it.

    Returns:
        :class:`Detections` with D = C x (kept queries): class-major, the queries in index order within a class
        (the reference's list order, which decides ties in :func:`average_precision`); scores keep the inputs'
        dtype (float32 in, float32 out, as the reference multiplies float32 arrays).
    """
    boxes, sem_cls_prob, objectness_prob = np.asarray(boxes), np.asarray(sem_cls_prob), np.asarray(objectness_prob)
    q, c = sem_cls_prob.shape
    if boxes.shape != (q, 6) or objectness_prob.shape != (q,):
        raise ValueError(f"boxes (Q, 6), sem_cls_prob (Q, C), objectness_prob (Q,) expected, got {boxes.shape}, "
                         f"{sem_cls_prob.shape}, {objectness_prob.shape}")
    candidates = np.arange(q)
    if points is not None:
        candidates = np.flatnonzero(points_in_boxes(np.asarray(points), boxes) >= min_points)
        if not len(candidates) and q:
            candidates = np.array([np.argmax(objectness_prob)])
    picked = candidates[nms_same_class(boxes[candidates], objectness_prob[candidates],
                                       sem_cls_prob[candidates].argmax(1), nms_iou)]
    keep = np.zeros(q, bool)
    keep[picked] = True
    kept = np.flatnonzero(keep & (objectness_prob > conf_thresh))  # query order, as the reference lists them
    scores = (sem_cls_prob[kept] * objectness_prob[kept, None]).T  # (C, K)
    return Detections(np.tile(boxes[kept], (c, 1)), scores.reshape(-1),
                      np.repeat(np.arange(c, dtype=np.int64), len(kept)))


# ---- a split: matching, precision / recall, AP -----------------------------------------------------------


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point interpolated AP (``use_07_metric=False``): the area under the precision envelope (the
    running maximum from the right) of the curve with sentinels (0, 0) first and (1, 0) last."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.maximum.accumulate(np.concatenate(([0.0], precision, [0.0]))[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _best_gt(offsets: np.ndarray, boxes: np.ndarray, classes: np.ndarray, gt_offsets: np.ndarray,
             gt_boxes: np.ndarray, gt_classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's highest IoU (D,) with a ground-truth box of its scene and class (-inf if there is none)
    and that box's row (D,) in ``gt_boxes`` (-1 if none); the first such box on equal IoUs (the reference's
    ``iou > ovmax`` scan). Independent of the threshold and of the detection order."""
    ovmax, best = np.full(len(boxes), -np.inf), np.full(len(boxes), -1, np.int64)
    for s in range(len(offsets) - 1):
        a, b, ga, gb = offsets[s], offsets[s + 1], gt_offsets[s], gt_offsets[s + 1]
        if a == b or ga == gb:
            continue
        iou = _iou(boxes[a:b], gt_boxes[ga:gb])  # (n, m)
        iou[classes[a:b, None] != gt_classes[None, ga:gb]] = -np.inf
        j = iou.argmax(1)
        ovmax[a:b], best[a:b] = iou[np.arange(b - a), j], ga + j
    return ovmax, best


def _precision_recall(ovmax: np.ndarray, best: np.ndarray, scores: np.ndarray, num_gt: int,
                      threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) along one class's detections by descending score, as ``eval_det_cls`` walks them.

    Equal scores keep the detections' order (scene, then position in the scene): ``np.argsort(-confidence)``
    of the reference is stable for the short arrays numpy insertion-sorts, unspecified for longer ones. A
    detection is a TP when its max-IoU box is above the threshold (strictly: ``ovmax > ovthresh``) and no earlier
    detection took that box; one whose max-IoU box is taken is a FP even if another box of its class would match
    (the reference never falls back to the second best)."""
    order = np.argsort(-scores, kind="stable")
    hit = np.flatnonzero(ovmax[order] > threshold)
    _, first = np.unique(best[order][hit], return_index=True)
    tp = np.zeros(len(order))
    tp[hit[first]] = 1
    tp = np.cumsum(tp)
    recall = tp / num_gt if num_gt else np.zeros_like(tp)
    return recall, tp / np.arange(1, len(tp) + 1)  # tp + fp = rank


def _flat_scores(offsets: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                 gt_offsets: np.ndarray, gt_boxes: np.ndarray, gt_classes: np.ndarray, num_classes: int,
                 iou_thresholds: Sequence[float]) -> dict[float, ThresholdScores]:
    ovmax, best = _best_gt(offsets, boxes, classes, gt_offsets, gt_boxes, gt_classes)
    num_gt = np.bincount(gt_classes, minlength=num_classes)
    by_class = np.argsort(classes, kind="stable")  # flat order kept within a class
    bounds = np.searchsorted(classes[by_class], np.arange(num_classes + 1))
    out = {t: ThresholdScores(np.full(num_classes, np.nan), np.full(num_classes, np.nan), num_gt)
           for t in iou_thresholds}
    for c in range(num_classes):
        rows = by_class[bounds[c]:bounds[c + 1]]
        for t, res in out.items():
            if len(rows):  # a class without ground truth but with detections scores AP 0 (all FP) and counts
                recall, precision = _precision_recall(ovmax[rows], best[rows], scores[rows], num_gt[c], t)
                res.ap[c], res.recall[c] = voc_ap(recall, precision), recall[-1]
            elif num_gt[c]:  # ground truth but no detections: AP 0, recall 0
                res.ap[c], res.recall[c] = 0.0, 0.0
    return out


def _check_split(offsets, boxes, scores, classes, gt_offsets, gt_boxes, gt_classes, num_classes: int) -> tuple:
    """The flat arrays as int64 / float arrays, validated once at the public boundary."""
    offsets, gt_offsets = np.asarray(offsets, np.int64), np.asarray(gt_offsets, np.int64)
    boxes, gt_boxes, scores = np.asarray(boxes), np.asarray(gt_boxes), np.asarray(scores)
    classes, gt_classes = np.asarray(classes).astype(np.int64), np.asarray(gt_classes).astype(np.int64)
    for name, off, n in (("offsets", offsets, len(boxes)), ("gt_offsets", gt_offsets, len(gt_boxes))):
        if off.ndim != 1 or not len(off) or off[0] != 0 or off[-1] != n or np.any(np.diff(off) < 0):
            raise ValueError(f"{name} must rise from 0 to the number of boxes ({n}), got {off}")
    if len(offsets) != len(gt_offsets):
        raise ValueError(f"{len(offsets) - 1} scenes of detections for {len(gt_offsets) - 1} of ground truth")
    if boxes.shape != (len(boxes), 6) or gt_boxes.shape != (len(gt_boxes), 6):
        raise ValueError(f"boxes and gt_boxes must be (N, 6), got {boxes.shape} and {gt_boxes.shape}")
    if scores.shape != (len(boxes),) or classes.shape != (len(boxes),) or gt_classes.shape != (len(gt_boxes),):
        raise ValueError(f"scores {scores.shape} and classes {classes.shape} must be ({len(boxes)},), gt_classes "
                         f"{gt_classes.shape} ({len(gt_boxes)},)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    for name, cls in (("classes", classes), ("gt_classes", gt_classes)):
        if len(cls) and (cls.min() < 0 or cls.max() >= num_classes):
            raise ValueError(f"{name} must be in 0..{num_classes - 1}")
    return offsets, boxes, scores, classes, gt_offsets, gt_boxes, gt_classes


def _flatten(detections: Sequence[tuple], ground_truth: Sequence[tuple]) -> tuple:
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} scenes of detections for {len(ground_truth)} of ground truth")
    offsets = np.cumsum([0] + [len(d[0]) for d in detections])
    gt_offsets = np.cumsum([0] + [len(g[0]) for g in ground_truth])
    cat = lambda parts, shape: np.concatenate([np.reshape(p, shape) for p in parts] + [np.zeros((0, *shape[1:]))])
    return (offsets, cat([d[0] for d in detections], (-1, 6)), cat([d[1] for d in detections], (-1,)),
            cat([d[2] for d in detections], (-1,)), gt_offsets, cat([g[0] for g in ground_truth], (-1, 6)),
            cat([g[1] for g in ground_truth], (-1,)))


def average_precision(detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                      ground_truth: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int,
                      iou_thresholds: Sequence[float] = (0.25, 0.5)) -> dict[float, ThresholdScores]:
    """AP and recall of every class at every IoU threshold, as 3DETR's ``APCalculator.compute_metrics``.

    Args:
        detections: per scene (boxes (D, 6), scores (D,), classes (D,)), e.g. :func:`parse_predictions`.
        ground_truth: per scene (boxes (G, 6), classes (G,)), the same scenes in the same order.

    Returns:
        {threshold: :class:`ThresholdScores`}. Classes are scored over all scenes together; a detection only
        matches boxes of its own scene. The mean (``mean_ap``) runs over the classes that have ground truth, a
        class without detections counting AP 0. A class with detections but no ground truth has AP 0 in
        ``ap`` and is left out of the mean: 3DETR would count it 0 in the mean and votenet would make the mean NaN;
        on ScanNet val every class has ground truth, so all three agree there.
    """
    arrays = _check_split(*_flatten(detections, ground_truth), num_classes)
    return _flat_scores(*arrays, num_classes, tuple(iou_thresholds))


def scores_dict(results: dict[float, ThresholdScores], class_names: Sequence[str]) -> dict:
    """JSON-friendly scores: ``map25``, ``map50``, ``ar25``, ``ar50`` (mean recall, 3DETR's AR) and
    ``per_class`` {name: {ap25, ap50, recall25, recall50, num_gt}} (None where a class is left out)."""
    value = lambda v: None if np.isnan(v) else float(v)
    out: dict = {}
    per_class: dict = {name: {} for name in class_names}
    for t, res in results.items():
        pct = f"{round(t * 100):d}"
        out[f"map{pct}"], out[f"ar{pct}"] = res.mean_ap, res.mean_recall
        for c, name in enumerate(class_names):
            per_class[name].update({f"ap{pct}": value(res.ap[c]), f"recall{pct}": value(res.recall[c]),
                                    "num_gt": int(res.num_gt[c])})
    return {**out, "per_class": per_class}


def split_scores(scenes: np.ndarray, offsets: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                 classes: np.ndarray, gt_offsets: np.ndarray, gt_boxes: np.ndarray, gt_classes: np.ndarray, *,
                 class_names: Sequence[str], iou_thresholds: Sequence[float] = (0.25, 0.5)) -> dict:
    """:func:`scores_dict` of a split from the flat arrays of a predictions file (see the module docstring):
    scene s's detections are rows ``offsets[s]:offsets[s+1]`` of boxes (D, 6), scores (D,) and classes (D,), its
    ground truth rows ``gt_offsets[s]:gt_offsets[s+1]`` of gt_boxes (G, 6) and gt_classes (G,)."""
    if len(scenes) != len(offsets) - 1:
        raise ValueError(f"{len(scenes)} scene ids for {len(offsets) - 1} scenes of offsets")
    arrays = _check_split(offsets, boxes, scores, classes, gt_offsets, gt_boxes, gt_classes, len(class_names))
    results = _flat_scores(*arrays, len(class_names), tuple(iou_thresholds))
    out = scores_dict(results, class_names)
    return {**out, "num_scenes": len(scenes), "num_detections": len(arrays[1]), "num_gt": len(arrays[-1])}
