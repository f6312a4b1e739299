"""Indoor semantic segmentation fine-tuning (S3DIS Area 5; Table 6 of the MMPD paper); whole-room scores are in
``train/eval/semantic_segmentation.py``.

    train semseg --cache caches/s3dis.zarr --init runs/s2/last.pt --out runs/semseg
    train eval semseg --cache caches/s3dis.zarr --ckpt runs/semseg/best.pt --json

The protocol is ACT's ``semantic_segmentation/`` (itself PointNet++'s S3DIS loader with Point-MAE's segmentation
model): random 1 m columns of 2,048 points with xyz input (:mod:`train.data.rooms`), the Point-MAE segmentation
head without the object class (:class:`~train.models.part_segmentation.PartSegmentation` with no classes),
class-weighted cross entropy with ``(max p / p) ** (1/3)`` weights of the training rooms, AdamW lr 2e-4, weight
decay 0.05, cosine over 60 epochs with 10 warm-up, batch 32, gradient clip 10. Every epoch it scores random
blocks of the test split (mIoU), keeping the best as ``best.pt``, as the reference does (it selects on Area 5).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cache_schema import open_cache
from train.data.rooms import RoomBlockStream, RoomStreamConfig, class_weights
from train.downstream.recipe import EpochTask, RecipeConfig, build_encoder
from train.eval.metrics import IGNORE_INDEX
from train.loop import run
from train.models.part_segmentation import INTERMEDIATES, PartSegmentation
from train.settings import setting

RECIPE = dict(epochs=60, warmup_epochs=10, batch_size=32, lr=2e-4, weight_decay=0.05, grad_clip=10.0,
              num_points=2048, drop_path_rate=0.1)


@dataclass
class SemsegConfig(RecipeConfig):
    """A semantic-segmentation run on a rooms cache; ``None`` settings come from the recipe."""

    train_split: str = setting("train", "The split to train on (S3DIS: every area but --test-area).")
    sample_rate: float = setting(1.0, "Training blocks per epoch as a share of (points of the training rooms / "
                                      "points per block).", check="positive")
    block_size: float = setting(1.0, "Side of a block's square column, in metres.", check="positive")
    class_weighting: bool = setting(True, "Weight the loss by (max p / p) ** (1/3) of the training rooms' class "
                                          "frequencies p (the reference's labelweights).",
                                    flags=("--class-weighting/--no-class-weighting",))
    augment: bool = setting(True, "Scale U(0.8, 1.25) and shift U(-0.1, 0.1) every training block.",
                            flags=("--augment/--no-augment",))
    batch_size: int | None = setting(None, "Blocks per step on each process.", check="positive")  # type: ignore
    num_points: int | None = setting(None, "Points per block.", check="positive")  # type: ignore[assignment]
    recipe_table = RECIPE
    not_options = RecipeConfig.not_options + ("sampling", "augmentation")  # blocks are drawn, not sampled

    def resolved(self) -> SemsegConfig:
        cache = open_cache(self.cache)
        if cache.kind != "rooms":
            raise ValueError(f"{self.cache} is a {cache.kind} cache; `train semseg` reads a rooms cache "
                             "(`preprocess rooms s3dis` or `preprocess rooms demo-rooms`)")
        for name, split in (("--train-split", self.train_split), ("--val-split", self.val_split)):
            if split is not None and split not in cache.split_names:
                raise ValueError(f"{name} {split!r}: {self.cache} has the splits {', '.join(cache.split_names)}")
        return self.filled(RECIPE, "semseg")


class SemsegTask(EpochTask):
    stage = "semseg"

    def __init__(self, cfg: SemsegConfig) -> None:
        self.cfg = cfg

    def stream_config(self, split: str | None = None, augment: bool | None = None) -> RoomStreamConfig:
        c = self.cfg
        return RoomStreamConfig(split=split or c.train_split, num_points=c.num_points, block_size=c.block_size,
                                sample_rate=c.sample_rate, augment=c.augment if augment is None else augment,
                                seed=c.seed)

    def make_stream(self, cache: str, rank: int, world: int) -> RoomBlockStream:
        return RoomBlockStream(cache, self.stream_config(), rank=rank, world_size=world)

    def build(self, stream, device, rank, world):
        cache = open_cache(self.cfg.cache)
        self.label_names = cache.label_names
        weights = class_weights(self.cfg.cache, self.cfg.train_split, len(self.label_names))
        self.weights = weights if self.cfg.class_weighting else np.ones_like(weights)
        self.weight_tensor = torch.from_numpy(self.weights).to(device)
        encoder = build_encoder(self.cfg, "semseg")
        self.model = PartSegmentation(encoder, 0, len(self.label_names)).to(device)
        return self.model

    def losses(self, ddp, batch, device, autocast) -> dict[str, torch.Tensor]:
        points = batch["points"].to(device, non_blocking=True)
        with autocast:
            logits = ddp(points)
        target = batch["labels"].to(device, non_blocking=True)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                               weight=self.weight_tensor, ignore_index=IGNORE_INDEX)
        return {"total": loss}

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "encoder": self.model.encoder.describe(),
                "label_names": list(self.label_names), "num_points": self.cfg.num_points,
                "block_size": self.cfg.block_size, "class_weights": self.weights.tolist(),
                "intermediates": INTERMEDIATES}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])

    def describe(self) -> dict:
        return {"encoder": self.model.encoder.describe(), "init": self.cfg.init, "train_split": self.cfg.train_split,
                "class_weights": dict(zip(self.label_names, map(float, self.weights)))}

    def validate(self, url: str, split: str) -> dict[str, float]:
        from train.eval.semantic_segmentation import evaluate_blocks

        stream = RoomBlockStream(url, dataclasses.replace(self.stream_config(split, augment=False), prefetch_bytes=0))
        scores = evaluate_blocks(self.model, stream, len(self.label_names))
        return {"score": scores["miou"], "miou": scores["miou"], "macc": scores["macc"], "oa": scores["oa"]}


def train_semseg(cfg: SemsegConfig, resume: bool = False, progress: bool = True,
                 stop_at: int | None = None) -> dict:
    """Fine-tune (or resume) a semantic-segmentation run; returns the last logged metrics."""
    cfg = cfg.resolved()
    return run(cfg, SemsegTask(cfg), resume, progress, stop_at)
