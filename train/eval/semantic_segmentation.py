"""Indoor semantic segmentation scores of a ``train semseg`` run (S3DIS Area 5; Table 6 of the MMPD paper).

    train eval semseg --cache caches/s3dis.zarr --ckpt runs/semseg/best.pt --json --save-predictions P.npz

Whole rooms, as ACT's ``main_test.py`` scores them: every room of the split is covered by sliding 1 m columns
(stride 0.5 m, :func:`train.data.rooms.sliding_blocks`), each cut into blocks of N points; ``votes`` passes, each
with its own random padding and order, and every pass adds one vote to each point's predicted class (hard votes);
a point's prediction is its most voted class. mIoU, mAcc and OA are computed over every point of every room of
the split together (one confusion matrix for the area), as the reference does. One room is in memory at a time.

Rooms of the split whose build failed cannot be scored: their ids are listed as ``failed_rooms`` (and
`train eval semseg` warns), so a missing room never passes unnoticed.

``P.npz`` holds ``rooms`` (R,) ids, ``offsets`` (R+1,), ``pred`` and ``label`` (sum,) uint8 class indices (255 =
unlabelled) in the cache's class order, so anyone can recompute the scores.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from train import checkpoint
from train.data.rooms import RoomBlockStream, block_input, sliding_blocks
from train.eval.metrics import IGNORE_INDEX, confusion_matrix
from train.eval.split import evaluating, split_rows
from train.models.encoders import encoder_from_record
from train.models.part_segmentation import PartSegmentation


def segmentation_scores(conf: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """mIoU and mAcc (mean IoU and mean recall over *every* class, a class absent from the labels counting 0, as
    ACT's ``main_test.py`` computes them: S3DIS Area 5 has all 13), OA and per-class IoU (None for a class absent
    from labels and predictions) from a (C, C) confusion matrix."""
    tp = np.diag(conf).astype(np.float64)
    truth, union = conf.sum(1), conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        recall = np.where(truth > 0, tp / truth, 0.0)
    total = conf.sum()
    return {"miou": float(np.nan_to_num(iou).mean()) if len(iou) else 0.0,
            "macc": float(recall.mean()) if len(recall) else 0.0,
            "oa": float(tp.sum() / total) if total else 0.0,
            "per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, iou)},
            "num_points": int(total)}


@torch.inference_mode()
def evaluate_blocks(model: PartSegmentation, stream: RoomBlockStream, num_classes: int,
                    batch_size: int = 32) -> dict:
    """Scores on one epoch of a stream's random blocks (the per-epoch validation of a run)."""
    device = next(model.parameters()).device
    stream.set_position(0, batch_size=batch_size, drop_last=False)
    conf = np.zeros((num_classes, num_classes), np.int64)
    with evaluating(model):
        for batch in stream:
            pred = model(batch["points"].to(device)).argmax(-1).cpu().numpy()
            conf += confusion_matrix(pred, batch["labels"].numpy(), num_classes)
    return segmentation_scores(conf, tuple(str(c) for c in range(num_classes)))


@torch.inference_mode()
def predict_room(model: PartSegmentation, xyz: np.ndarray, num_points: int, rng: np.random.Generator,
                 votes: int = 3, block_size: float = 1.0, stride: float = 0.5, batch_size: int = 32) -> np.ndarray:
    """(n,) predicted class of every point of a room (``xyz`` with its minimum at 0): hard votes over ``votes``
    passes of sliding blocks."""
    device = next(model.parameters()).device
    counts = np.zeros((len(xyz), model.num_parts), np.uint32)  # a lone point padded to a block votes N times
    for _ in range(votes):
        chunks = [(idx[s:s + num_points], center) for idx, center in sliding_blocks(xyz, num_points, rng, block_size,
                                                                                     stride)
                  for s in range(0, len(idx), num_points)]
        for b in range(0, len(chunks), batch_size):
            part = chunks[b:b + batch_size]
            points = np.stack([block_input(xyz[idx], center) for idx, center in part])
            pred = model(torch.from_numpy(points).to(device)).argmax(-1).cpu().numpy()
            for (idx, _), p in zip(part, pred):
                np.add.at(counts, (idx, p), 1)
    return counts.argmax(axis=1)


def evaluate_rooms(model: PartSegmentation, cache, split: str, num_points: int, votes: int = 3,
                   block_size: float = 1.0, seed: int = 0, batch_size: int = 32, progress: bool = False,
                   save_predictions: str | None = None) -> dict:
    """Whole-room scores of ``model`` on ``split`` (see the module docstring); ``save_predictions``: write P.npz."""
    rows = split_rows(cache, split)
    built = set(rows.tolist())
    failed = [str(cache.ids[r]) for r in cache.split(split) if r not in built]
    names = cache.label_names
    conf = np.zeros((len(names), len(names)), np.int64)
    kept: dict[str, list] = {"rooms": [], "pred": [], "label": []}
    rng = np.random.default_rng(seed)
    ignored = 0
    with evaluating(model):
        for room in tqdm(rows, desc=f"{split} rooms", unit="room", disable=not progress):
            xyz = cache.ragged("points", int(room))
            labels = cache.ragged("labels", int(room))
            pred = predict_room(model, xyz - xyz.min(axis=0), num_points, rng, votes, block_size,
                                batch_size=batch_size)
            conf += confusion_matrix(pred, labels, len(names))
            ignored += int((labels == IGNORE_INDEX).sum())
            if save_predictions:
                kept["rooms"].append(str(cache.ids[room]))
                kept["pred"].append(pred.astype(np.uint8))
                kept["label"].append(labels.astype(np.uint8))
    scores = segmentation_scores(conf, names)
    if save_predictions:
        sizes = [len(p) for p in kept["pred"]]
        np.savez(save_predictions, rooms=np.array(kept["rooms"]), offsets=np.concatenate([[0], np.cumsum(sizes)]),
                 pred=np.concatenate(kept["pred"]) if sizes else np.zeros(0, np.uint8),
                 label=np.concatenate(kept["label"]) if sizes else np.zeros(0, np.uint8),
                 class_names=np.array(names))
    return {**scores, "split": split, "rooms": len(rows), "failed_rooms": failed, "votes": votes,
            "num_points_per_block": num_points,
            "ignored_points": ignored, "confusion": conf.tolist()}


def load_semseg(ckpt: str) -> tuple[PartSegmentation, dict]:
    """A ``train semseg`` checkpoint's model (in eval mode) and state (class names, points per block)."""
    state = checkpoint.load(ckpt, stage="semseg")
    model = PartSegmentation(encoder_from_record(checkpoint.encoder_record(state)), 0, len(state["label_names"]))
    model.load_state_dict(state["model"])
    return model.eval(), state

