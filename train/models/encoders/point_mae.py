"""Point-MAE encoder (Pang et al., 2022), as the reference implementation (Pang-Yatian/Point-MAE) computes it.

    points (B, N, 3)
      -> Group: FPS picks G centres, kNN takes S neighbours each, centred   # (B, G, S, 3)
      -> Encoder: mini-PointNet per group -> one token                      # (B, G, C)
      -> + pos_embed(centres): MLP 3 -> 128 -> C
      -> [cls] + tokens -> TransformerEncoder (pre-norm ViT blocks)         # (B, 1+G, C)
      -> global feature = concat(cls, max over tokens)                      # (B, 2C)

``cls_token=False`` is the official pre-training encoder (``MaskTransformer``): no cls token, no cls_pos, and
the global feature is the max over the tokens alone (B, C), the token half of the fine-tuning feature (the
official pre-training has no feature of its own: its SVM validation is commented out). The ``mae`` recipe
builds it; every other recipe asks for the cls token, which a file without one leaves as initialised, as it
does loading the released ``pretrain.pth``.

Presets: ``point-mae`` (the official model: 12 layers, 384 dims, 6 heads, 64 groups of 32; alias ``base``) and
``point-mae-tiny`` for CPUs, in ``train/model_configs/``. Parameter names are the official fine-tuning model's
(``PointTransformer``); :func:`from_official` takes the pre-training state's ``MAE_encoder.`` away.
Checked once against the official ``PointTransformer`` run on a CPU (the same weights and grouping): tokens and
global feature agree to 3e-6 in float32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from train.models.encoders import register_family
from train.models.encoders.base import Encoded, Level, Patches, PointEncoder
from train.models.layers import MiniPointNet, TransformerEncoder, drop_path_rates, init_weights
from train.ops import farthest_point_sample, knn


@dataclass(frozen=True)
class PointMAEConfig:
    trans_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    num_group: int = 64
    group_size: int = 32
    encoder_dims: int = 384
    drop_path_rate: float = 0.1
    cls_token: bool = True  # False: the official pre-training encoder (module docstring)

    def to_dict(self) -> dict:
        return asdict(self)


class Group(nn.Module):
    """FPS centres and their kNN neighbourhoods, relative to the centre."""

    def __init__(self, num_group: int, group_size: int) -> None:
        super().__init__()
        self.num_group, self.group_size = num_group, group_size

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = xyz.shape[0]
        center_idx = farthest_point_sample(xyz, self.num_group)                    # (B, G)
        center = torch.gather(xyz, 1, center_idx.unsqueeze(-1).expand(-1, -1, 3))  # (B, G, 3)
        idx = knn(center, xyz, self.group_size).idx                               # (B, G, S)
        batch = torch.arange(b, device=xyz.device).view(b, 1, 1)
        neighborhood = xyz[batch, idx] - center.unsqueeze(2)                       # (B, G, S, 3)
        return neighborhood, center


@dataclass
class PointMAEPatches(Patches):
    """Point-MAE's grouping: ``neighborhood`` (B, G, S, 3) points relative to their centre ``centers`` (B, G, 3)."""

    neighborhood: torch.Tensor


def fetch_layers(depth: int) -> list[int]:
    """The block outputs Point-MAE's segmentation head reads: [3, 7, 11] of 12 blocks, [0, 2, 3] of 4."""
    return sorted({max(0, round(depth * (k + 1) / 3) - 1) for k in range(3)})


@register_family
class PointMAEEncoder(PointEncoder):
    """Point cloud -> tokens (B, G, C) and a global feature (B, 2C) = concat(cls, max over tokens)
    (without a cls token: (B, C), the max)."""

    family = "point-mae"
    config_class = PointMAEConfig
    default_mask_ratio = 0.6
    reconstruction = "patches"  # Point_MAE: each masked patch's points from its token
    recipes = {"mae": {"encoder": {"cls_token": False}},                              # cfgs/pretrain.yaml
               # stage-1 / joint: with a cls token, also when started from a `train mae` run (Table 9, reversed)
               "pretrain": {"encoder": {"cls_token": True}},
               "modelnet40": {"encoder": {"num_group": 64, "group_size": 32, "cls_token": True}},  # finetune_modelnet
               "scanobjectnn": {"encoder": {"num_group": 128, "group_size": 32, "cls_token": True}},  # finetune_scan_*
               "segment": {"encoder": {"cls_token": True}},
               "semseg": {"encoder": {"num_group": 128, "group_size": 32, "cls_token": True}},  # ACT semantic_seg.
               # 3DETR's pre-encoder: 2,048 centres of 64 points (about its 0.2 m ball on a 40k-point ScanNet room)
               "detect": {"encoder": {"num_group": 2048, "group_size": 64, "cls_token": True}}}

    def __init__(self, config: PointMAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config.trans_dim
        self.group_divider = Group(config.num_group, config.group_size)
        self.encoder = MiniPointNet(3, config.encoder_dims)  # the official ``Encoder``
        self.reduce_dim = nn.Linear(config.encoder_dims, c) if config.encoder_dims != c else nn.Identity()
        if config.cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
            self.cls_pos = nn.Parameter(torch.randn(1, 1, c) * 0.02)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, c))
        self.blocks = TransformerEncoder(c, config.num_heads, drop_path_rates(config.drop_path_rate, config.depth))
        self.norm = nn.LayerNorm(c)
        # Linear and LayerNorm as the official init; the mini-PointNet's 1x1 convs keep PyTorch's default, as this
        # project always had them: the official from-scratch init (std 0.02) learns much slower in short runs
        # (the 12-epoch tiny fine-tuning test stays at chance with it). Loaded weights are unaffected.
        self.apply(lambda m: init_weights(m, conv=False))

    @property
    def token_dim(self) -> int:
        return self.config.trans_dim

    @property
    def global_dim(self) -> int:
        return (2 if self.config.cls_token else 1) * self.config.trans_dim

    @property
    def num_tokens(self) -> int:
        return self.config.num_group

    @property
    def intermediate_dims(self) -> list[int]:
        return [self.config.trans_dim] * len(fetch_layers(self.config.depth))

    def tokenize(self, points: torch.Tensor) -> PointMAEPatches:
        """FPS + kNN patches (B, G, S, 3) and their centres (B, G, 3); deterministic for given points."""
        neighborhood, center = self.group_divider(points)
        return PointMAEPatches(center, neighborhood)

    def _embed(self, patches: PointMAEPatches, visible: torch.Tensor | None, with_cls: bool = True):
        """[cls ; patch tokens] (B, 1+G', C), their positional embeddings and the kept centres (B, G', 3); without
        the cls token with ``with_cls=False`` or when the encoder has none."""
        tokens = self.reduce_dim(self.encoder(patches.neighborhood))                 # (B, G, C)
        center = patches.centers
        b, _, c = tokens.shape
        if visible is not None:  # Point-MAE's masked encoder: the same number of visible patches per cloud
            tokens = tokens[visible].reshape(b, -1, c)
            center = center[visible].reshape(b, -1, 3)
        if not (with_cls and self.config.cls_token):
            return tokens, self.pos_embed(center), center
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)            # (B, 1+G', C)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center)], dim=1)
        return x, pos, center

    def encode(self, patches: PointMAEPatches, visible: torch.Tensor | None = None) -> Encoded:
        """``visible`` (B, G) bool keeps only those patches (the same number per cloud), in their order."""
        x, pos, center = self._embed(patches, visible)
        x = self.norm(self.blocks(x, pos))
        cls, tokens = (x[:, 0], x[:, 1:]) if self.config.cls_token else (None, x)
        return Encoded(tokens, center, cls, self.pool(tokens, cls))

    def pool(self, tokens: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        if cls is None:  # no cls token: the max alone
            return tokens.max(dim=1)[0]                                               # (B, C)
        return torch.cat([cls, tokens.max(dim=1)[0]], dim=-1)                        # (B, 2C)

    def forward_intermediates(self, patches: PointMAEPatches) -> list[Level]:
        """The normed patch tokens after blocks ``fetch_layers(depth)``, all at the same centres: Point-MAE's (and
        ACT's) segmentation model reads these three depths of a sequence with no cls token."""
        x, pos, center = self._embed(patches, None, with_cls=False)
        layers = self.blocks.forward_layers(x, pos, fetch_layers(self.config.depth))
        return [Level(self.norm(h), center) for h in layers]

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "cls_pos"} if self.config.cls_token else set()

    def unused_by_intermediates(self) -> set[str]:
        return self.no_weight_decay()  # the cls parameters: the segmentation models' sequence has no cls token


# ---- the released checkpoints (Pang-Yatian/Point-MAE): ``{'base_model': state}`` ----
# pre-training (``Point_MAE``): the encoder under ``MAE_encoder.`` (no cls token, no cls_pos), plus the decoder;
# fine-tuning (``PointTransformer``): the encoder at the top level, plus ``cls_head_finetune.``.
OFFICIAL_PRETRAIN_PREFIX = "MAE_encoder."
OFFICIAL_HEAD_PREFIX = "cls_head_finetune."


def official_kind(state: dict[str, torch.Tensor]) -> str | None:
    """``"pretrain"`` or ``"finetune"`` for a released Point-MAE state (``module.`` already stripped), else None."""
    if any(k.startswith(OFFICIAL_PRETRAIN_PREFIX + "blocks.blocks.") for k in state):
        return "pretrain"
    if "cls_token" in state and "encoder.first_conv.0.weight" in state and any(
            k.startswith("blocks.blocks.") and ".mlp.fc1." in k for k in state):
        return "finetune"
    return None


def from_official(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A released state (either kind) in this module's names, and the official keys it leaves out."""
    prefix = OFFICIAL_PRETRAIN_PREFIX if official_kind(state) == "pretrain" else ""
    ours, left = {}, []
    for key, value in state.items():
        if key.startswith(prefix) and not key.startswith(OFFICIAL_HEAD_PREFIX):
            ours[key[len(prefix):]] = value
        else:
            left.append(key)
    return ours, left


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This encoder's state in the official fine-tuning model's (``PointTransformer``) names: the same names."""
    return dict(state)


def config_from_official(state: dict[str, torch.Tensor], model_yaml: dict | None = None) -> PointMAEConfig:
    """The config of a released state: the official config's ``model:`` section where one lies beside the file,
    else the official defaults (6 heads, 64 groups of 32) with the widths and depth the weights show."""
    weights, _ = from_official(state)
    config = PointMAEConfig(trans_dim=weights["norm.weight"].shape[0],
                            depth=1 + max(int(k.split(".")[2]) for k in weights if k.startswith("blocks.blocks.")),
                            encoder_dims=weights["encoder.second_conv.3.weight"].shape[0])
    known = {f for f in asdict(config)}
    return PointMAEConfig(**{**asdict(config), **{k: v for k, v in (model_yaml or {}).items() if k in known}})


def official_yaml(config: PointMAEConfig, num_classes: int = 40) -> dict:
    """The ``model:`` section of the official fine-tuning config (``cfgs/finetune_modelnet.yaml``) for ``config``."""
    return {"NAME": "PointTransformer", "trans_dim": config.trans_dim, "depth": config.depth,
            "drop_path_rate": config.drop_path_rate, "cls_dim": num_classes, "num_heads": config.num_heads,
            "group_size": config.group_size, "num_group": config.num_group, "encoder_dims": config.encoder_dims}
