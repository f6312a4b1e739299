"""Stage-1 contrastive loss: symmetric InfoNCE (CLIP-style) with a learnable temperature per term.

For point embeddings P and teacher embeddings T of one global batch (both
L2-normalised), logits = exp(s) * P T^T and
    L(P, T) = (CE(logits, diag) + CE(logits^T, diag)) / 2,
the paper's equations (1)-(3): the text term plus one term per vision teacher.
With DDP, embeddings are gathered from every rank (``gather_features``), the
local slice keeping its gradient, so negatives come from the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GatherFn = Callable[[torch.Tensor], torch.Tensor]


def gather_features(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """All ranks' rows of ``x`` in rank order; this rank's slice keeps its gradient."""
    if world_size == 1:
        return x
    import torch.distributed as dist

    parts = [torch.zeros_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def info_nce(p: torch.Tensor, t: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of normalised ``p`` (B, D) and ``t`` (B, D).

    Every rank computes it on the gathered global batch (open_clip's default);
    gradients reach only the local slices, and DDP averages them.
    """
    logits = logit_scale.exp() * p @ t.t()  # the scale is bounded as a parameter (train.optim), not here
    labels = torch.arange(logits.shape[0], device=p.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


class MultiTeacherLoss(nn.Module):
    """Sum of weighted InfoNCE terms, one per (teacher, target) pair, each with its own temperature."""

    def __init__(self, terms: dict[str, float], rank: int = 0, world_size: int = 1,
                 gather: Callable[[torch.Tensor, int, int], torch.Tensor] = gather_features) -> None:
        super().__init__()
        self.weights = dict(terms)
        self.logit_scales = nn.ParameterDict(
            {name.replace("/", "__"): nn.Parameter(torch.tensor(math.log(1 / 0.07))) for name in terms})
        self.rank, self.world_size, self.gather = rank, world_size, gather

    def forward(self, points: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                head_of: dict[str, str]) -> dict[str, torch.Tensor]:
        """``head_of`` maps a term (e.g. "clip/text") to the student head whose output it aligns."""
        losses = {}
        for term, weight in self.weights.items():
            p = F.normalize(points[head_of[term]].float(), dim=-1)
            t = F.normalize(targets[term].float(), dim=-1)
            p_all = self.gather(p, self.rank, self.world_size)
            t_all = self.gather(t, self.rank, self.world_size)
            losses[term] = weight * info_nce(p_all, t_all, self.logit_scales[term.replace("/", "__")])
            self.global_batch = p_all.shape[0]
        losses["total"] = sum(losses.values())
        return losses
