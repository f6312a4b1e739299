"""Masked point reconstruction: the baselines' own pre-training (Point-MAE, Point-M2AE), no teacher.

    train mae --cache caches/shapenet.zarr --model point-mae --out runs/mae
    train mae --cache caches/shapenet.zarr --model point-m2ae --out runs/m2ae
    torchrun --nproc_per_node=8 -m train mae --cache ... --model point-m2ae --batch-size 16 --out runs/m2ae

Each family's official objective and recipe (Point-MAE ``cfgs/pretrain.yaml``; Point-M2AE
``cfgs/pre-training/point-m2ae.yaml``):

    Point-MAE:  60% of the 64 patches masked at random; the encoder (no cls token) sees the visible ones;
                [visible ; mask tokens] + positions -> 4-block decoder -> 3 x 32 points per masked patch;
                Chamfer-L2 against the masked patches (relative to their centres)
    Point-M2AE: 80% of the coarsest tokens masked, back-projected to the finer scales; the hierarchical
                decoder (skip connections from the visible encoder tokens, 3-NN token propagation) up to
                scale 1, 3 x 16 points per masked scale-1 token; Chamfer-L2 against its 8 scale-0 centres

The masking, decoders and loss are stage-2's :class:`MaskedDistillation` with ``target="points"`` and no
distillation term, so the baseline and the paper's method differ only in what they predict. The loss is logged
as ``loss/chamfer``. A run's ``last.pt`` is an encoder checkpoint like any other: ``train finetune --init``,
``train stage1 --init`` (the reversed order of Table 9) and ``train eval linear`` read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from train.data.objects import StreamConfig
from train.downstream.recipe import EpochTask, RecipeConfig, build_encoder
from train.eval.frozen import validate_student
from train.loop import run
from train.models.masked_distillation import MaskedDistillation, MaskedDistillationConfig
from train.models.student import Student
from train.settings import check_settings, setting
from train.stages.stage2 import distillation_state, load_distillation_state

# the official configs; batch 128 is the whole batch of the official runs (here: per process)
MAE_RECIPES = {
    "point-mae": dict(epochs=300, cosine_epochs=300, warmup_epochs=10, batch_size=128, lr=1e-3, weight_decay=0.05,
                      grad_clip=0.0, num_points=1024, augmentation="scale-translate", mask_ratio=0.6,
                      decoder_depth=4, up_blocks=1, decoder_drop_path=0.1),
    # its cosine is set for 400 epochs and cut at 300 (``scheduler.kwargs.epochs: 400``, ``max_epoch: 300``)
    "point-m2ae": dict(epochs=300, cosine_epochs=400, warmup_epochs=10, batch_size=128, lr=1e-3, weight_decay=0.05,
                       grad_clip=0.0, num_points=2048, augmentation="scale-translate", mask_ratio=0.8,
                       decoder_depth=1, up_blocks=1, decoder_drop_path=0.1),
}


@dataclass
class MaeConfig(RecipeConfig):
    """A masked-reconstruction run; ``None`` settings come from the encoder family's official recipe."""

    mask_ratio: float | None = setting(None, "Share of the encoder's output tokens masked (Point-M2AE: of its "
                                             "coarsest scale, back-projected).", check="share")
    decoder_depth: int | None = setting(None, "Decoder blocks (Point-M2AE: per decoder stage).", check="positive")
    up_blocks: int | None = setting(None, "Point-M2AE: residual blocks of each token propagation.",
                                    check="positive")
    decoder_drop_path: float | None = setting(None, "Decoder drop-path rate, rising to it at the last block.",
                                              check="fraction")
    cosine_epochs: int | None = setting(None, "Length of the cosine schedule in epochs (it may run past "
                                              "--epochs, which then cut it).", check="positive")
    grad_clip: float | None = setting(None, "Gradient norm clip; 0 = none (the official recipes).",  # type: ignore
                                      check="non-negative")
    sampling: str = setting("random", "random (the official: a random subset of the stored points), prefix, "
                                      "first or fps.")
    val_split: str | None = setting(None, "Validate with a linear SVM on this split (train on train) every epoch; "
                                          "best.pt is the best.")
    cosine_steps: int | None = setting(None, "Steps of the cosine (derived from --cosine-epochs).")
    recipe_table = MAE_RECIPES
    not_options = (*RecipeConfig.not_options, "cosine_steps")

    def resolved(self) -> MaeConfig:
        """Every ``None`` filled from the family's recipe; checked."""
        check_settings(self)
        return self.filled(self.recipe_table[self.family().family], "mae")

    def distillation(self) -> MaskedDistillationConfig:
        return MaskedDistillationConfig(self.mask_ratio, shuffle=False, local=False, use_global=False,
                                        target="points", decoder_depth=self.decoder_depth,
                                        decoder_drop_path=self.decoder_drop_path, up_blocks=self.up_blocks)


class MaeTask(EpochTask):
    stage = "mae"
    cfg: MaeConfig

    def __init__(self, cfg: MaeConfig) -> None:
        self.cfg = cfg

    def stream_config(self) -> StreamConfig:
        return StreamConfig(num_points=self.cfg.num_points, sampling=self.cfg.sampling, seed=self.cfg.seed,
                            augmentation=self.cfg.augmentation, contrastive=False)

    def schedule(self, cfg: MaeConfig, batches_per_epoch: int) -> MaeConfig:
        cfg = super().schedule(cfg, batches_per_epoch)
        self.cfg = dataclasses.replace(cfg, cosine_steps=cfg.cosine_epochs * batches_per_epoch)
        return self.cfg

    def build(self, stream, device, rank, world):
        encoder = build_encoder(self.cfg, "mae")
        self.module = MaskedDistillation(Student(encoder, {}), self.cfg.distillation(), encoder.token_dim,
                                         encoder.global_dim).to(device)
        return self.module

    def losses(self, ddp, batch, device, autocast) -> dict[str, torch.Tensor]:
        points = batch["points"].to(device, non_blocking=True)
        with autocast:
            patches = self.module.student.encoder.tokenize(points)
            out = ddp(patches, None, None)
        return {"chamfer": out["points"], "total": out["total"]}

    def state(self) -> dict:
        return distillation_state(self.module)

    def load_state(self, state: dict) -> None:
        load_distillation_state(self.module, state)

    def validate(self, url: str, split: str) -> dict[str, float]:
        return validate_student(self.module.student, url, split, self.cfg.num_points, prefer="linear")

    def describe(self) -> dict:
        encoder = self.module.student.encoder
        return {"encoder": encoder.describe(), "init": self.cfg.init, "reconstruction": encoder.reconstruction}


def train_mae(cfg: MaeConfig, resume: bool = False, progress: bool = True, stop_at: int | None = None) -> dict:
    """Pre-train (or resume) by masked point reconstruction; returns the last logged metrics."""
    cfg = cfg.resolved()
    return run(cfg, MaeTask(cfg), resume, progress, stop_at)
