"""Image-to-LiDAR fusion distillation from a `scenes` cache: pre-training and label-efficient fine-tuning.

    train fusion pretrain --cache caches/demo-scenes.zarr --out runs/f-pre
    train fusion finetune --cache caches/demo-scenes.zarr --out runs/f-1pc --labels 1% --init runs/f-pre/last.pt
    train eval seg --cache caches/demo-scenes.zarr --ckpt runs/f-1pc/last.pt --json

Batches are frames (ragged, see ``train/data/scenes.py``); every frame is
rotated by a random yaw (pairs index points, so they survive). The loop,
checkpoints, exact resume, logs and torchrun are stage-1's (``train/loop.py``);
the segmentation scores are ``train/eval/lidar_segmentation.py``'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cache_schema import open_cache
from train import checkpoint
from train.data.scenes import SceneStream, SceneStreamConfig
from train.eval.lidar_segmentation import segmentation_scores
from train.loop import LoopConfig, Task, run
from train.models.fusion import FusionConfig, FusionModel, FusionObjective
from train.models.lidar_backbone import WaffleConfig
from train.optim import clamp_logit_scales
from train.settings import setting

LOSS_TERMS = ("contrastive", "regression", "occupancy", "codebook")


@dataclass
class FusionRunConfig(LoopConfig):
    """A fusion run on a scenes cache: pre-training on point-pixel pairs, or fine-tuning for segmentation."""

    mode: str = setting("pretrain", "pretrain or finetune (the command).", choices=("pretrain", "finetune"))
    steps: int = setting(200, "Optimiser steps.", check="positive")
    batch_size: int = setting(2, "Frames per step on each process.", check="positive")
    lr: float = setting(2e-3, "Peak AdamW learning rate.", check="positive")
    warmup_steps: int | None = setting(None, "Linear learning-rate warm-up steps [unset: 10, at most --steps].",
                                       check="non-negative")
    ckpt_every: int = setting(50, "Save last.pt every N steps (and at the end).", check="positive")
    teacher: str | None = setting(None, "Pair-feature teacher (default: the cache's only one).")
    dim: int = setting(64, "Backbone width (WaffleIron-style, per-point features).", check="positive")
    depth: int = setting(6, "Backbone blocks (planes xy, xz, yz in turn).", check="positive")
    max_points: int | None = setting(16384, "Random points kept per frame and step (pairs follow; 0: all).",
                                     check="non-negative")
    contrastive: float = setting(1.0, "Weight of the 2D-3D InfoNCE over pairs (0: off).", check="non-negative")
    regression: float = setting(1.0, "Weight of the ScaLR cosine regression (0: off).", check="non-negative")
    occupancy: float = setting(0.0, "Weight of CMCR occupancy estimation (0: off).", check="non-negative")
    codebook: float = setting(0.0, "Weight of the CMCR shared codebook (0: off).", check="non-negative")
    labels: str = setting("100%", "Share of labelled training frames: 1%, 10% or 100%.")
    init: str = setting("random", "A `fusion pretrain` checkpoint, or random.")
    consistency: bool = setting(True, "Fused head + KL(fused || LiDAR-only) (xModel-KD).",
                                flags=("--consistency/--no-consistency",))
    pretrain_only = LOSS_TERMS  # the options of each mode (the other mode's are not offered)
    finetune_only = ("labels", "init", "consistency")

    def __post_init__(self) -> None:
        if self.warmup_steps is None:
            self.warmup_steps = min(10, self.steps)

    @property
    def weights(self) -> dict[str, float]:
        """The pre-training losses' weights by term."""
        return {term: getattr(self, term) for term in LOSS_TERMS}

    @classmethod
    def from_saved(cls, settings: dict) -> dict:
        """Older runs saved the four weights as one ``weights`` dict; a warm-up of min(10, steps) was derived."""
        settings = {**(settings.pop("weights", None) or {}), **settings}
        if "steps" in settings and settings.get("warmup_steps") == min(10, settings["steps"]):
            settings["warmup_steps"] = None
        return settings


def label_fraction(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 < value <= 1:
        raise ValueError(f"--labels is a share of the training frames like 1%, 10% or 100%, got {text!r}")
    return value


def labelled_rows(cache, fraction: float, seed: int) -> np.ndarray:
    """The fine-tuning subset: a fixed random share of the done training frames (at least one)."""
    rows = cache.done_rows("train")
    k = max(1, int(round(fraction * len(rows))))
    return np.sort(np.random.default_rng([seed, 0x1AB]).permutation(rows)[:k])


def random_yaw(points: torch.Tensor, batch_index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    angles = (torch.rand(int(batch_index.max()) + 1, generator=generator) * 2 * torch.pi).to(points.device)
    c, s = torch.cos(angles)[batch_index], torch.sin(angles)[batch_index]
    x, y = points[:, 0], points[:, 1]
    return torch.cat([torch.stack([c * x - s * y, s * x + c * y], 1), points[:, 2:]], 1)


class FusionTask(Task):
    def __init__(self, cfg: FusionRunConfig) -> None:
        cfg.validate()
        self.cfg, self.stage = cfg, f"fusion-{cfg.mode}"
        self.generator = torch.Generator().manual_seed(cfg.seed)
        cache = open_cache(cfg.cache)
        if cache.kind != "scenes":
            raise ValueError(f"{cfg.cache} is a {cache.kind} cache; fusion trains on scenes caches")
        self.label_names = tuple(cache.attrs.label_names)
        if cfg.mode == "finetune":
            if not any(a.path == "labels" for a in cache.layout.arrays):
                raise ValueError(f"{cfg.cache} has no point labels to fine-tune on")
            self.rows = labelled_rows(cache, label_fraction(cfg.labels), cfg.seed)
            cfg.batch_size = min(cfg.batch_size, len(self.rows))  # 1% of a small set can be a single frame
        self.init_state = None
        if cfg.mode == "finetune" and cfg.init != "random":
            self.init_state = checkpoint.load(cfg.init, stage="fusion-pretrain")

    def make_stream(self, cache: str, rank: int, world: int) -> SceneStream:
        stream = SceneStream(cache, SceneStreamConfig("train", self.cfg.teacher, self.cfg.seed, self.cfg.max_points),
                             rank, world)
        if self.cfg.mode == "finetune":
            stream.restrict(self.rows)
        self.teacher_dim = stream.teacher_dim
        return stream

    def build(self, stream, device, rank, world):
        config = FusionConfig(backbone=WaffleConfig(dim=self.cfg.dim, depth=self.cfg.depth))
        self.model = FusionModel(config, self.teacher_dim, len(self.label_names))
        if self.init_state is not None:
            self.model.load_state_dict(self.init_state["model"])
        self.device = device
        self.objective = FusionObjective(self.model, self.cfg.mode, self.cfg.weights, self.cfg.consistency,
                                         self.generator).to(device)
        return self.objective

    def generators(self) -> dict[str, torch.Generator]:
        return {"fusion": self.generator}

    def losses(self, ddp, batch, device, autocast) -> dict[str, torch.Tensor]:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        batch["points"] = random_yaw(batch["points"], batch["batch_index"], self.generator)
        with autocast:
            return ddp(batch)

    def batch_samples(self, batch: dict) -> int:
        return len(batch["row"])

    def after_step(self) -> None:
        clamp_logit_scales(self.model)  # the contrastive temperature, bounded as a parameter (train.optim)

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "fusion_config": dataclasses.asdict(self.model.config),
                "teacher_dim": self.teacher_dim, "label_names": list(self.label_names),
                "trained_parts": sorted({n.split(".")[0] for n, p in self.model.named_parameters() if p.requires_grad})}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])

    def validate(self, url: str, split: str) -> dict[str, float]:
        """Fine-tuning: mIoU of the LiDAR-only head. Pre-training: how well the 3D features predict the 2D
        teacher's at the split's pairs (cosine of the regression head, or pair-matching accuracy of the
        contrastive projections when regression is off)."""
        if self.cfg.mode == "finetune":
            miou = segmentation_scores(self.model, url, split)["miou"]
            return {"score": miou, "miou": miou}
        stream = SceneStream(url, SceneStreamConfig(split, self.cfg.teacher, max_points=self.cfg.max_points))
        cos, hits, pairs = 0.0, 0, 0
        with torch.inference_mode():
            for frame in stream:
                frame = {k: v.to(self.device) for k, v in frame.items()}
                f = self.model.backbone(frame["points"], frame["batch_index"])[frame["pair_point"]]
                teacher = frame["pair_features"]
                if self.cfg.weights.get("regression", 0):
                    cos += float(F.cosine_similarity(self.model.head3d(f), teacher, dim=-1).sum())
                else:
                    pick = torch.arange(min(len(f), self.model.config.pairs_per_batch), device=self.device)
                    z3 = F.normalize(self.model.proj3d(f[pick]), dim=-1)
                    z2 = F.normalize(self.model.proj2d(teacher[pick]), dim=-1)
                    hits += int(((z3 @ z2.t()).argmax(1) == pick).sum())
                pairs += len(f) if self.cfg.weights.get("regression", 0) else len(pick)
        if self.cfg.weights.get("regression", 0):
            return {"score": cos / max(pairs, 1), "pair_cosine": cos / max(pairs, 1)}
        return {"score": hits / max(pairs, 1), "pair_match_top1": hits / max(pairs, 1)}

    def describe(self) -> dict:
        return {"fusion": dataclasses.asdict(self.model.config),
                "labelled_frames": self.rows.tolist() if self.cfg.mode == "finetune" else None}


def train_fusion(cfg: FusionRunConfig, resume: bool = False, progress: bool = True,
                 stop_at: int | None = None) -> dict:
    return run(cfg, FusionTask(cfg), resume, progress, stop_at)
