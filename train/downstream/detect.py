"""Indoor 3D object detection fine-tuning: a pre-trained encoder inside 3DETR (ScanNetV2, the paper's Table 7);
AP25 / AP50 are in ``train/eval/detection.py``.

    train detect --cache caches/scannet.zarr --init runs/s2/last.pt --out runs/detect
    train eval detect --cache caches/scannet.zarr --ckpt runs/detect/best.pt --json

The recipe is 3DETR's ``scripts/scannet_ep1080.sh``: 40,000 points per room, 256 queries, an 8-layer decoder of
width 256, AdamW lr 5e-4 and weight decay 0.1, 9 warm-up epochs then cosine over 1,080 epochs, batch 8, gradient
clip 0.1; matching costs GIoU 2 and class 1, losses class 1 (no-object weight 0.25), centre 5, size 1, GIoU 1,
on every decoder layer. Every 10 epochs it scores AP25 on the validation split and keeps the best as ``best.pt``,
as 3DETR does. Rooms are augmented as 3DETR's ScanNet dataset (:mod:`train.data.detection`).

The encoder groups the whole scene with its family's ``detect`` recipe (Point-MAE: 2,048 patches of 64 points):
3DETR's own pre-encoder keeps 2,048 points with 64 neighbours each, and on a 40,000-point ScanNet room 64
neighbours span about 0.2 m, 3DETR's ball radius, so a patch is about the size a pre-trained patch embedding
saw on a unit-sphere object.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch

from cache_schema import open_cache
from train.data.detection import SceneStream, SceneStreamConfig, open_box_cache
from train.downstream.recipe import EpochTask, RecipeConfig, build_encoder
from train.loop import run
from train.models.detector import Detector
from train.models.set_criterion import HungarianMatcher, SetCriterion, normalize_targets
from train.settings import setting

RECIPE = dict(epochs=1080, warmup_epochs=9, batch_size=8, lr=5e-4, weight_decay=0.1, grad_clip=0.1,
              num_points=40000, drop_path_rate=0.1)
AUX_LAYER = re.compile(r"_\d+$")  # the criterion's names of the earlier decoder layers' terms
MATCHER = dict(cost_class=1.0, cost_objectness=0.0, cost_giou=2.0, cost_center=0.0)


@dataclass
class DetectConfig(RecipeConfig):
    """A detection run on a rooms cache with boxes; ``None`` settings come from the recipe."""

    train_split: str = setting("train", "The split to train on.")
    val_split: str | None = setting("auto", "Score AP25 on this split every --val-every-epochs, keeping the best "
                                            "as best.pt (auto: val when the cache has it, else test).")
    val_every_epochs: int = setting(10, "Epochs between validations (3DETR: 10).", check="positive")
    num_queries: int = setting(256, "Box queries, sampled by FPS from the encoder's token centres (at most as "
                                    "many as the encoder has tokens).", check="positive")
    dec_layers: int = setting(8, "Transformer decoder layers.", check="positive")
    dec_dim: int = setting(256, "Decoder width (even: it holds Fourier features).", check="positive")
    dec_heads: int = setting(4, "Decoder attention heads.", check="positive")
    dec_ffn_dim: int = setting(256, "Decoder feed-forward width.", check="positive")
    loss_center: float = setting(5.0, "Weight of the centre L1 loss.", check="non-negative")
    loss_size: float = setting(1.0, "Weight of the size L1 loss.", check="non-negative")
    loss_giou: float = setting(1.0, "Weight of the GIoU loss.", check="non-negative")
    loss_no_object: float = setting(0.25, "Cross-entropy weight of the no-object class.", check="non-negative")
    augment: bool = setting(True, "Random cuboid crop, flips and a z-rotation of U(-5, 5) degrees per room.",
                            flags=("--augment/--no-augment",))
    crop_min_points: int | None = setting(None, "Points a random crop must keep [unset: 3/4 of --num-points, "
                                                "3DETR's 30,000 of 40,000].", check="positive")
    batch_size: int | None = setting(None, "Rooms per step on each process.", check="positive")  # type: ignore
    num_points: int | None = setting(None, "Points sampled per room.", check="positive")  # type: ignore
    recipe_table = RECIPE
    not_options = RecipeConfig.not_options + ("sampling", "augmentation")  # rooms are sampled as 3DETR does

    def resolved(self) -> DetectConfig:
        cache = open_box_cache(self.cache, "--cache")
        if self.train_split not in cache.split_names:
            raise ValueError(f"--train-split {self.train_split!r}: {self.cache} has the splits "
                             f"{', '.join(cache.split_names)}")
        val_url = self.val_cache or self.cache
        val_cache = open_box_cache(val_url, "--val-cache") if self.val_cache else cache
        if tuple(val_cache.box_classes) != tuple(cache.box_classes):
            raise ValueError(f"--val-cache {val_url} has other box classes than {self.cache}")
        val = self.val_split
        if val == "auto":
            val = next((s for s in ("val", "test") if s in val_cache.split_names), None)
            if val is None:
                print(f"note: {val_url} has no val or test split; the run does not validate (--val-split NAME)")
        if val is not None:
            if val not in val_cache.split_names:
                raise ValueError(f"--val-split {val!r}: {val_url} has the splits {', '.join(val_cache.split_names)}")
            if not len(val_cache.done_rows(val)):
                raise ValueError(f"--val-split {val!r}: no room of it is built in {val_url}")
        if self.dec_dim % 2 or self.dec_dim % self.dec_heads:
            raise ValueError(f"--dec-dim {self.dec_dim} must be even and divisible by --dec-heads {self.dec_heads}")
        return self.filled(RECIPE, "detect", val_split=val)


class DetectTask(EpochTask):
    stage = "detect"

    def __init__(self, cfg: DetectConfig) -> None:
        self.cfg = cfg

    def stream_config(self, split: str | None = None, augment: bool | None = None) -> SceneStreamConfig:
        c = self.cfg
        return SceneStreamConfig(split=split or c.train_split, num_points=c.num_points,
                                 augment=c.augment if augment is None else augment,
                                 crop_min_points=c.crop_min_points, seed=c.seed)

    def make_stream(self, cache: str, rank: int, world: int) -> SceneStream:
        return SceneStream(cache, self.stream_config(), rank=rank, world_size=world)

    def schedule(self, cfg: DetectConfig, batches_per_epoch: int) -> DetectConfig:
        cfg = dataclasses.replace(cfg, val_every=cfg.val_every or cfg.val_every_epochs * batches_per_epoch)
        return super().schedule(cfg, batches_per_epoch)

    def build(self, stream, device, rank, world):
        c = self.cfg
        self.box_classes = open_cache(c.cache).box_classes
        encoder = build_encoder(c, "detect")
        self.model = Detector(encoder, len(self.box_classes), num_queries=c.num_queries, dec_layers=c.dec_layers,
                              dec_dim=c.dec_dim, dec_heads=c.dec_heads, dec_ffn_dim=c.dec_ffn_dim).to(device)
        w = self.loss_weights()
        self.criterion = SetCriterion(len(self.box_classes), HungarianMatcher(**MATCHER),
                                      sem_cls_weight=w["sem_cls"], no_object_weight=w["no_object"],
                                      center_weight=w["center"], size_weight=w["size"], giou_weight=w["giou"])
        return self.model

    def loss_weights(self) -> dict[str, float]:
        c = self.cfg
        return {"sem_cls": 1.0, "no_object": c.loss_no_object, "center": c.loss_center, "size": c.loss_size,
                "giou": c.loss_giou}

    def losses(self, ddp, batch, device, autocast) -> dict[str, torch.Tensor]:
        points = batch["points"].to(device, non_blocking=True)
        with autocast:
            outputs = ddp(points)
        targets = scene_targets(batch, points, device)
        total, parts = self.criterion(outputs, targets)
        return {"total": total, **{k.removeprefix("loss/"): v for k, v in parts.items()
                                   if not AUX_LAYER.search(k)}}  # the last layer's terms

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "encoder": self.model.encoder.describe(),
                "detector": self.model.hyperparameters(), "box_classes": list(self.box_classes),
                "num_points": self.cfg.num_points}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])

    def describe(self) -> dict:
        return {"encoder": self.model.encoder.describe(), "detector": self.model.hyperparameters(),
                "init": self.cfg.init, "train_split": self.cfg.train_split, "box_classes": list(self.box_classes),
                "matcher": MATCHER, "loss_weights": self.loss_weights()}

    def validate(self, url: str, split: str) -> dict[str, float]:
        from train.eval.detection import evaluate_detection

        scores = evaluate_detection(self.model, url, split, self.cfg.num_points, seed=self.cfg.seed,
                                    batch_size=self.cfg.batch_size, class_names=self.box_classes)
        return {"score": scores["map25"], "map25": scores["map25"], "map50": scores["map50"]}


def scene_targets(batch: dict, points: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    """3DETR's target dict from a batch: boxes, classes, the mask of real boxes and their scene-normalised
    centres and sizes (the scene's bounds are its points', as the model takes them)."""
    boxes, present = batch["boxes"].to(device), batch["box_present"].to(device)
    dims_min, dims_max = points.amin(dim=1).float(), points.amax(dim=1).float()
    normalized = normalize_targets(boxes[..., :3], boxes[..., 3:], present, dims_min, dims_max)
    return {"gt_box_centers": boxes[..., :3], "gt_box_sizes": boxes[..., 3:],
            "gt_box_centers_normalized": normalized.centers, "gt_box_sizes_normalized": normalized.sizes,
            "gt_box_sem_cls_label": batch["box_labels"].to(device), "gt_box_present": present,
            "point_cloud_dims_min": dims_min, "point_cloud_dims_max": dims_max}


def train_detect(cfg: DetectConfig, resume: bool = False, progress: bool = True, stop_at: int | None = None) -> dict:
    """Fine-tune (or resume) a detection run; returns the last logged metrics."""
    cfg = cfg.resolved()
    return run(cfg, DetectTask(cfg), resume, progress, stop_at)
