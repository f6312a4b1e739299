"""Single-stage multi-task pre-training: stage-1's contrastive losses and stage-2's masked distillation in one run
from random init (the paper's Table 9 baseline, "a single-stage pre-training with a multi-task learning paradigm").

    train joint --cache caches/demo.zarr --out runs/joint
    torchrun --nproc_per_node=2 -m train joint --cache ... --out runs/joint     # DDP on one node
    train finetune --cache caches/scanobjectnn-obj_bg.zarr --init runs/joint/last.pt --protocol full --out runs/ft

Per step, on one student (encoder + one head per teacher) and in one forward (so DDP averages every gradient):

    patches = encoder.tokenize(points)
    full = encoder.encode(patches)                                 the whole cloud, with gradient
    contrastive = stage-1's weighted InfoNCE terms on the heads' embeddings of full's global feature (eq. 1-3)
    targets = full's tokens and global feature, detached           stop-gradient self-distillation
    local, global = MaskedDistillation(patches, targets) on a random mask of the same patches (eq. 4-6)
    total = contrastive + stage2_weight * (local + global)

The paper does not say what the masked branch distils when there is no first-stage model; our reading is the
student's own encoder on the unmasked patches with the current weights, under a stop-gradient. The targets are the
contrastive pass's outputs detached rather than a second, no-grad pass: the same values (same weights, same
patches, the same train-mode BatchNorm batch), one encoder pass fewer; with drop path (the ``point-mae`` preset's
0.1) they carry that pass's draw. The masked pass embeds every patch again (as stage-2 does), so the patch
embedding's BatchNorm running statistics move twice per step, once per pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.loop import run
from train.losses import MultiTeacherLoss
from train.models.masked_distillation import MaskedDistillation
from train.models.student import Student
from train.settings import same_setting, setting
from train.stages.stage1 import Stage1Config, Stage1Objective, Stage1Task
from train.stages.stage2 import Stage2Config


@dataclass
class JointConfig(Stage1Config):
    mask_ratio: float | None = same_setting(Stage2Config, "mask_ratio")
    shuffle: bool = same_setting(Stage2Config, "shuffle")
    local: bool = same_setting(Stage2Config, "local")
    use_global: bool = same_setting(Stage2Config, "use_global")
    decoder_depth: int = same_setting(Stage2Config, "decoder_depth")
    stage2_weight: float = setting(1.0, "Weight of the masked-distillation losses (local + global) against the sum "
                                        "of the contrastive terms; 0 trains stage-1's objective alone.",
                                   check="non-negative")
    target = "features"  # not a setting: the masked branch distils the student's own features
    distillation = Stage2Config.distillation  # the same MaskedDistillationConfig from the same settings

    def validate(self) -> None:
        super().validate()
        if not (self.local or self.use_global):
            raise ValueError("--no-local and --no-global together leave the masked branch nothing to learn; "
                             "that run is `train stage1`")


class JointObjective(Stage1Objective):
    """Stage-1's objective and masked distillation of the student's own features, in one module."""

    def __init__(self, student: Student, loss_fn: MultiTeacherLoss, head_of: dict[str, str],
                 distill: MaskedDistillation, stage2_weight: float) -> None:
        super().__init__(student, loss_fn, head_of)
        self.distill, self.stage2_weight = distill, stage2_weight

    def forward(self, points: torch.Tensor, targets: dict[str, torch.Tensor], mask: torch.Tensor | None = None,
                perm: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every stage-1 term, ``local`` and/or ``global``, and ``total``; ``mask`` (B, G) and ``perm`` (B, G) as
        :class:`MaskedDistillation` takes them (drawn at random when not given)."""
        encoder = self.student.encoder
        patches = encoder.tokenize(points)
        full = encoder.encode(patches)                                                # (B, G, C), (B, global_dim)
        losses = self.loss_fn(self.student.project(full.global_feature), targets, self.head_of)
        distilled = self.distill(patches, full.tokens.detach(), full.global_feature.detach(), mask=mask, perm=perm)
        contrastive = losses.pop("total")
        return {**losses, **{k: v for k, v in distilled.items() if k != "total"},
                "total": contrastive + self.stage2_weight * distilled["total"]}


class JointTask(Stage1Task):
    """Stage-1's task (stream, student, loss, temperatures, zero-shot validation) with the masked branch added."""

    stage = "joint"

    def build(self, stream, device, rank, world):
        super().build(stream, device, rank, world)  # the stage-1 student and loss, as `train stage1` builds them
        encoder = self.model.encoder
        distill = MaskedDistillation(self.model, self.cfg.distillation(encoder.default_mask_ratio),
                                     encoder.token_dim, encoder.global_dim)
        self.objective = JointObjective(self.model, self.loss_fn, self.objective.head_of, distill,
                                        self.cfg.stage2_weight).to(device)
        return self.objective

    def state(self) -> dict:
        decoders = {k: v for k, v in self.objective.distill.state_dict().items() if not k.startswith("student.")}
        return {**super().state(), "decoders": decoders}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.objective.distill.load_state_dict({**{f"student.{k}": v for k, v in state["model"].items()},
                                                **state["decoders"]})


def train_joint(cfg: JointConfig, resume: bool = False, progress: bool = True, stop_at: int | None = None) -> dict:
    """Train (or resume) a single-stage multi-task run; returns the last logged metrics."""
    return run(cfg, JointTask(cfg), resume, progress, stop_at)
