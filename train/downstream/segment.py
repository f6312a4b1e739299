"""Part segmentation fine-tuning (ShapeNetPart; Table 10 of the MMPD paper); its scores are in
``train/eval/part_segmentation.py``.

    train segment --cache caches/shapenetpart.zarr --init runs/s2/last.pt --out runs/seg
    train eval partseg --cache caches/shapenetpart.zarr --ckpt runs/seg/best.pt --json

The recipe is Point-MAE's part segmentation (``segmentation/main.py``): AdamW,
lr 2e-4, weight decay 0.05, cosine with 10 warm-up epochs, 300 epochs, batch
16, 2,048 points per shape (a random permutation of the stored 2,048 each
epoch), random scale 0.8-1.25 and shift +-0.1, per-point cross entropy. It
trains on ``trainval`` when the cache has it (ShapeNetPart), else ``train``,
and validates instance mIoU on ``test`` every epoch, keeping the best as
``best.pt`` (the published protocol; it selects on test).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cache_schema import open_cache
from train.data.objects import StreamConfig
from train.downstream.recipe import EpochTask, RecipeConfig, build_encoder
from train.eval.part_segmentation import evaluate_partseg
from train.loop import run
from train.models.part_segmentation import INTERMEDIATES, PartSegmentation, check_intermediates
from train.settings import setting

RECIPE = dict(epochs=300, warmup_epochs=10, batch_size=16, lr=2e-4, weight_decay=0.05, grad_clip=10.0,
              num_points=2048, drop_path_rate=0.1, augmentation="scale-shift")


@dataclass
class SegmentConfig(RecipeConfig):
    """A part-segmentation run; ``None`` settings come from the recipe."""

    train_split: str | None = setting(None, "The split to train on [unset: trainval when the cache has it, else "
                                            "train].")
    recipe_table = RECIPE

    def resolved(self) -> SegmentConfig:
        cache = open_cache(self.cache)
        if not cache.has_part_labels:
            raise ValueError(f"{self.cache} has no per-point part labels; build it with `preprocess points "
                             "shapenetpart` or `preprocess objects demo`")
        split = self.train_split or ("trainval" if "trainval" in cache.split_names else "train")
        if split not in cache.split_names:
            raise ValueError(f"--train-split {split!r}: {self.cache} has the splits {', '.join(cache.split_names)}")
        return self.filled(RECIPE, "segment", train_split=split)


class SegmentTask(EpochTask):
    stage = "segment"

    def __init__(self, cfg: SegmentConfig) -> None:
        self.cfg = cfg

    def stream_config(self) -> StreamConfig:
        return StreamConfig(split=self.cfg.train_split, num_points=self.cfg.num_points, sampling=self.cfg.sampling,
                            seed=self.cfg.seed, augmentation=self.cfg.augmentation, part_labels=True, contrastive=False)

    def build(self, stream, device, rank, world):
        cache = open_cache(self.cfg.cache)
        self.label_names, self.part_names = cache.label_names, cache.part_names
        self.class_parts = [ids.tolist() for ids in cache.class_parts]
        encoder = build_encoder(self.cfg, "segment")
        self.model = PartSegmentation(encoder, len(self.label_names), len(self.part_names)).to(device)
        return self.model

    def losses(self, ddp, batch, device, autocast) -> dict[str, torch.Tensor]:
        points = batch["points"].to(device, non_blocking=True)
        with autocast:
            logits = ddp(points, batch["label"].to(device, non_blocking=True))
        target = batch["part_label"].to(device, non_blocking=True)
        return {"total": F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1))}

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "encoder": self.model.encoder.describe(),
                "label_names": list(self.label_names), "part_names": list(self.part_names),
                "class_parts": self.class_parts, "num_points": self.cfg.num_points, "intermediates": INTERMEDIATES}

    def load_state(self, state: dict) -> None:
        check_intermediates(state, self.model.encoder, self.cfg.out, resuming=True)
        self.model.load_state_dict(state["model"])

    def describe(self) -> dict:
        return {"encoder": self.model.encoder.describe(), "init": self.cfg.init,
                "train_split": self.cfg.train_split, "num_parts": len(self.part_names)}

    def validate(self, url: str, split: str) -> dict[str, float]:
        scores = evaluate_partseg(self.model, open_cache(url), split, self.cfg.num_points, self.class_parts)
        return {"score": scores["instance_miou"], "instance_miou": scores["instance_miou"],
                "class_miou": scores["class_miou"]}


def train_segment(cfg: SegmentConfig, resume: bool = False, progress: bool = True,
                  stop_at: int | None = None) -> dict:
    """Fine-tune (or resume) a part-segmentation run; returns the last logged metrics."""
    cfg = cfg.resolved()
    return run(cfg, SegmentTask(cfg), resume, progress, stop_at)
