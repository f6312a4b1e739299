"""Stage-2 of MMPD (Section 3.2): masked point modelling that predicts a frozen stage-1 model's features.

    patches = encoder.tokenize(points)   (shared with the teacher: the same tokens)
    mask a random share of the G output tokens (encoder.random_mask: Point-MAE 60% of its patches; a
    hierarchical encoder masks its coarsest scale and back-projects); the student encoder sees the visible ones
    local:  [encoded visible ; mask tokens]                  (B, G, C); slot i holds token ids[i], ids = [vis ; masked]
            -> shuffle the content: slot i gets the content of slot perm[i]   (perm: random per cloud)
            -> + pos_embed(centre of token ids[i]) in slot i      (added after the shuffle, unshuffled order)
            -> transformer decoder -> head                         (B, G, D_teacher)
            loss 1 - cos(prediction_i, teacher_token[ids[i]])      (eq. 4, every slot, unshuffled order)
            The decoder must put the pieces back (the paper's Jigsaw analogy): the content in slot i
            belongs elsewhere, the position and target of slot i do not move. Permuting content,
            positions and targets together would change nothing, as the decoder is permutation-equivariant.
    global: [cls ; visible encoded tokens] -> separate decoder (no shuffle, no positions)
            -> head(encoder.pool(token outs, cls out))               (pooled as the encoder pools its global feature)
            loss 1 - cos(prediction, teacher_global)                 (eq. 5)
    total = local + global                                             (eq. 6)

The global decoder also reads the encoder's cls token where the family has one (Point-MAE): it attended to the
visible patches only, so nothing of the masked ones leaks in, and without it the cls half of the global feature
(what probes read) would get no signal. A family without one (Point-M2AE) pools its tokens alone.

With a hierarchical encoder (Point-M2AE) the tokens are those of its coarsest scale: the paper's local loss is
between "the output tokens of the first-stage and second-stage models", and those are the encoder's outputs;
the masking is Point-M2AE's own (coarsest scale, back-projected), as Section 3.2 builds on it.

``target="points"`` replaces the local term with the encoder family's own masked point reconstruction (its
``reconstruction``), Chamfer-L2 as the official ``ChamferDistanceL2`` (the Table 8 baseline; with no other term,
the families' own pre-training, ``train mae``):
    "patches" (Point-MAE): [visible ; mask tokens] (no shuffle) -> decoder (xavier init, drop path rising to
            ``decoder_drop_path``) -> norm -> head: the masked patches' points, relative to their centres
    "hierarchical" (Point-M2AE): train.models.reconstruction.HierarchicalDecoder, from the coarsest scale down
            to scale 1 with skip connections: 16 points per masked scale-1 token against its 8 scale-0 centres.
            The scale norms below that scale get no gradient; they are frozen (at their initial values, as the
            official release has ``encoder_norms.0``), so DDP needs no search for unused parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train.models.encoders.base import Patches, random_token_mask, split_visible_masked
from train.models.layers import TransformerEncoder, drop_path_rates, init_weights
from train.models.reconstruction import HierarchicalDecoder, xavier_linears
from train.models.student import Student
from train.ops import chamfer_distance


@dataclass(frozen=True)
class MaskedDistillationConfig:
    mask_ratio: float = 0.6  # of the encoder's output tokens
    shuffle: bool = True
    local: bool = True
    use_global: bool = True
    target: str = "features"  # or "points" (the encoder family's own masked point reconstruction)
    decoder_depth: int = 2     # blocks of each decoder (each stage of the hierarchical one)
    decoder_drop_path: float = 0.0  # target "points": the reconstruction decoder's drop path, rising to this
    up_blocks: int = 1         # target "points", hierarchical: residual blocks of each token propagation


random_mask = random_token_mask  # the name the tests and scripts know
__all__ = ["MaskedDistillation", "MaskedDistillationConfig", "random_mask", "split_visible_masked"]


class MaskedDistillation(nn.Module):
    """The trainable part of stage-2: the student (its encoder trains, its heads ride along) and the decoders."""

    def __init__(self, student: Student, cfg: MaskedDistillationConfig, token_dim: int, global_dim: int) -> None:
        super().__init__()
        self.student, self.cfg = student, cfg
        enc = student.encoder
        c, heads = enc.token_dim, enc.config.num_heads
        points = cfg.target == "points"
        self.reconstruction = enc.reconstruction if points else None
        if points and self.reconstruction is None:
            raise ValueError(f"--target points: {enc.family} has no masked point reconstruction of its own")
        if self.reconstruction == "hierarchical":
            self.hierarchical = HierarchicalDecoder(enc, cfg.decoder_depth, cfg.up_blocks, cfg.decoder_drop_path)
            for s in range(self.hierarchical.scale):  # no loss reads these scales' norms (module docstring)
                if (norm := enc.scale_norm(s)) is not None:
                    norm.requires_grad_(False)
        elif cfg.local or points:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, c))
            self.decoder_pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, c))
            rates = drop_path_rates(cfg.decoder_drop_path, cfg.decoder_depth) if points else [0.0] * cfg.decoder_depth
            self.local_decoder = TransformerEncoder(c, heads, rates)
            self.local_norm = nn.LayerNorm(c)
            self.local_head = nn.Linear(c, 3 * enc.config.group_size if points else token_dim)
        if cfg.use_global:
            self.global_decoder = TransformerEncoder(c, heads, [0.0] * cfg.decoder_depth)
            self.global_norm = nn.LayerNorm(c)
            self.global_head = nn.Linear(enc.global_dim, global_dim)  # reads the tokens pooled as the encoder does
        # Point_MAE's reconstruction keeps PyTorch's default init but for xavier in its decoder blocks
        official = {"decoder_pos_embed", "local_head", "hierarchical"} if points else set()
        for name, m in self.named_children():
            if name != "student" and name not in official:
                m.apply(init_weights)
        if self.reconstruction == "patches":
            xavier_linears(self.local_decoder)
        if hasattr(self, "mask_token"):
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"} if hasattr(self, "mask_token") else set()

    def forward(self, patches: Patches, teacher_tokens: torch.Tensor | None, teacher_global: torch.Tensor | None,
                mask: torch.Tensor | None = None, perm: torch.Tensor | None = None,
                details: bool = False) -> dict[str, torch.Tensor]:
        """Losses (``local`` or ``points``, ``global``, ``total``); ``details`` adds the intermediate tensors.

        ``teacher_tokens`` (B, G, D) and ``teacher_global`` (B, D_g): the frozen model's outputs for ``patches``."""
        encoder, center = self.student.encoder, patches.centers
        b, g = center.shape[:2]
        if mask is None:
            mask = encoder.random_mask(patches, self.cfg.mask_ratio)
        out: dict[str, torch.Tensor] = {}
        if self.reconstruction == "hierarchical":
            encoded, levels = encoder.encode_levels(patches, ~mask)
            prediction, truth = self.hierarchical(levels, patches)                  # (L, K_0, 3), (L, K_s, 3)
            out["points"] = chamfer_distance(prediction.float(), truth.float())
            if details:
                out.update(points_prediction=prediction, points_target=truth, levels=levels)
        else:
            encoded = encoder.encode(patches, visible=~mask)
        visible = encoded.tokens
        if self.reconstruction == "patches" or (self.cfg.local and self.cfg.target == "features"):
            token_ids = split_visible_masked(mask)                                   # (B, G) slot -> token
            x = torch.cat([visible, self.mask_token.expand(b, g - visible.shape[1], -1)], dim=1)
            if self.cfg.shuffle and self.cfg.target != "points":
                if perm is None:
                    perm = torch.rand(b, g, device=center.device).argsort(dim=1)
                x = torch.gather(x, 1, perm.unsqueeze(-1).expand_as(x))             # content only: the jigsaw
            pos_centres = torch.gather(center, 1, token_ids.unsqueeze(-1).expand(-1, -1, 3))
            y = self.local_head(self.local_norm(self.local_decoder(x, self.decoder_pos_embed(pos_centres))))
            if self.cfg.target == "points":
                neighborhood = patches.neighborhood
                masked = y[:, visible.shape[1]:].reshape(-1, neighborhood.shape[2], 3)
                truth = neighborhood[mask].reshape(-1, neighborhood.shape[2], 3)
                out["points"] = chamfer_distance(masked.float(), truth.float())
                if details:
                    out.update(points_prediction=masked, points_target=truth)
            else:
                ids = token_ids.unsqueeze(-1).expand(-1, -1, teacher_tokens.shape[-1])
                target = torch.gather(teacher_tokens, 1, ids)
                out["local"] = (1 - F.cosine_similarity(y.float(), target.float(), dim=-1)).mean()
                if details:
                    out["local_target"] = target
            if details:
                out.update(token_ids=token_ids, perm=perm, decoder_input=x, pos_centres=pos_centres, local_prediction=y)
        if self.cfg.use_global:
            # the encoder's output for the visible patches: its cls token (which attended to them alone) + tokens
            has_cls = encoded.cls is not None
            x = torch.cat([encoded.cls[:, None], visible], dim=1) if has_cls else visible   # (B, [1+]Gv, C)
            gx = self.global_norm(self.global_decoder(x, torch.zeros_like(x)))       # no positional embeddings
            pred = self.global_head(encoder.pool(gx[:, 1:], gx[:, 0]) if has_cls else encoder.pool(gx, None))
            out["global"] = (1 - F.cosine_similarity(pred.float(), teacher_global.float(), dim=-1)).mean()
            if details:
                out.update(global_input=x)
        if details:
            out.update(mask=mask, visible=visible)
        out["total"] = sum(out[k] for k in ("local", "points", "global") if k in out)
        return out
