"""Classification fine-tuning of a pre-trained encoder: Full, MLP-3 or Linear (ACT / ReCon protocols).

    train finetune --cache caches/scanobjectnn-pb_t50_rs.zarr --init runs/s1/last.pt --protocol full --out runs/ft
    train finetune --cache caches/modelnet40-resampled.zarr --init random --model base --protocol full --out ...
    train eval classify --cache ... --ckpt runs/ft/best.pt --vote 10 --json

The recipes are Point-MAE's fine-tuning configs (``cfgs/finetune_modelnet.yaml``,
``cfgs/finetune_scan_*.yaml``): AdamW, lr 5e-4, weight decay 0.05, cosine with
10 warm-up epochs, 300 epochs, batch 32, drop path 0.1; ModelNet40 at 1,024
points and 64 groups with ScaleAndTranslate, ScanObjectNN at 2,048 points and
128 groups with rotation about the up axis (ReCon / ACT). The loss is cross
entropy with Point-BERT's label smoothing (0.2). Like those works, a run
validates on the test split every epoch and keeps the best as ``best.pt``:
that is the published protocol, and it selects on test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cache_schema import open_cache
from train.data.objects import StreamConfig
from train.downstream.recipe import EpochTask, RecipeConfig, build_encoder
from train.eval.classification import evaluate_classifier
from train.loop import run
from train.models.classifier import PROTOCOLS, PointClassifier
from train.settings import check_settings, setting

__all__ = ["RECIPES", "FinetuneConfig", "FinetuneTask", "build_encoder", "train_finetune"]

RECIPES = {
    "modelnet40": dict(epochs=300, warmup_epochs=10, batch_size=32, lr=5e-4, weight_decay=0.05, grad_clip=10.0,
                       num_points=1024, augmentation="scale-translate",
                       label_smoothing=0.2, drop_path_rate=0.1),
    "scanobjectnn": dict(epochs=300, warmup_epochs=10, batch_size=32, lr=5e-4, weight_decay=0.05, grad_clip=10.0,
                         num_points=2048, augmentation="rotate",
                         label_smoothing=0.2, drop_path_rate=0.1),
}


def recipe_for(cache) -> str:
    """``scanobjectnn`` for ScanObjectNN caches (and ``demo-scan``), ``modelnet40`` for every other."""
    name = str(cache.attrs.dataset.get("name", ""))
    return "scanobjectnn" if name.startswith(("scanobjectnn", "demo-scan")) else "modelnet40"


@dataclass
class FinetuneConfig(RecipeConfig):
    """A fine-tuning run; ``None`` settings come from the recipe (``--recipe auto``: from the cache)."""

    protocol: str = setting("full", "full (encoder + MLP-3 head trained), mlp3 (encoder frozen, MLP-3 head) or "
                                    "linear (encoder frozen, one linear layer).", choices=PROTOCOLS)
    recipe: str = setting("auto", "auto (from the cache), modelnet40 or scanobjectnn: the defaults of every option "
                                  "left unset.", choices=("auto", *RECIPES))
    label_smoothing: float | None = setting(None, "Point-BERT's label smoothing.", check="fraction")
    recipe_table = RECIPES

    def resolved(self) -> FinetuneConfig:
        """Every ``None`` filled from the recipe; checked."""
        check_settings(self)
        recipe = recipe_for(open_cache(self.cache)) if self.recipe == "auto" else self.recipe
        return self.filled(self.recipe_table[recipe], recipe, recipe=recipe)


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """Point-BERT's smoothed loss: the true class gets 1 - eps, every other eps / (C - 1). Torch's
    ``label_smoothing=s`` gives the true class 1 - s + s / C, so s = eps * C / (C - 1) is the same loss."""
    c = logits.shape[-1]
    return F.cross_entropy(logits.float(), target, label_smoothing=eps * c / (c - 1) if c > 1 else 0.0)


class FinetuneTask(EpochTask):
    stage = "finetune"

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg
        self.correct, self.seen = 0, 0

    def stream_config(self) -> StreamConfig:
        return StreamConfig(num_points=self.cfg.num_points, sampling=self.cfg.sampling, seed=self.cfg.seed,
                            augmentation=self.cfg.augmentation, contrastive=False)

    def build(self, stream, device, rank, world):
        cache = open_cache(self.cfg.cache)
        self.label_names = cache.label_names
        encoder = build_encoder(self.cfg, self.cfg.recipe)
        self.model = PointClassifier(encoder, len(self.label_names), self.cfg.protocol).to(device)
        return self.model

    def losses(self, ddp, batch, device, autocast) -> dict[str, torch.Tensor]:
        points = batch["points"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with autocast:
            logits = ddp(points)
        self.correct += int((logits.detach().argmax(-1) == labels).sum())
        self.seen += len(labels)
        return {"total": smoothed_cross_entropy(logits, labels, self.cfg.label_smoothing)}

    def log_metrics(self) -> dict[str, float]:
        acc, self.correct, self.seen = self.correct / max(self.seen, 1), 0, 0
        return {"train_accuracy": acc}

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "encoder": self.model.encoder.describe(),
                "protocol": self.cfg.protocol, "label_names": list(self.label_names),
                "num_points": self.cfg.num_points}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])

    def describe(self) -> dict:
        return {"encoder": self.model.encoder.describe(), "protocol": self.cfg.protocol,
                "recipe": self.cfg.recipe, "init": self.cfg.init}

    def validate(self, url: str, split: str) -> dict[str, float]:
        scores = evaluate_classifier(self.model, open_cache(url), split, self.cfg.num_points)
        return {"score": scores["overall_accuracy"], "overall_accuracy": scores["overall_accuracy"],
                "mean_class_accuracy": scores["mean_class_accuracy"]}


def train_finetune(cfg: FinetuneConfig, resume: bool = False, progress: bool = True,
                   stop_at: int | None = None) -> dict:
    """Fine-tune (or resume); returns the last logged metrics (with ``best/*`` when it validated)."""
    cfg = cfg.resolved()
    return run(cfg, FinetuneTask(cfg), resume, progress, stop_at)
