"""The one interface every point-cloud encoder family answers, so no stage, head, export or optimiser names a family.

    patches = encoder.tokenize(points)               # FPS + kNN grouping; deterministic for given points
    mask = encoder.random_mask(patches, ratio)        # (B, G) bool over the output tokens, True = masked
    out = encoder.encode(patches, visible=~mask)      # Encoded: tokens, centers, cls, global_feature
    levels = encoder.forward_intermediates(patches)   # [Level(features, centers)] for dense (segmentation) heads
    encoded, masked = encoder.encode_levels(patches, visible=~mask)  # + [MaskedLevel] per scale (reconstruction)
    tokens, global_feature = encoder(points)          # the short form every classifier uses

``G`` is the number of tokens the encoder outputs (Point-MAE: its groups; Point-M2AE: its coarsest scale).
Masking is always decided on those tokens; a hierarchical family back-projects the visible set to its finer
scales inside ``encode``. ``pool(tokens, cls)`` is how the family turns output tokens into its global feature,
so a decoder that predicts a global feature (stage-2) reads its own tokens the same way.
``reconstruction`` names the family's own masked point reconstruction (its pre-training objective), which
:mod:`train.models.masked_distillation` builds: ``"patches"`` (Point-MAE: each masked output token's patch of
points) or ``"hierarchical"`` (Point-M2AE: a decoder back up the scales, :mod:`train.models.reconstruction`).

Families register in :mod:`train.models.encoders` with :func:`register_family`; each family module also maps
the field's released checkpoints to and from its own parameter names (``from_official`` / ``to_official``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class Patches:
    """What :meth:`PointEncoder.tokenize` returns. ``centers`` (B, G, 3): the centres of the output tokens.

    Families subclass it with the rest of their grouping (neighbourhoods, per-scale indices)."""

    centers: torch.Tensor


@dataclass
class Encoded:
    """What :meth:`PointEncoder.encode` returns.

    tokens          (B, G', C)  normed output tokens (G' = visible tokens when masked), C = ``token_dim``
    centers         (B, G', 3)  their centres
    cls             (B, C) or None: the class token's output, for families that have one
    global_feature  (B, global_dim): ``pool(tokens, cls)``
    """

    tokens: torch.Tensor
    centers: torch.Tensor
    cls: torch.Tensor | None
    global_feature: torch.Tensor


@dataclass
class Level:
    """One level of :meth:`PointEncoder.forward_intermediates`: features (B, G_l, C_l) at centres (B, G_l, 3)."""

    features: torch.Tensor
    centers: torch.Tensor


@dataclass
class MaskedLevel:
    """One scale of a masked encoding (:meth:`PointEncoder.encode_levels`), normed as ``forward_intermediates``
    norms that scale.

    tokens  (B, L, C)  the scale's visible tokens, in index order, padded to the batch's longest visible set
    ids     (B, L)     int64 token id of each row (padding rows point at masked tokens)
    valid   (B, L)     bool, False on padding rows; None when every row is real
    masked  (B, G)     bool over all the scale's tokens, True = masked (hidden from the encoder)
    """

    tokens: torch.Tensor
    ids: torch.Tensor
    valid: torch.Tensor | None
    masked: torch.Tensor


class PointEncoder(nn.Module):
    """Base class of the encoder families (see the module docstring for the contract)."""

    family: ClassVar[str]           # the registry's family name, e.g. "point-mae"
    config_class: ClassVar[type]    # a frozen dataclass with the family's hyper-parameters
    default_mask_ratio: ClassVar[float] = 0.6
    # the official configs' differences, per recipe ("pretrain", "mae", "modelnet40", "scanobjectnn", "segment"):
    # {"encoder": config overrides, <any other key>: a run setting, e.g. label_smoothing}. The overrides are
    # settings no weight depends on, or parameters a loaded file may lack (kept as initialised, e.g. a cls token)
    recipes: ClassVar[dict[str, dict]] = {}
    segmentation_head: ClassVar[str] = "shared-centres"  # the part-segmentation design published with the family
    reconstruction: ClassVar[str | None] = None  # the family's masked point reconstruction (module docstring)

    config: Any

    @property
    def token_dim(self) -> int:
        raise NotImplementedError

    @property
    def global_dim(self) -> int:
        raise NotImplementedError

    @property
    def num_tokens(self) -> int:
        raise NotImplementedError

    @property
    def intermediate_dims(self) -> list[int]:
        """Feature width of each level :meth:`forward_intermediates` returns."""
        raise NotImplementedError

    def tokenize(self, points: torch.Tensor) -> Patches:
        raise NotImplementedError

    def random_mask(self, patches: Patches, ratio: float) -> torch.Tensor:
        """(B, G) bool, True = masked: exactly int(ratio * G) per cloud, chosen uniformly."""
        b, g = patches.centers.shape[:2]
        return random_token_mask(b, g, ratio, patches.centers.device)

    def encode(self, patches: Patches, visible: torch.Tensor | None = None) -> Encoded:
        raise NotImplementedError

    def encode_levels(self, patches: Patches, visible: torch.Tensor) -> tuple[Encoded, list[MaskedLevel]]:
        """:meth:`encode` with ``visible`` (B, G) bool, and each scale's visible tokens (finest first) for a
        decoder that reads them: one scale, the output tokens, for a single-scale family."""
        encoded = self.encode(patches, visible)
        ids, valid = pack_visible(visible)
        return encoded, [MaskedLevel(encoded.tokens, ids, None if bool(valid.all()) else valid, ~visible)]

    def pool(self, tokens: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward_intermediates(self, patches: Patches) -> list[Level]:
        raise NotImplementedError

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encode(self.tokenize(points))
        return out.tokens, out.global_feature

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to the encoder) that AdamW must not decay besides biases and norms."""
        return set()

    def unused_by_intermediates(self) -> set[str]:
        """Parameter names (relative to the encoder) that :meth:`forward_intermediates` never reads: a dense head
        freezes them, so DDP finds a gradient for every parameter it trains."""
        return set()

    def describe(self) -> dict:
        """``{"name": family, "config": {...}}``: what a checkpoint stores to rebuild this encoder."""
        return {"name": self.family, "config": dataclasses.asdict(self.config)}


def split_visible_masked(mask: torch.Tensor) -> torch.Tensor:
    """(B, G) token ids in a masked decoder's input order: visible tokens (in order), then masked ones."""
    # a stable sort puts False (visible) before True (masked) and keeps each part's order
    return torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices


def pack_visible(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Visible token ids first, in index order, cut to the longest visible set: ``order`` (B, L) int64 and
    ``valid`` (B, L) bool (False on the padding, whose ids point at masked tokens)."""
    order = split_visible_masked(~visible)
    count = visible.sum(dim=1)
    length = int(count.max())
    valid = torch.arange(length, device=visible.device) < count.unsqueeze(1)
    return order[:, :length], valid


def random_token_mask(batch: int, tokens: int, ratio: float, device=None) -> torch.Tensor:
    """(B, G) bool, True = masked; exactly int(ratio * G) per cloud (Point-MAE's random masking truncates)."""
    num_mask = int(ratio * tokens)
    if not 0 < num_mask < tokens:
        raise ValueError(f"mask ratio {ratio} masks {num_mask} of {tokens} tokens; keep at least one of each")
    order = torch.rand(batch, tokens, device=device).argsort(dim=1)
    return order < num_mask
