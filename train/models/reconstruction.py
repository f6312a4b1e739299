"""Point-M2AE's masked point reconstruction: the hierarchical decoder (Zhang et al., 2022, Section 3.3), as the
reference implementation (ZrrSkywalker/Point-M2AE, ``Point_M2AE``) computes it. Parameter names are the official
ones, so a state maps onto the official pre-training model's decoder (``rec_head`` is a Conv1d there: ``[..., None]``).

    encoder.encode_levels(patches, visible)   per scale: visible tokens (normed), ids, padding, back-projected masks
    stage 0 (coarsest scale, G_2 tokens):  x = [visible tokens ; mask tokens], centres [visible ; masked]
                                           x = h_decoder[0](x, decoder_pos_embeds[0](centres))
    stage i (scale S-1-i, all G_s tokens in index order):
        skip = zeros (B, G_s, C_s), the scale's visible encoder tokens at their slots       (the skip connection)
        x = token_prop[i-1](centres_s, previous centres, skip, x)  3-NN interpolation, [skip ; x], conv-BN-GELU,
                                                                   residual blocks            (B, G_s, C_s)
        x = h_decoder[i](x, decoder_pos_embeds[i](centres_s))
    x = decoder_norm(x); prediction = rec_head(x at the scale's masked tokens) -> (L, K_0, 3)
    target = the scale's neighbourhoods of those tokens, relative to their centres -> (L, K_s, 3)
    loss = Chamfer-L2 (train.ops.chamfer_distance, the official ChamferDistanceL2 formula; K_0 != K_s is fine)

Officially two stages: the decoder stops at scale 1 and predicts 16 points (``3 * group_sizes[0]``) for each masked
scale-1 token, whose target is the 8 scale-0 centres around it. Each stage is as wide as the encoder's scale
(the official ``decoder_dims`` [384, 192] are ``encoder_dims`` reversed), since the skip is concatenated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.models.encoders.base import MaskedLevel, split_visible_masked
from train.models.encoders.point_m2ae import gather_rows
from train.models.layers import TransformerEncoder, drop_path_rates
from train.ops import three_nn_interpolate


def _conv_bn(c_in: int, c_out: int, act: bool) -> nn.Sequential:
    """1x1 Conv1d + BatchNorm1d (+ GELU), on channels-first (B, C, N)."""
    return nn.Sequential(nn.Conv1d(c_in, c_out, 1), nn.BatchNorm1d(c_out), *([nn.GELU()] if act else []))


class ConvBNGELU(nn.Module):
    """The official ``ConvBNReLU1D`` (whose activation is a GELU): ``net`` = conv-BN-GELU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.net = _conv_bn(c_in, c_out, act=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualBlock(nn.Module):
    """The official ``ConvBNReLURes1D`` (groups 1, expansion 1): GELU(net2(net1(x)) + x)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.net1, self.net2 = _conv_bn(c, c, act=True), _conv_bn(c, c, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.net2(self.net1(x)) + x)


class Extraction(nn.Module):
    """The official ``PosExtraction``: ``operation`` = residual blocks in sequence."""

    def __init__(self, c: int, blocks: int) -> None:
        super().__init__()
        self.operation = nn.Sequential(*(ResidualBlock(c) for _ in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.operation(x)


class FeaturePropagation(nn.Module):
    """The official ``PointNetFeaturePropagation``: coarse features interpolated to finer centres (3 nearest,
    inverse squared distance), concatenated after the fine ``skip`` features, fused and refined."""

    def __init__(self, in_c: int, out_c: int, blocks: int = 1) -> None:
        super().__init__()
        self.fuse = ConvBNGELU(in_c, out_c)
        self.extraction = Extraction(out_c, blocks)

    def forward(self, xyz_fine: torch.Tensor, xyz_coarse: torch.Tensor, skip: torch.Tensor | None,
                coarse: torch.Tensor) -> torch.Tensor:
        """xyz_fine (B, N, 3), xyz_coarse (B, S, 3), skip (B, N, C1) or None, coarse (B, S, C2) -> (B, N, out_c)
        with ``in_c`` = C1 + C2."""
        x = three_nn_interpolate(xyz_fine, xyz_coarse, coarse)                     # (B, N, C2)
        if skip is not None:
            x = torch.cat([skip, x.to(skip.dtype)], dim=-1)                        # (B, N, C1 + C2)
        return self.extraction(self.fuse(x.transpose(1, 2))).transpose(1, 2)


def xavier_linears(module: nn.Module) -> None:
    """The references' decoder init (``TransformerDecoder`` / ``Decoder_Block``): xavier-uniform Linear weights,
    zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class HierarchicalDecoder(nn.Module):
    """Point-M2AE's decoder for a hierarchical ``encoder`` (module docstring): ``stages`` decoder stages from the
    coarsest scale down, ``depth`` blocks each (drop path rising to ``drop_path`` over all of them), ``up_blocks``
    residual blocks in each token propagation. It reconstructs at scale ``self.scale`` = S - ``stages``."""

    def __init__(self, encoder: nn.Module, depth: int = 1, up_blocks: int = 1, drop_path: float = 0.1,
                 stages: int = 2) -> None:
        super().__init__()
        cfg = encoder.config
        n = len(cfg.encoder_dims)
        if not 1 <= stages <= n:
            raise ValueError(f"the hierarchical decoder has 1 to {n} stages (one per encoder scale), got {stages}")
        if depth < 1 or up_blocks < 1:
            raise ValueError(f"decoder depth and up blocks must be positive, got {depth} and {up_blocks}")
        dims = list(cfg.encoder_dims[::-1][:stages])
        self.scale = n - stages
        self.points_per_token = cfg.group_sizes[0]  # officially 16: the scale-0 group size
        self.mask_token = nn.Parameter(torch.zeros(1, dims[0]))
        rates = drop_path_rates(drop_path, depth * stages)
        self.h_decoder = nn.ModuleList(TransformerEncoder(c, cfg.num_heads, rates[i * depth:(i + 1) * depth])
                                       for i, c in enumerate(dims))
        self.decoder_pos_embeds = nn.ModuleList(nn.Sequential(nn.Linear(3, c), nn.GELU(), nn.Linear(c, c))
                                                for c in dims)
        self.token_prop = nn.ModuleList(FeaturePropagation(dims[i] + dims[i - 1], dims[i], up_blocks)
                                        for i in range(1, stages))
        self.decoder_norm = nn.LayerNorm(dims[-1])
        self.rec_head = nn.Linear(dims[-1], 3 * self.points_per_token)  # the official Conv1d(k=1)
        # as the official model: xavier in the decoder blocks, PyTorch's default elsewhere
        xavier_linears(self.h_decoder)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """The official optimiser skips every name with 'token' in it: the mask token and all of ``token_prop``."""
        return {name for name, _ in self.named_parameters() if "token" in name}

    def forward(self, levels: list[MaskedLevel], patches) -> tuple[torch.Tensor, torch.Tensor]:
        """``levels``: :meth:`encode_levels`'s, finest first; ``patches``: the encoder's grouping. Returns the
        prediction (L, K_0, 3) and the target (L, K_scale, 3), L = the masked tokens of scale ``self.scale`` over
        the batch, in row-major (cloud, token) order."""
        coarsest = levels[-1]
        b, g = coarsest.masked.shape
        vis = coarsest.tokens.shape[1]  # the same number per cloud: never padded
        slots = split_visible_masked(coarsest.masked)                                   # (B, G) [visible ; masked]
        centers = gather_rows(patches.scale_centers[-1], slots)                         # (B, G, 3)
        x = torch.cat([coarsest.tokens, self.mask_token.expand(b, g - vis, -1).to(coarsest.tokens.dtype)], dim=1)
        x = self.h_decoder[0](x, self.decoder_pos_embeds[0](centers))
        if len(self.h_decoder) == 1:  # reconstructing at the coarsest scale: the slots back in token order
            x = torch.empty_like(x).scatter(1, slots.unsqueeze(-1).expand_as(x), x)
        for i in range(1, len(self.h_decoder)):
            s = len(levels) - 1 - i
            level, fine = levels[s], patches.scale_centers[s]                           # fine (B, G_s, 3)
            skip = x.new_zeros(*level.masked.shape, level.tokens.shape[-1], dtype=level.tokens.dtype)
            rows = torch.ones_like(level.ids, dtype=torch.bool) if level.valid is None else level.valid
            batch = torch.arange(b, device=x.device).unsqueeze(1).expand_as(level.ids)
            skip = skip.index_put((batch[rows], level.ids[rows]), level.tokens[rows])   # (B, G_s, C_s), 0 if masked
            x = self.token_prop[i - 1](fine, centers, skip, x)
            x = self.h_decoder[i](x, self.decoder_pos_embeds[i](fine))
            centers = fine
        x = self.decoder_norm(x)
        masked = levels[self.scale].masked                                               # (B, G_scale)
        prediction = self.rec_head(x[masked]).reshape(-1, self.points_per_token, 3)      # (L, K_0, 3)
        target = patches.neighbourhood_at(self.scale)[masked]                            # (L, K_scale, 3)
        return prediction, target

