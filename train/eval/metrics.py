"""Segmentation metrics: confusion matrix, per-class IoU, mIoU and accuracy with an ignore index."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted; points labelled ``ignore_index`` skipped."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {target.shape[0]} labels")
    keep = target != ignore_index
    pred, target = pred[keep].astype(np.int64), target[keep].astype(np.int64)
    if len(target) and (target.max() >= num_classes or pred.max() >= num_classes or min(pred.min(), target.min()) < 0):
        raise ValueError(f"class indices must be in 0..{num_classes - 1} (or {ignore_index} = ignore)")
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_scores(conf: np.ndarray, class_names: tuple[str, ...] | None = None) -> dict:
    """Per-class IoU = TP / (TP + FP + FN) (None for a class absent from labels and predictions), their
    mean over present classes (mIoU) and overall accuracy."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    names = class_names or tuple(str(i) for i in range(len(tp)))
    total = conf.sum()
    return {"miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
            "accuracy": float(tp.sum() / total) if total else 0.0,
            "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
            "num_points": int(total)}


def part_iou_scores(pred: list[np.ndarray] | np.ndarray, target: list[np.ndarray] | np.ndarray,
                    object_class: np.ndarray, class_parts: list[np.ndarray],
                    class_names: tuple[str, ...] | None = None) -> dict:
    """ShapeNetPart's metrics: instance mIoU (mean over shapes of the mean IoU over the parts of the shape's
    class) and class mIoU (mean over classes of their shapes' mean). A part absent from both prediction and
    truth of a shape counts as IoU 1, as the standard evaluation (Point-MAE, PointNet++) does."""
    shape_iou = np.zeros(len(object_class))
    for i, (p, t, c) in enumerate(zip(pred, target, object_class)):
        ious = []
        for part in class_parts[int(c)]:
            union = np.sum((p == part) | (t == part))
            ious.append(1.0 if union == 0 else np.sum((p == part) & (t == part)) / union)
        shape_iou[i] = np.mean(ious)
    classes = np.unique(object_class)
    per_class = {int(c): float(shape_iou[object_class == c].mean()) for c in classes}
    named = {(class_names[c] if class_names else str(c)): v for c, v in per_class.items()}
    return {"instance_miou": float(shape_iou.mean()), "class_miou": float(np.mean(list(per_class.values()))),
            "per_class": named, "num_shapes": int(len(object_class))}
