"""Detection scores of a ``train detect`` run on whole rooms: AP per class and mAP at IoU 0.25 and 0.5, as
3DETR reports them on ScanNetV2 val (its ``engine.evaluate`` with its AP calculator).

Each room of the split is sampled once (``num_points`` at random, seeded by (seed, room), as 3DETR samples its
val rooms), the last decoder layer's 256 boxes go through 3DETR's ``parse_predictions`` with its exact-eval
settings (boxes holding fewer than 5 of the sampled points dropped, same-class 3D NMS at IoU 0.25, then one
detection per class per kept query, scored class probability x objectness) and the metric of
:mod:`train.eval.detection_metrics`. ``--save-predictions`` writes every detection and ground-truth box, so the
AP can be recomputed from the file alone (:func:`scores_from_file`).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from cache_schema import open_cache
from train import checkpoint
from train.data.detection import SceneStream, SceneStreamConfig, open_box_cache
from train.eval.detection_metrics import parse_predictions, split_scores
from train.eval.split import evaluating
from train.models.detector import Detector, predicted_boxes
from train.models.encoders import encoder_from_record

PREDICTION_ARRAYS = ("scenes", "offsets", "boxes", "scores", "classes", "gt_offsets", "gt_boxes", "gt_classes")


@torch.inference_mode()
def predict_split(model: Detector, url: str, split: str, num_points: int, seed: int = 0, batch_size: int = 8,
                  progress: bool = False, max_rooms: int | None = None) -> dict[str, np.ndarray]:
    """Detections and ground truth of every built room of ``split`` (or the first ``max_rooms`` read), as flat
    arrays (:data:`PREDICTION_ARRAYS`)."""
    device = next(model.parameters()).device
    stream = SceneStream(url, SceneStreamConfig(split=split, num_points=num_points, augment=False, seed=seed,
                                                prefetch_bytes=0))
    stream.set_position(0, batch_size=batch_size, drop_last=False)
    ids = open_cache(url).ids
    rooms, dets, gts = [], [], []
    with evaluating(model):
        for batch in tqdm(stream, total=-(-len(stream) // batch_size), desc=f"detect {split}", unit="batch",
                          disable=not progress):
            if max_rooms is not None and len(rooms) >= max_rooms:
                break
            last = model(batch["points"].to(device))["outputs"]
            boxes = predicted_boxes(last).float().cpu().numpy()
            sem = last["sem_cls_prob"].float().cpu().numpy()
            obj = last["objectness_prob"].float().cpu().numpy()
            for i, row in enumerate(batch["row"].tolist()):
                rooms.append(str(ids[row]))
                dets.append(parse_predictions(boxes[i], sem[i], obj[i], points=batch["points"][i].numpy()))
                present = batch["box_present"][i].numpy() > 0
                gts.append((batch["boxes"][i].numpy()[present], batch["box_labels"][i].numpy()[present]))
    order = np.argsort(rooms, kind="stable")  # rooms by id, whatever order the stream read them in
    dets, gts = [dets[i] for i in order], [gts[i] for i in order]
    return {"scenes": np.asarray(rooms)[order],
            "offsets": np.r_[0, np.cumsum([len(d[0]) for d in dets])].astype(np.int64),
            "boxes": np.concatenate([d[0] for d in dets] + [np.zeros((0, 6))]).astype(np.float32),
            "scores": np.concatenate([d[1] for d in dets] + [np.zeros(0)]).astype(np.float32),
            "classes": np.concatenate([d[2] for d in dets] + [np.zeros(0)]).astype(np.int64),
            "gt_offsets": np.r_[0, np.cumsum([len(g[0]) for g in gts])].astype(np.int64),
            "gt_boxes": np.concatenate([g[0] for g in gts] + [np.zeros((0, 6))]).astype(np.float32),
            "gt_classes": np.concatenate([g[1] for g in gts] + [np.zeros(0)]).astype(np.int64)}


def evaluate_detection(model: Detector, url: str, split: str, num_points: int, seed: int = 0, batch_size: int = 8,
                       class_names: tuple[str, ...] | None = None, progress: bool = False,
                       save_predictions: str | None = None) -> dict:
    """``map25``, ``map50`` and ``per_class`` AP of a split; optionally the predictions file (``.npz``)."""
    arrays = predict_split(model, url, split, num_points, seed, batch_size, progress)
    cache = open_cache(url)
    names = tuple(class_names or cache.box_classes)
    if save_predictions:
        np.savez_compressed(save_predictions, **arrays, class_names=np.asarray(names))
    built = set(cache.done_rows(split).tolist())
    failed = [str(cache.ids[r]) for r in cache.split(split) if r not in built]
    return {**split_scores(**arrays, class_names=names), "split": split, "rooms": len(arrays["scenes"]), "failed_rooms": failed}


def scores_from_file(path: str) -> dict:
    """The scores of a ``--save-predictions`` file, from its arrays alone."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in PREDICTION_ARRAYS}
        names = tuple(str(n) for n in f["class_names"])
    return split_scores(**arrays, class_names=names)


def check_classes(url: str, state: dict):
    """The rooms cache with boxes at ``url``, or a one-line error unless it has the box classes the run was
    trained on."""
    cache = open_box_cache(url)
    if list(cache.box_classes) != list(state["box_classes"]):
        raise ValueError(f"{url} has other box classes than the run was trained on "
                         f"({len(cache.box_classes)} vs {len(state['box_classes'])})")
    return cache


def load_detector(ckpt: str) -> tuple[Detector, dict]:
    """A ``train detect`` checkpoint's model (in eval mode) and state (box classes, points per room)."""
    state = checkpoint.load(ckpt, stage="detect")
    model = Detector(encoder_from_record(checkpoint.encoder_record(state)), **state["detector"])
    model.load_state_dict(state["model"])
    return model.eval(), state
