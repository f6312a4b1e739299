"""Part segmentation scores of a ``train segment`` run (ShapeNetPart; Table 10 of the MMPD paper).

    train eval partseg --cache caches/shapenetpart.zarr --ckpt runs/seg/best.pt --json

Test clouds are the first N stored points of each shape; predictions are
restricted to the parts of the shape's class, and scored as instance and class
mIoU (``train.eval.metrics.part_iou_scores``).
"""

from __future__ import annotations

import numpy as np
import torch

from train import checkpoint
from train.eval.metrics import part_iou_scores
from train.eval.split import evaluating, split_rows
from train.models.encoders import encoder_from_record
from train.models.part_segmentation import PartSegmentation, check_intermediates, restrict_to_class


def class_part_mask(class_parts: list[list[int]], num_parts: int) -> torch.Tensor:
    """(classes, parts) booleans: the parts each class has, the only ones its shapes' predictions may take."""
    mask = torch.zeros(len(class_parts), num_parts, dtype=torch.bool)
    for c, ids in enumerate(class_parts):
        mask[c, ids] = True
    return mask


@torch.inference_mode()
def predict_parts(model: PartSegmentation, cache, rows: np.ndarray, num_points: int, class_parts: list[list[int]],
                  batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (n, N, 3), predicted and true part ids (n, N) of ``rows``: the first N stored points of each."""
    device = next(model.parameters()).device
    mask = class_part_mask(class_parts, model.num_parts).to(device)
    points, preds, truth = [], [], []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        pts = cache.array("points").get_orthogonal_selection((chunk, slice(0, num_points))).astype(np.float32)
        labels = torch.from_numpy(cache.labels[chunk]).to(device)
        logits = model(torch.from_numpy(pts).to(device), labels)
        preds.append(restrict_to_class(logits.float(), labels, mask).cpu().numpy())
        truth.append(cache.array("part_label").get_orthogonal_selection((chunk, slice(0, num_points))))
        points.append(pts)
    return np.concatenate(points), np.concatenate(preds), np.concatenate(truth).astype(np.int64)


def evaluate_partseg(model: PartSegmentation, cache, split: str, num_points: int,
                     class_parts: list[list[int]] | None = None) -> dict:
    """Instance and class mIoU of ``model`` on ``split`` (predictions restricted to each shape's class)."""
    if not cache.has_part_labels:
        raise ValueError(f"{cache.loc.url} has no per-point part labels")
    class_parts = class_parts or [ids.tolist() for ids in cache.class_parts]
    rows = split_rows(cache, split)
    with evaluating(model):
        _, pred, truth = predict_parts(model, cache, rows, num_points, class_parts)
    scores = part_iou_scores(pred, truth, cache.labels[rows], [np.asarray(p) for p in class_parts],
                             cache.label_names)
    return {**scores, "split": split, "num_points": num_points}


def load_segmenter(ckpt: str) -> tuple[PartSegmentation, dict]:
    """A ``train segment`` checkpoint's model (in eval mode) and state (names, class parts, points per shape)."""
    state = checkpoint.load(ckpt, stage="segment")
    model = PartSegmentation(encoder_from_record(checkpoint.encoder_record(state)), len(state["label_names"]),
                             len(state["part_names"]))
    model.load_state_dict(state["model"])
    check_intermediates(state, model.encoder, ckpt)
    return model.eval(), state
