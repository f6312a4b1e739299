"""Point-M2AE encoder (Zhang et al., 2022), as the reference implementation (ZrrSkywalker/Point-M2AE) computes it.

    points (B, N, 3)
      scale s = 0, 1, 2: FPS picks G_s centres of the previous scale's points (the input points for s = 0),
                         kNN takes K_s of those points around each centre            # idx_s (B, G_s, K_s)
      s = 0: token_embed[0]: mini-PointNet on the neighbourhoods relative to their centre   # (B, G_0, C_0)
      s > 0: token_embed[s]: the same shape of net on the K_s gathered scale-(s-1) tokens  # (B, G_s, C_s)
      x = block(x + pos_embed[s](centres)) for each of the scale's blocks  (positions before every block;
          local attention: a token attends only to tokens whose centres lie within local_radius[s])
      tokens = norm(x of the last scale)                                              # (B, G_2, C_2)
      global feature: mean + max of the tokens (ModelNet40 head) or [mean ; max over tokens 1:] (ScanObjectNN)

Masked encoding (pre-training): the coarsest scale's visible set is back-projected through the kNN indices
(a finer token is visible iff it is a neighbour of a visible coarser token); each scale's blocks see only its
visible tokens, packed to the batch's longest visible set and padded, with padded keys masked out of attention.
The embeddings are computed for all tokens (BatchNorm statistics over all, as the official code does).
The official pre-training attends globally (``local_attention=False``); fine-tuning and segmentation locally.

Checked once against the official modules run on a CPU (their CUDA imports stubbed, the same grouping): the
fine-tuning models' tokens and both pooled features, the segmentation model's three levels, and the
pre-training encoder's masked and SVM outputs (``official_batch_quirks``) agree to 3e-6 in float32.

Parameter names are the official fine-tuning model's (``Point_M2AE_ModelNet40``: ``h_encoder.*`` and ``norm.*``),
so :func:`from_official` / :func:`to_official` only move the final norm to and from the pre-training /
segmentation name ``h_encoder.encoder_norms.2``. Presets: ``point-m2ae`` (the official fine-tuning encoder,
12,654,400 parameters) and ``point-m2ae-tiny`` for CPUs, in ``train/model_configs/``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train.models.encoders import register_family
from train.models.encoders.base import Encoded, Level, MaskedLevel, Patches, PointEncoder, pack_visible
from train.models.layers import MiniPointNet, TransformerEncoder, drop_path_rates, init_weights
from train.ops import farthest_point_sample, knn
from train.ops.geometry import exact_cdist

GLOBAL_POOLS = ("mean+max", "concat")


@dataclass(frozen=True)
class PointM2AEConfig:
    """Official names and values (``cfgs/fine-tuning/modelnet40.yaml``); lists from JSON become tuples.

    local_attention: mask attention by ``local_radius`` (a radius <= 0 turns it off at that scale). True in the
        official fine-tuning and segmentation models; the official pre-training model multiplies the radius mask
        by its padding mask, which zeroes it between real tokens, so it attends globally: False reproduces it.
    scale_norms: own the pre-training / segmentation models' LayerNorms of scales 0 and 1
        (``h_encoder.encoder_norms.0/1``), which :meth:`PointM2AEEncoder.forward_intermediates` applies; the
        official fine-tuning (classification) model has none (its final ``norm`` is the coarsest scale's).
    global_pool: "mean+max" (ModelNet40 head, C) or "concat" (ScanObjectNN head, 2C).
    official_batch_quirks: masked encoding (with ``local_attention`` False) reproduces two batch-dependent
        slips of the official pre-training bit for bit: real tokens within ``local_radius`` of the origin also
        attend to the padding slots (centre 0; the radius mask times the padding mask lets them through), and
        every back-projection step marks token 0 of cloud 0 visible (masked indices are zeroed, then
        scattered). Off: a cloud's tokens do not depend on the others in its batch.
    """

    num_groups: tuple[int, ...] = (512, 256, 64)
    group_sizes: tuple[int, ...] = (16, 8, 8)
    encoder_depths: tuple[int, ...] = (5, 5, 5)
    encoder_dims: tuple[int, ...] = (96, 192, 384)
    local_radius: tuple[float, ...] = (0.32, 0.64, 1.28)
    local_attention: bool = True
    num_heads: int = 6
    drop_path_rate: float = 0.1
    global_pool: str = "mean+max"
    scale_norms: bool = False
    official_batch_quirks: bool = False

    def __post_init__(self) -> None:
        for name in ("num_groups", "group_sizes", "encoder_depths", "encoder_dims", "local_radius"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.num_groups)
        if any(len(getattr(self, k)) != n for k in ("group_sizes", "encoder_depths", "encoder_dims", "local_radius")):
            raise ValueError(f"num_groups, group_sizes, encoder_depths, encoder_dims and local_radius need one "
                             f"entry per scale; got {asdict(self)}")
        if any(self.group_sizes[s] > self.num_groups[s - 1] for s in range(1, n)):
            raise ValueError(f"group_sizes {self.group_sizes}: scale s groups scale s-1's num_groups {self.num_groups}")
        if any(c % self.num_heads for c in self.encoder_dims):
            raise ValueError(f"encoder_dims {self.encoder_dims} must be multiples of num_heads {self.num_heads}")
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PointM2AEPatches(Patches):
    """Point-M2AE's grouping. ``centers`` (B, G_2, 3) = ``scale_centers[-1]``.

    neighborhood   (B, G_0, K_0, 3) input points around the scale-0 centres, relative to their centre
    scale_centers  per scale (B, G_s, 3), finest first, in FPS order
    scale_idx      per scale (B, G_s, K_s) int64 kNN indices: scale 0 into the input points, scale s > 0 into
                   scale s-1's centres (the official ``idxs``, without its batch offsets)
    """

    neighborhood: torch.Tensor
    scale_centers: tuple[torch.Tensor, ...]
    scale_idx: tuple[torch.Tensor, ...]

    def neighbourhood_at(self, s: int) -> torch.Tensor:
        """(B, G_s, K_s, 3): the points scale ``s`` groups around its centres, relative to the centre: the input
        points for s = 0, scale s-1's centres for s > 0 (the official ``neighborhoods[s]``)."""
        if s == 0:
            return self.neighborhood
        return gather_rows(self.scale_centers[s - 1], self.scale_idx[s]) - self.scale_centers[s].unsqueeze(2)


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, C) at idx (B, ...) int64 -> (B, ..., C)."""
    b, c = x.shape[0], x.shape[-1]
    out = x.gather(1, idx.reshape(b, -1, 1).expand(-1, -1, c))
    return out.reshape(*idx.shape, c)


class HEncoder(nn.Module):
    """The official ``H_Encoder``'s parameters (token merging, positions, blocks; per-scale norms if asked)."""

    def __init__(self, config: PointM2AEConfig) -> None:
        super().__init__()
        dims, depths = config.encoder_dims, config.encoder_depths
        self.token_embed = nn.ModuleList(
            MiniPointNet(3 if s == 0 else dims[s - 1], dims[s], points=s == 0) for s in range(len(dims)))
        self.encoder_pos_embeds = nn.ModuleList(
            nn.Sequential(nn.Linear(3, c), nn.GELU(), nn.Linear(c, c)) for c in dims)
        rates = drop_path_rates(config.drop_path_rate, sum(depths))                       # over all 15 blocks
        starts = [sum(depths[:s]) for s in range(len(depths))]
        self.encoder_blocks = nn.ModuleList(
            TransformerEncoder(c, config.num_heads, rates[a:a + d]) for c, a, d in zip(dims, starts, depths))
        if config.scale_norms:
            self.encoder_norms = nn.ModuleList(nn.LayerNorm(c) for c in dims[:-1])


@register_family
class PointM2AEEncoder(PointEncoder):
    """Point cloud -> coarsest-scale tokens (B, G_2, C_2) and a pooled global feature (C_2 or 2 C_2)."""

    family = "point-m2ae"
    config_class = PointM2AEConfig
    default_mask_ratio = 0.8
    segmentation_head = "per-level"  # Point_M2AE_SEG: every scale propagated to every point
    reconstruction = "hierarchical"  # Point_M2AE: decoder up to scale 1, its masked tokens' scale-0 centres
    # cfgs/pre-training (attention global between real tokens), cfgs/fine-tuning/*.yaml, segmentation/main.py;
    # the per-scale norms only where a head reads them (a parameter without a gradient would stall DDP)
    recipes = {"pretrain": {"encoder": {"local_attention": False, "scale_norms": False}},
               # the official pre-training model itself: its decoder's skip connection reads encoder_norms[1]
               "mae": {"encoder": {"local_attention": False, "scale_norms": True}},
               "modelnet40": {"encoder": {"group_sizes": (16, 8, 8), "global_pool": "mean+max",
                                          "local_attention": True, "scale_norms": False}, "label_smoothing": 0.3},
               "scanobjectnn": {"encoder": {"group_sizes": (32, 16, 16), "global_pool": "concat",
                                            "local_attention": True, "scale_norms": False}, "label_smoothing": 0.0},
               "segment": {"encoder": {"group_sizes": (16, 8, 8), "local_attention": True, "scale_norms": True}},
               # no official S3DIS recipe: its part-segmentation one, on 2,048-point blocks as on 2,048-point shapes
               "semseg": {"encoder": {"group_sizes": (16, 8, 8), "local_attention": True, "scale_norms": True}},
               # scenes: 3DETR-m starts from 2,048 tokens and halves them once, masking attention at 0.4, 0.8 and
               # 1.2 m; the third scale halves again, so the decoder reads 512 tokens (3DETR-m: 1,024)
               "detect": {"encoder": {"num_groups": (2048, 1024, 512), "group_sizes": (32, 16, 16),
                                      "local_radius": (0.4, 0.8, 1.2), "local_attention": True,
                                      "scale_norms": False}}}

    def __init__(self, config: PointM2AEConfig) -> None:
        super().__init__()
        self.config = config
        self.h_encoder = HEncoder(config)
        self.h_encoder.apply(init_weights)
        self.norm = nn.LayerNorm(config.encoder_dims[-1])

    @property
    def token_dim(self) -> int:
        return self.config.encoder_dims[-1]

    @property
    def global_dim(self) -> int:
        return self.token_dim * (2 if self.config.global_pool == "concat" else 1)

    @property
    def num_tokens(self) -> int:
        return self.config.num_groups[-1]

    @property
    def intermediate_dims(self) -> list[int]:
        return list(self.config.encoder_dims)

    def tokenize(self, points: torch.Tensor) -> PointM2AEPatches:
        """FPS + kNN at every scale (official ``Group``; FPS from index 0); deterministic for given points."""
        if points.ndim != 3 or points.shape[-1] != 3 or points.shape[1] < self.config.num_groups[0]:
            raise ValueError(f"points must be (B, N >= {self.config.num_groups[0]}, 3), got {tuple(points.shape)}")
        centers, idxs, src = [], [], points
        for g, k in zip(self.config.num_groups, self.config.group_sizes):
            center = gather_rows(src, farthest_point_sample(src, g))                 # (B, G_s, 3)
            idxs.append(knn(center, src, k).idx)                                       # (B, G_s, K_s)
            centers.append(center)
            src = center
        neighborhood = gather_rows(points, idxs[0]) - centers[0].unsqueeze(2)         # (B, G_0, K_0, 3)
        return PointM2AEPatches(centers[-1], neighborhood, tuple(centers), tuple(idxs))

    def random_mask(self, patches: Patches, ratio: float) -> torch.Tensor:
        """(B, G_2) bool, True = masked: ``int(ratio * G_2)`` per cloud (the official truncation), uniformly."""
        b, g = patches.centers.shape[:2]
        num_mask = int(ratio * g)
        if not 0 < num_mask < g:
            raise ValueError(f"mask ratio {ratio} masks {num_mask} of {g} tokens; keep at least one of each")
        return torch.rand(b, g, device=patches.centers.device).argsort(dim=1) < num_mask

    def back_project(self, patches: PointM2AEPatches, visible: torch.Tensor) -> list[torch.Tensor]:
        """Per scale (B, G_s) bool, finest first: a token is visible iff it is among the kNN of a visible token
        of the next coarser scale (the official multi-scale masking)."""
        out = [visible]
        for s in range(len(patches.scale_idx) - 1, 0, -1):
            idx = patches.scale_idx[s]                                                 # (B, G_s, K_s)
            hits = out[0].unsqueeze(-1).expand_as(idx).reshape(idx.shape[0], -1).float()
            count = hits.new_zeros(idx.shape[0], patches.scale_centers[s - 1].shape[1])
            finer = count.scatter_add_(1, idx.reshape(idx.shape[0], -1), hits) > 0
            if self.config.official_batch_quirks and not out[0].all():
                finer[0, 0] = True
            out.insert(0, finer)
        return out

    def allowed_attention(self, centers: torch.Tensor, valid: torch.Tensor | None, scale: int) -> torch.Tensor | None:
        """(B, L, L) bool, True = may attend, or None for full attention: keys within ``local_radius[scale]`` of
        the query's centre (``local_attention``), real keys only (``valid``); every token may attend to itself."""
        radius = self.config.local_radius[scale]
        eye = torch.eye(centers.shape[1], dtype=torch.bool, device=centers.device)
        if valid is not None and self.config.official_batch_quirks and not self.config.local_attention:
            real = valid[:, :, None] & valid[:, None, :]        # official: blocked = (dist >= r) * padding mask
            return real | (exact_cdist(centers, centers) < radius if radius > 0 else eye)
        allowed = None
        if self.config.local_attention and radius > 0:
            allowed = exact_cdist(centers, centers) < radius                          # official: dist >= r is masked
        if valid is not None:
            allowed = valid[:, None, :] if allowed is None else allowed & valid[:, None, :]
        if allowed is None:
            return None
        return allowed | eye

    def _scales(self, patches: PointM2AEPatches, visible: torch.Tensor | None,
                masks: list[torch.Tensor] | None = None):
        """Per scale: (block outputs (B, L_s, C_s), their centres (B, L_s, 3), valid (B, L_s) or None, token ids
        (B, L_s) or None). ``masks``: the back-projected visible sets, if already computed."""
        h, out, full = self.h_encoder, [], None
        if masks is None and visible is not None:
            masks = self.back_project(patches, visible)
        for s, centers in enumerate(patches.scale_centers):
            if s == 0:
                tokens = h.token_embed[0](patches.neighborhood)                        # (B, G_0, C_0)
            else:  # token merging of the previous scale's tokens (blocks' outputs where visible)
                tokens = h.token_embed[s](gather_rows(full, patches.scale_idx[s]))   # (B, G_s, C_s)
            valid = order = None
            if masks is not None:
                order, valid = pack_visible(masks[s])
                keep = valid.unsqueeze(-1)
                x = gather_rows(tokens, order) * keep                                  # (B, L_s, C_s), 0 on padding
                centers = gather_rows(centers, order) * keep
            else:
                x = tokens
            x = h.encoder_blocks[s](x, h.encoder_pos_embeds[s](centers), self.allowed_attention(centers, valid, s))
            out.append((x, centers, valid, order))
            if masks is None:
                full = x
            else:  # masked tokens keep their embedding (only masked coarser tokens read them)
                placed = tokens.scatter(1, order.unsqueeze(-1).expand_as(x), x)
                full = torch.where(masks[s].unsqueeze(-1), placed, tokens)
        return out

    def encode(self, patches: PointM2AEPatches, visible: torch.Tensor | None = None) -> Encoded:
        """``visible`` (B, G_2) bool: the coarsest scale's visible tokens (the same number per cloud), returned
        in index order; the finer scales see the back-projected sets (the official pre-training path: even with
        everything visible, a finer token no coarser token has among its kNN is left out). ``visible=None`` is
        the official fine-tuning path: every token of every scale."""
        if visible is not None:
            _check_visible(patches, visible)
        x, centers, _, _ = self._scales(patches, visible)[-1]  # the coarsest set is never padded
        tokens = self.norm(x)
        return Encoded(tokens, centers, None, self.pool(tokens, None))

    def encode_levels(self, patches: PointM2AEPatches, visible: torch.Tensor) -> tuple[Encoded, list[MaskedLevel]]:
        """:meth:`encode` and, from the same pass, every scale's visible tokens normed as
        :meth:`forward_intermediates` norms them (the official pre-training encoder's ``encoder_norms``), their
        ids, padding and back-projected masks, finest first: what the hierarchical decoder reads."""
        _check_visible(patches, visible)
        masks = self.back_project(patches, visible)
        levels = []
        for s, (x, centers, valid, order) in enumerate(self._scales(patches, visible, masks)):
            levels.append(MaskedLevel(self._normed(s, x), order, valid, ~masks[s]))
        tokens = levels[-1].tokens
        return Encoded(tokens, centers, None, self.pool(tokens, None)), levels

    def scale_norm(self, s: int) -> nn.Module | None:
        """The LayerNorm of scale ``s``'s tokens: ``norm`` for the coarsest, ``encoder_norms[s]`` with
        ``scale_norms``, else None (an affine-free norm)."""
        if s == len(self.config.encoder_dims) - 1:
            return self.norm
        return self.h_encoder.encoder_norms[s] if self.config.scale_norms else None

    def _normed(self, s: int, x: torch.Tensor) -> torch.Tensor:
        norm = self.scale_norm(s)
        return F.layer_norm(x, x.shape[-1:]) if norm is None else norm(x)

    def pool(self, tokens: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        """mean + max (ModelNet40 head), or [mean ; max over tokens 1:] (ScanObjectNN head: the official code
        leaves token 0 out of the max)."""
        if self.config.global_pool == "concat":
            return torch.cat([tokens.mean(dim=1), tokens[:, 1:].max(dim=1)[0]], dim=-1)  # (B, 2C)
        return tokens.mean(dim=1) + tokens.max(dim=1)[0]                                 # (B, C)

    def forward_intermediates(self, patches: PointM2AEPatches) -> list[Level]:
        """Per scale, finest first: the last block's output through that scale's LayerNorm, at the scale's
        centres: (B, 512, 96), (B, 256, 192), (B, 64, 384) officially. This is what the official segmentation
        model (``Point_M2AE_SEG``) feeds its propagation heads (``h_encoder.encoder_norms[s]``; the coarsest
        norm is our ``norm``). Without ``scale_norms`` scales 0 and 1 are layer-normed without affine
        parameters (the official norms at their initial values)."""
        return [Level(self._normed(s, x), centers) for s, (x, centers, _, _) in enumerate(self._scales(patches, None))]

    def no_weight_decay(self) -> set[str]:
        """The official optimiser skips every parameter with 'token' in its name: all of ``token_embed``."""
        return {name for name, _ in self.named_parameters() if "token" in name}


def _check_visible(patches: PointM2AEPatches, visible: torch.Tensor) -> None:
    count = visible.sum(dim=1)
    if (visible.shape != patches.centers.shape[:2] or visible.dtype != torch.bool or count[0] == 0
            or (count != count[0]).any()):
        raise ValueError(f"visible must be (B, G) = {tuple(patches.centers.shape[:2])} bool with the same "
                         f"number of True per cloud, got {tuple(visible.shape)} {visible.dtype}")


# ---- the released checkpoints (ZrrSkywalker/Point-M2AE): ``{'base_model': state}``, maybe ``module.``-prefixed ----
# pre-training (``Point_M2AE``): h_encoder.{token_embed,encoder_pos_embeds,encoder_blocks,encoder_norms.0-2}.*,
#   decoder: mask_token, h_decoder.*, decoder_pos_embeds.*, token_prop.*, decoder_norm.*, rec_head.*
# fine-tuning (``Point_M2AE_ModelNet40`` / ``_ScanObjectNN``): h_encoder.{token_embed,encoder_pos_embeds,
#   encoder_blocks}.* (no encoder_norms), norm.*, cls_head_finetune.*
# segmentation (``Point_M2AE_SEG``): h_encoder.* with encoder_norms.0-2, label_conv.*, propagations.*, convs*, bns*
ENCODER_PREFIX = "h_encoder."
FINAL_NORM, COARSEST_SCALE_NORM = "norm.", "h_encoder.encoder_norms.2."


def _unwrap(state: dict) -> dict[str, torch.Tensor]:
    if isinstance(state.get("base_model"), dict):
        state = state["base_model"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def official_kind(state: dict[str, torch.Tensor]) -> str | None:
    """``"pretrain"``, ``"finetune"`` (classification) or ``"segment"`` for a released Point-M2AE state, else None."""
    state = _unwrap(state)
    if "h_encoder.token_embed.0.first_conv.0.weight" not in state:
        return None
    if "mask_token" in state or any(k.startswith("h_decoder.") for k in state):
        return "pretrain"
    if any(k.startswith("propagations.") for k in state):
        return "segment"
    return "finetune"


def from_official(state: dict) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A released state (any kind; ``{'base_model': ...}`` and ``module.`` accepted) in this module's names, and
    the official keys left out (decoder, heads). ``h_encoder.encoder_norms.2`` becomes ``norm``; the
    ``encoder_norms.0/1`` of pre-training and segmentation states are kept (an encoder with ``scale_norms``)."""
    ours, left = {}, []
    for key, value in _unwrap(state).items():
        if key.startswith(COARSEST_SCALE_NORM):
            ours[FINAL_NORM + key[len(COARSEST_SCALE_NORM):]] = value
        elif key.startswith((ENCODER_PREFIX, FINAL_NORM)):
            ours[key] = value
        else:
            left.append(key)
    return ours, left


def to_official(state: dict[str, torch.Tensor], kind: str = "finetune") -> dict[str, torch.Tensor]:
    """This encoder's state in the official names of ``kind``: "finetune" (the classification models' encoder
    keys exactly: per-scale norms dropped) or "pretrain" / "segment" (``norm`` -> ``h_encoder.encoder_norms.2``;
    ``encoder_norms.0/1`` only if this encoder has ``scale_norms``)."""
    if kind not in ("finetune", "pretrain", "segment"):
        raise ValueError(f"kind must be finetune, pretrain or segment, got {kind!r}")
    out = {}
    for key, value in state.items():
        if kind == "finetune" and key.startswith("h_encoder.encoder_norms."):
            continue
        if kind != "finetune" and key.startswith(FINAL_NORM):
            key = COARSEST_SCALE_NORM + key[len(FINAL_NORM):]
        out[key] = value
    return out


def config_from_official(state: dict, model_yaml: dict | None = None) -> PointM2AEConfig:
    """The config of a released state as far as its weights tell; the rest is the official recipe's: a
    concat (ScanObjectNN) head means group sizes 32/16/16, pre-training means global attention. The ``model:``
    section of an official config beside the file (``model_yaml``) overrides the grouping it names."""
    state, kind = _unwrap(state), official_kind(state)
    pos = sorted(k for k in state if k.startswith("h_encoder.encoder_pos_embeds.") and k.endswith(".2.weight"))
    dims = tuple(state[k].shape[0] for k in pos)
    depths = tuple(1 + max(int(k.split(".")[4]) for k in state if k.startswith(f"h_encoder.encoder_blocks.{s}."))
                   for s in range(len(dims)))
    head = state.get("cls_head_finetune.0.weight")
    concat = head is not None and head.shape[1] == 2 * dims[-1]
    config = dict(encoder_depths=depths, encoder_dims=dims, local_attention=kind != "pretrain",
                  scale_norms="h_encoder.encoder_norms.0.weight" in state,
                  global_pool="concat" if concat else "mean+max", group_sizes=(32, 16, 16) if concat else (16, 8, 8))
    named = ("group_sizes", "num_groups", "local_radius", "num_heads", "drop_path_rate")
    config.update({k: v for k, v in (model_yaml or {}).items() if k in named})
    return PointM2AEConfig(**config)


def official_yaml(config: PointM2AEConfig, num_classes: int = 40, kind: str = "finetune") -> dict:
    """The ``model:`` section of the official config for ``config``: fine-tuning ``Point_M2AE_ModelNet40``
    (mean+max) or ``Point_M2AE_ScanObjectNN`` (concat), or ``Point_M2AE`` pre-training. The official heads
    hard-code 40 / 15 classes, so ``num_classes`` has no key to go to (kept for the common signature)."""
    encoder = {"group_sizes": list(config.group_sizes), "num_groups": list(config.num_groups),
               "encoder_depths": list(config.encoder_depths), "encoder_dims": list(config.encoder_dims),
               "local_radius": list(config.local_radius) if config.local_attention else [0] * len(config.local_radius),
               "drop_path_rate": config.drop_path_rate, "num_heads": config.num_heads}
    if kind == "pretrain":
        return {"NAME": "Point_M2AE", "mask_ratio": PointM2AEEncoder.default_mask_ratio, **encoder,
                "local_radius": list(config.local_radius), "decoder_depths": [1, 1],
                "decoder_dims": [config.encoder_dims[-1], config.encoder_dims[-2]], "decoder_up_blocks": [1, 1]}
    if config.global_pool == "concat":
        return {"NAME": "Point_M2AE_ScanObjectNN", **encoder}
    return {"NAME": "Point_M2AE_ModelNet40", "smooth": 0.3, **encoder}
