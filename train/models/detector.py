"""3DETR (Misra et al. 2021) with the project's pre-trained point encoder in place of its own: the detector of the
paper's Table 7 (ScanNetV2, 18 axis-aligned classes).

    encoder tokens (B, G, C) at centres (B, G, 3)      Point-MAE / Point-M2AE on the whole scene
      -> encoder_to_decoder_projection                 MLP C -> 256 (BN, ReLU)
    queries: FPS of the token centres (256)            Fourier features of the scene-normalised xyz -> MLP
    8-layer pre-norm transformer decoder               self-attention, cross-attention to the tokens, FFN;
                                                       one shared LayerNorm on every layer's output
    per-layer heads (BN MLPs, dropout 0.3)             class (C+1: the last is "no object"), centre offset
                                                       (sigmoid - 0.5, in metres from the query), size
                                                       (sigmoid, a share of the scene's extent)

This follows 3DETR's ``models/model_3detr.py``, ``transformer.py``, ``position_embedding.py`` and ``helpers.py``
layer for layer. What differs: the encoder (3DETR's is a PointNet++ set abstraction of 2,048 points, radius 0.2,
64 samples, then 3 transformer layers; ours groups the scene with the encoder family's own tokenizer, see the
``detect`` recipes), and the angle heads, which are left out: ScanNet's boxes have no heading and 3DETR multiplies
its one-bin angle prediction by 0 (it still trains that head's residual towards 0 with a Huber loss of weight
0.5, a term that reaches the decoder; it goes with the head). Under DDP 3DETR converts the BatchNorms to
SyncBatchNorm; here each process normalises its own batch (8 rooms at the recipe's size, 3DETR's single-GPU batch).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from train.models.encoders import PointEncoder
from train.ops.geometry import farthest_point_sample

OUTPUT_KEYS = ("sem_cls_logits", "center_normalized", "center_unnormalized", "size_normalized",
               "size_unnormalized", "objectness_prob", "sem_cls_prob")


def conv_mlp(input_dim: int, hidden_dims: list[int], output_dim: int, *, norm: bool = True,
             dropout: float | None = None, hidden_bias: bool = False, output_bias: bool = True,
             output_norm: bool = False, output_activation: bool = False) -> nn.Sequential:
    """3DETR's ``GenericMLP`` with ``use_conv``: 1x1 convolutions over (B, C, N), BatchNorm and ReLU per hidden
    layer, then dropout."""
    layers: list[nn.Module] = []
    prev = input_dim
    for width in hidden_dims:
        layers += [nn.Conv1d(prev, width, 1, bias=hidden_bias)]
        layers += [nn.BatchNorm1d(width)] if norm else []
        layers += [nn.ReLU()]
        layers += [nn.Dropout(dropout)] if dropout is not None else []
        prev = width
    layers += [nn.Conv1d(prev, output_dim, 1, bias=output_bias)]
    layers += [nn.BatchNorm1d(output_dim)] if output_norm else []
    layers += [nn.ReLU()] if output_activation else []
    return nn.Sequential(*layers)


def normalize_to_scene(xyz: torch.Tensor, dims_min: torch.Tensor, dims_max: torch.Tensor) -> torch.Tensor:
    """xyz (B, N, 3) mapped so the scene's bounds (B, 3) become [0, 1] (3DETR's ``shift_scale_points``)."""
    return (xyz - dims_min[:, None]) / (dims_max - dims_min)[:, None]


class FourierPositionEmbedding(nn.Module):
    """Random Fourier features of scene-normalised coordinates (Tancik et al. 2020; 3DETR's ``fourier``):
    ``[sin, cos](2 pi x' B)`` with a fixed Gaussian B (3, d/2)."""

    def __init__(self, dim: int, gauss_scale: float = 1.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"Fourier features need an even width, got {dim}")
        self.register_buffer("gauss_B", torch.randn(3, dim // 2) * gauss_scale)

    @torch.no_grad()
    def forward(self, xyz: torch.Tensor, dims_min: torch.Tensor, dims_max: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) float32 features of xyz (B, N, 3), in float32 under autocast too: phases reach tens of
        radians, where bfloat16 steps are a tenth of one."""
        with torch.autocast(xyz.device.type, enabled=False):
            scene = normalize_to_scene(xyz.float(), dims_min.float(), dims_max.float())
            projected = (scene * (2 * math.pi)) @ self.gauss_B
            return torch.cat([projected.sin(), projected.cos()], dim=-1)


class DecoderLayer(nn.Module):
    """3DETR's pre-norm ``TransformerDecoderLayer``: positions are added to queries and keys, never to values."""

    def __init__(self, dim: int = 256, heads: int = 4, ffn_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.linear1, self.linear2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.activation = nn.ReLU()

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor
                ) -> torch.Tensor:
        x = self.norm1(tgt)
        q = x + query_pos
        tgt = tgt + self.dropout1(self.self_attn(q, q, x, need_weights=False)[0])
        x = self.norm2(tgt)
        tgt = tgt + self.dropout2(self.cross_attn(x + query_pos, memory + pos, memory, need_weights=False)[0])
        x = self.norm3(tgt)
        return tgt + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TransformerDecoder(nn.Module):
    """A stack of :class:`DecoderLayer` returning every layer's output through one shared final LayerNorm
    (3DETR's ``return_intermediate``); its weight matrices start Xavier-uniform, as 3DETR's."""

    def __init__(self, num_layers: int = 8, dim: int = 256, heads: int = 4, ffn_dim: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor
                ) -> list[torch.Tensor]:
        out = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos)
            out.append(self.norm(tgt))
        return out


class Detector(nn.Module):
    """A point encoder with 3DETR's decoder and box heads. ``forward(points)`` returns 3DETR's
    ``{"outputs": last layer, "aux_outputs": [earlier layers]}``, each a dict of :data:`OUTPUT_KEYS`."""

    def __init__(self, encoder: PointEncoder, num_classes: int, num_queries: int = 256, dec_layers: int = 8,
                 dec_dim: int = 256, dec_heads: int = 4, dec_ffn_dim: int = 256, dec_dropout: float = 0.1,
                 mlp_dropout: float = 0.3) -> None:
        super().__init__()
        self.encoder, self.num_classes, self.num_queries = encoder, num_classes, num_queries
        self.config = {"num_classes": num_classes, "num_queries": num_queries, "dec_layers": dec_layers,
                       "dec_dim": dec_dim, "dec_heads": dec_heads, "dec_ffn_dim": dec_ffn_dim,
                       "dec_dropout": dec_dropout, "mlp_dropout": mlp_dropout}
        enc_dim = encoder.token_dim
        self.encoder_to_decoder_projection = conv_mlp(enc_dim, [enc_dim, enc_dim], dec_dim, output_bias=False,
                                                      output_norm=True, output_activation=True)
        self.pos_embedding = FourierPositionEmbedding(dec_dim)
        self.query_projection = conv_mlp(dec_dim, [dec_dim], dec_dim, norm=False, hidden_bias=True,
                                         output_activation=True)
        self.decoder = TransformerDecoder(dec_layers, dec_dim, dec_heads, dec_ffn_dim, dec_dropout)
        head = dict(hidden_dims=[dec_dim, dec_dim], dropout=mlp_dropout)
        self.mlp_heads = nn.ModuleDict({"sem_cls_head": conv_mlp(dec_dim, output_dim=num_classes + 1, **head),
                                        "center_head": conv_mlp(dec_dim, output_dim=3, **head),
                                        "size_head": conv_mlp(dec_dim, output_dim=3, **head)})

    def hyperparameters(self) -> dict:
        """What rebuilds the decoder and heads (with the encoder's ``describe()``)."""
        return dict(self.config)

    def query_points(self, centers: torch.Tensor) -> torch.Tensor:
        """(B, Q, 3) queries: farthest point sampling of the token centres from the first (3DETR's FPS)."""
        idx = farthest_point_sample(centers.detach().float(), min(self.num_queries, centers.shape[1]))
        return centers.gather(1, idx.unsqueeze(-1).expand(-1, -1, 3))

    def forward(self, points: torch.Tensor) -> dict:
        """points (B, N, 3) in metres; the scene's bounds are those of its points, as 3DETR's dataset gives them.

        The encoder reads the points about the centre of their bounds (ScanNet's aligned rooms are near the origin
        already; S3DIS and the demo rooms sit metres away), so its position embedding sees the same range
        wherever a dataset puts its rooms; boxes come back in the input's coordinates."""
        dims_min, dims_max = points.amin(dim=1), points.amax(dim=1)
        origin = ((dims_min + dims_max) / 2).unsqueeze(1)  # the encoder sees the scene about its centre
        encoded = self.encoder.encode(self.encoder.tokenize(points - origin))
        centers = encoded.centers.float() + origin
        memory = self.encoder_to_decoder_projection(encoded.tokens.transpose(1, 2)).transpose(1, 2)
        query_xyz = self.query_points(centers)
        query_pos = self.query_projection(self.pos_embedding(query_xyz, dims_min, dims_max).transpose(1, 2))
        query_pos = query_pos.transpose(1, 2)
        pos = self.pos_embedding(centers, dims_min, dims_max)
        layers = self.decoder(torch.zeros_like(query_pos, dtype=torch.float32), memory, pos, query_pos)
        outputs = self.box_predictions(torch.stack(layers), query_xyz, dims_min, dims_max)
        return {"outputs": outputs[-1], "aux_outputs": outputs[:-1]}

    def box_predictions(self, features: torch.Tensor, query_xyz: torch.Tensor, dims_min: torch.Tensor,
                        dims_max: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Every decoder layer's boxes from its features (L, B, Q, C) (3DETR's ``get_box_predictions`` and
        ``BoxProcessor``). The heads run once over the L x B stacked layers, as 3DETR's, so their BatchNorms
        normalise every layer with the same statistics, in training and in evaluation."""
        num_layers, b, q, c = features.shape
        x = features.reshape(num_layers * b, q, c).transpose(1, 2)

        def head(name: str) -> torch.Tensor:
            return self.mlp_heads[name](x).transpose(1, 2).float().reshape(num_layers, b, q, -1)

        cls_logits, center_offset, size_normalized = head("sem_cls_head"), head("center_head"), head("size_head")
        center_offset, size_normalized = center_offset.sigmoid() - 0.5, size_normalized.sigmoid()
        scene_scale = (dims_max - dims_min).clamp(min=0.1)[:, None]
        with torch.no_grad():  # only matching and evaluation read these
            prob = cls_logits.softmax(dim=-1)
        out = []
        for i in range(num_layers):
            center_unnormalized = query_xyz + center_offset[i]
            out.append({"sem_cls_logits": cls_logits[i],
                        "center_normalized": normalize_to_scene(center_unnormalized, dims_min, dims_max),
                        "center_unnormalized": center_unnormalized,
                        "size_normalized": size_normalized[i],
                        "size_unnormalized": size_normalized[i] * scene_scale,
                        "objectness_prob": 1 - prob[i, ..., -1],
                        "sem_cls_prob": prob[i, ..., :-1]})
        return out


def predicted_boxes(layer: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, Q, 6) centre-size boxes of one layer's outputs."""
    return torch.cat([layer["center_unnormalized"], layer["size_unnormalized"]], dim=-1)
