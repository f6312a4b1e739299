"""The building blocks both encoder families (and the stage-2 decoders) are made of, as Point-MAE's and
Point-M2AE's reference code define them: the mini-PointNet token embedding, timm-style pre-norm transformer
blocks with the positional embedding added before every block, stochastic depth, and the weight init."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pointwise(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``net`` (Conv1d(k=1), BatchNorm1d, ReLU, Conv1d(k=1)) on channels-last x (M, K, C): the same function as
    ``net(x.transpose(1, 2)).transpose(1, 2)`` (BatchNorm over M and K), with matrix products, which a CPU runs
    several times faster than 1x1 convolutions (backward above all)."""
    conv1, bn, act, conv2 = net
    m, k, _ = x.shape
    x = F.linear(x, conv1.weight[..., 0], conv1.bias)                                # (M, K, a)
    x = act(bn(x.reshape(m * k, -1))).reshape(m, k, -1)
    return F.linear(x, conv2.weight[..., 0], conv2.bias)


class MiniPointNet(nn.Module):
    """One token per group: conv-BN-ReLU-conv, max over the group, [max ; per-member], conv-BN-ReLU-conv, max.

    Point-MAE's ``Encoder`` and Point-M2AE's scale-0 ``Token_Embed`` (on points: ``points=True``, widths 128, 256
    | 512, 512); Point-M2AE's token merging at coarser scales (``points=False``: in, in | 2 in, out)."""

    def __init__(self, in_c: int, out_c: int, points: bool = True) -> None:
        super().__init__()
        a, b, c = (128, 256, 512) if points else (in_c, in_c, out_c)
        self.first_conv = nn.Sequential(nn.Conv1d(in_c, a, 1), nn.BatchNorm1d(a), nn.ReLU(inplace=True),
                                        nn.Conv1d(a, b, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(2 * b, c, 1), nn.BatchNorm1d(c), nn.ReLU(inplace=True),
                                         nn.Conv1d(c, out_c, 1))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        """groups (B, G, K, C_in) -> tokens (B, G, C_out)."""
        b, g, k, c = groups.shape
        x = pointwise(self.first_conv, groups.reshape(b * g, k, c))                  # (BG, K, b)
        x = torch.cat([x.max(dim=1, keepdim=True)[0].expand(-1, k, -1), x], -1)     # (BG, K, 2b)
        x = pointwise(self.second_conv, x).max(dim=1)[0]                             # (BG, out)
        return x.reshape(b, g, -1)


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's ``DropPath``)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep.div_(1 - self.p)  # scale the (B, 1, 1) mask, not the activations


class Attention(nn.Module):
    """Multi-head self-attention, qkv without bias (both references set ``qkv_bias=False``)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """``allowed`` (B, N, N) bool, True = the query may attend to the key (Point-M2AE's additive -1e5 on the
        rest gives those keys exactly zero weight in float32; a boolean mask does the same in any precision)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        mask = None if allowed is None else allowed.unsqueeze(1)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                 # (B, H, N, C/H)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, drop_path: float, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), allowed))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic depth rising linearly from 0 to ``rate`` over ``depth`` blocks (both references)."""
    return [r.item() for r in torch.linspace(0, rate, depth)]


class TransformerEncoder(nn.Module):
    """Blocks with the positional embedding added before every block (Point-MAE's ``TransformerEncoder``,
    Point-M2AE's ``Encoder_Block``); one drop-path rate per block."""

    def __init__(self, dim: int, num_heads: int, rates: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, r) for r in rates)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos, allowed)
        return x

    def forward_layers(self, x: torch.Tensor, pos: torch.Tensor, fetch: list[int]) -> list[torch.Tensor]:
        """The outputs of the blocks numbered in ``fetch`` (Point-MAE's part segmentation reads three depths)."""
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x + pos)
            if i in fetch:
                out.append(x)
        return out


def init_weights(m: nn.Module, conv: bool = True) -> None:
    """Both references' ``_init_weights``: truncated normal (std 0.02) for linear and 1x1 conv weights, zero
    biases, unit LayerNorms. ``conv=False`` leaves 1x1 convs at PyTorch's default (see Point-MAE's encoder)."""
    if isinstance(m, nn.Linear) or (conv and isinstance(m, nn.Conv1d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
