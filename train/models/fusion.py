"""Image-to-LiDAR distillation model (xModel-KD-style fusion, ScaLR/SLidR losses, CMCR options).

    LiDAR-only path (inference):  points -> WaffleBackbone -> f (N, C) -> seg_head -> logits
    fusion path (training):       f + MLP(proj2d(mean 2D teacher feature of the point's pairs)) -> fused_head
    pre-training losses (switchable, weighted):
        contrastive  InfoNCE between proj3d(f) and proj2d(teacher) over K pairs sampled from the batch
                     (every camera and frame; the other sampled pairs are the negatives)
        regression   1 - cos(head3d(f), teacher) at every pair (ScaLR)
        occupancy    with a share of voxels masked out of the input: is a query voxel occupied? (CMCR)
        codebook     both modalities quantised by one shared codebook, + code agreement (CMCR)
    fine-tuning:     CE on both heads, + KL(fused || LiDAR-only) prediction consistency (xModel-KD)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train.eval.metrics import IGNORE_INDEX
from train.models.codebook import VectorQuantizer
from train.models.lidar_backbone import WaffleBackbone, WaffleConfig
from train.ops import knn
from train.ops.occupancy import mask_voxels, occupancy_queries


@dataclass(frozen=True)
class FusionConfig:
    backbone: WaffleConfig = WaffleConfig()
    shared_dim: int = 64
    num_codes: int = 64
    temperature: float = 0.07
    pairs_per_batch: int = 4096
    occupancy_voxel: float = 0.4
    occupancy_mask: float = 0.3


def mean_pair_features(num_points: int, pair_point: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                torch.Tensor]:
    """Per point, the mean of its pairs' rows of ``values`` (zeros for unpaired points), and a paired mask.

    Sums and counts are fp32 whatever the autocast dtype (a bf16 count stops at 256)."""
    sums = values.new_zeros(num_points, values.shape[1], dtype=torch.float32).index_add_(0, pair_point, values.float())
    counts = values.new_zeros(num_points, dtype=torch.float32).index_add_(
        0, pair_point, values.new_ones(len(values), dtype=torch.float32))
    return (sums / counts.clamp(min=1)[:, None]).to(values.dtype), counts > 0


class FusionModel(nn.Module):
    def __init__(self, config: FusionConfig, teacher_dim: int, num_classes: int) -> None:
        super().__init__()
        self.config, self.teacher_dim, self.num_classes = config, teacher_dim, num_classes
        c, d = config.backbone.dim, config.shared_dim
        self.backbone = WaffleBackbone(config.backbone)
        self.proj3d = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, d))
        self.proj2d = nn.Linear(teacher_dim, d)
        self.head3d = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, teacher_dim))  # ScaLR regression
        self.fuse = nn.Sequential(nn.Linear(d, c), nn.ReLU(), nn.Linear(c, c))
        self.seg_head = nn.Linear(c, num_classes)
        self.fused_head = nn.Linear(c, num_classes)
        self.occupancy_head = nn.Sequential(nn.Linear(c + 3, c), nn.ReLU(), nn.Linear(c, 1))
        self.codebook = VectorQuantizer(config.num_codes, d)
        self.logit_scale = nn.Parameter(torch.tensor(1 / config.temperature).log())

    def forward(self, points: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """The LiDAR-only path: per-point class logits (N, K)."""
        return self.seg_head(self.backbone(points, batch_index))

    # ------------------------------------------------------------ pre-training terms

    def sample_pairs(self, m: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = min(self.config.pairs_per_batch, m)
        return torch.randperm(m, generator=generator)[:k]

    def contrastive(self, f: torch.Tensor, batch: dict, pick: torch.Tensor) -> torch.Tensor:
        z3 = F.normalize(self.proj3d(f[batch["pair_point"][pick]]), dim=-1)
        z2 = F.normalize(self.proj2d(batch["pair_features"][pick]), dim=-1)
        logits = self.logit_scale.exp() * z3 @ z2.t()  # bounded as a parameter after each step (train.optim)
        target = torch.arange(len(pick), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2

    def regression(self, f: torch.Tensor, batch: dict) -> torch.Tensor:
        pred = self.head3d(f[batch["pair_point"]])
        return (1 - F.cosine_similarity(pred, batch["pair_features"], dim=-1)).mean()

    def codebook_loss(self, f: torch.Tensor, batch: dict, pick: torch.Tensor) -> torch.Tensor:
        z3 = F.normalize(self.proj3d(f[batch["pair_point"][pick]]), dim=-1)
        z2 = F.normalize(self.proj2d(batch["pair_features"][pick]), dim=-1)
        _, codes3, vq3 = self.codebook(z3)
        _, codes2, vq2 = self.codebook(z2)
        # code agreement: the 3D feature should pick its pair's code (soft assignment by negative distance)
        agree = F.cross_entropy(-torch.cdist(z3, self.codebook.codebook.weight), codes2)
        return vq3 + vq2 + agree

    def occupancy(self, points: torch.Tensor, batch_index: torch.Tensor, keep: torch.Tensor,
                  queries: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """BCE of occupancy at query voxels, predicted from the 8 nearest kept points of the same frame."""
        kept_points, kept_batch = points[keep], batch_index[keep]
        f = self.backbone(kept_points, kept_batch)
        logits = []
        size = self.config.occupancy_voxel
        for b, q in enumerate(queries):
            mine = kept_batch == b
            centres = (q.float() + 0.5) * size
            xyz = kept_points[mine, :3]
            nn_idx = knn(centres[None], xyz[None], min(8, len(xyz))).idx[0]                # (Q, 8)
            rel = xyz[nn_idx] - centres[:, None]
            h = self.occupancy_head(torch.cat([f[mine][nn_idx], rel], dim=-1)).amax(dim=1)   # (Q, 1)
            logits.append(h[:, 0])
        return F.binary_cross_entropy_with_logits(torch.cat(logits), targets)

    # ------------------------------------------------------------ fine-tuning terms

    def fused_logits(self, f: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the fusion path and which points had a 2D feature."""
        feat2d, paired = mean_pair_features(len(f), batch["pair_point"], self.proj2d(batch["pair_features"]))
        return self.fused_head(f + self.fuse(feat2d) * paired[:, None]), paired


def trained_parts(mode: str, weights: dict[str, float], consistency: bool) -> set[str]:
    """The FusionModel submodules (and parameters) a run trains; the others get no gradient and are frozen,
    so that DDP has no unused parameters and needs no ``find_unused_parameters``."""
    if mode == "finetune":
        return {"backbone", "seg_head"} | ({"proj2d", "fuse", "fused_head"} if consistency else set())
    parts = {"backbone"}
    if weights.get("contrastive", 0):
        parts |= {"proj3d", "proj2d", "logit_scale"}
    if weights.get("regression", 0):
        parts |= {"head3d"}
    if weights.get("codebook", 0):
        parts |= {"proj3d", "proj2d", "codebook"}
    if weights.get("occupancy", 0):
        parts |= {"occupancy_head"}
    return parts


class FusionObjective(nn.Module):
    """A FusionModel and the losses of one mode in one forward: what DDP wraps, so every gradient is averaged.

    Parts the mode does not use are frozen (:func:`trained_parts`).
    """

    def __init__(self, model: FusionModel, mode: str, weights: dict[str, float], consistency: bool,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.model, self.mode, self.weights, self.consistency, self.generator = \
            model, mode, weights, consistency, generator
        parts = trained_parts(mode, weights, consistency)
        for name, p in model.named_parameters():
            p.requires_grad_(name.split(".")[0] in parts)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.mode == "pretrain":
            return pretrain_losses(self.model, batch, self.weights, self.generator)
        return seg_losses(self.model, batch, self.consistency)


def seg_losses(model: FusionModel, batch: dict, consistency: bool, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Fine-tuning: CE of the LiDAR-only head, CE of the fused head and, if asked, KL(fused || LiDAR-only)."""
    f = model.backbone(batch["points"], batch["batch_index"])
    logits = model.seg_head(f)
    labels = batch["labels"]
    out = {"ce": F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)}
    if consistency:
        fused, paired = model.fused_logits(f, batch)
        out["ce_fused"] = F.cross_entropy(fused, labels, ignore_index=IGNORE_INDEX)
        teacher = F.softmax(fused[paired].detach() / temperature, dim=-1)
        student = F.log_softmax(logits[paired] / temperature, dim=-1)
        out["consistency"] = F.kl_div(student, teacher, reduction="batchmean") * temperature**2
    out["total"] = sum(out.values())
    return out


def pretrain_losses(model: FusionModel, batch: dict, weights: dict[str, float],
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The switched-on pre-training terms (weight > 0), each weighted, and their total."""
    out: dict[str, torch.Tensor] = {}
    f = model.backbone(batch["points"], batch["batch_index"])
    pick = model.sample_pairs(len(batch["pair_point"]), generator)
    if weights.get("contrastive", 0):
        out["contrastive"] = weights["contrastive"] * model.contrastive(f, batch, pick)
    if weights.get("regression", 0):
        out["regression"] = weights["regression"] * model.regression(f, batch)
    if weights.get("codebook", 0):
        out["codebook"] = weights["codebook"] * model.codebook_loss(f, batch, pick)
    if weights.get("occupancy", 0):
        size, keep_all, queries, targets = model.config.occupancy_voxel, [], [], []
        for b in range(int(batch["batch_index"].max()) + 1):
            mine = batch["batch_index"] == b
            xyz = batch["points"][mine, :3]
            keep, masked = mask_voxels(xyz, size, model.config.occupancy_mask, generator)
            q, t = occupancy_queries(xyz, masked, size, generator)
            keep_all.append(keep)
            queries.append(q)
            targets.append(t)
        out["occupancy"] = weights["occupancy"] * model.occupancy(batch["points"], batch["batch_index"],
                                                                  torch.cat(keep_all), queries, torch.cat(targets))
    out["total"] = sum(out.values())
    return out
