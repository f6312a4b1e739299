"""LiDAR per-point segmentation scores of a ``train fusion finetune`` run.

    train eval seg --cache caches/demo-scenes.zarr --ckpt runs/f-1pc/last.pt --json

The LiDAR-only path (backbone -> segmentation head) is scored frame by frame
on a split of a scenes cache: mIoU, per-class IoU and accuracy, points
labelled 255 skipped (``train.eval.metrics``).
"""

from __future__ import annotations

import numpy as np
import torch

from cache_schema import open_cache
from train import checkpoint
from train.data.scenes import SceneStream, SceneStreamConfig
from train.eval.metrics import confusion_matrix, iou_scores
from train.models.fusion import FusionConfig, FusionModel
from train.models.lidar_backbone import WaffleConfig


def load_fusion(ckpt: str, stages: tuple[str, ...] = ("fusion-pretrain", "fusion-finetune")) -> FusionModel:
    """A fusion checkpoint's model in eval mode; ``stages``: the runs accepted (fine-tuning ones have the head)."""
    state = checkpoint.load(ckpt, stage=stages)
    cfg = state["fusion_config"]
    config = FusionConfig(**{**cfg, "backbone": WaffleConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                               for k, v in cfg["backbone"].items()})})
    model = FusionModel(config, state["teacher_dim"], len(state["label_names"]))
    model.load_state_dict(state["model"])
    return model.eval()


def evaluate_seg(ckpt: str, url: str, split: str = "val") -> dict:
    """mIoU, per-class IoU and accuracy of a fine-tuned checkpoint's LiDAR-only path on a split."""
    return segmentation_scores(load_fusion(ckpt, stages=("fusion-finetune",)), url, split)  # pre-training: no head


@torch.inference_mode()
def segmentation_scores(model: FusionModel, url: str, split: str = "val") -> dict:
    """mIoU, per-class IoU and accuracy of the LiDAR-only path on a split (ignore index 255 skipped)."""
    was_training = model.training
    model.eval()
    cache = open_cache(url)
    names = tuple(cache.attrs.label_names)
    stream = SceneStream(url, SceneStreamConfig(split))
    conf = np.zeros((len(names), len(names)), np.int64)
    device = next(model.parameters()).device
    for frame in stream:  # batches of one frame
        logits = model(frame["points"].to(device), frame["batch_index"].to(device))
        conf += confusion_matrix(logits.argmax(1).cpu().numpy(), frame["labels"].numpy(), len(names))
    model.train(was_training)
    return {**iou_scores(conf, names), "split": split, "num_frames": len(stream)}
