"""Precision, numerics and the optimiser: CPU bf16 agrees with fp32, exact sums stay fp32 under autocast,
no weight decay on biases / norms / tokens / temperatures, temperatures bounded as parameters, and
neighbours stay exact at LiDAR coordinates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from train.losses import MultiTeacherLoss
from train.models.encoders.point_mae import PointMAEConfig, PointMAEEncoder
from train.models.fusion import mean_pair_features
from train.models.lidar_backbone import TokenMixing
from train.models.student import Student
from train.ops import knn
from train.ops.reference import knn_naive
from train.optim import MAX_LOGIT_SCALE, clamp_logit_scales, decays, param_groups
from train.precision import resolve_precision
from train.stages.stage1 import Stage1Objective

SMALL = PointMAEConfig(trans_dim=32, depth=2, num_heads=2, num_group=16, group_size=8, encoder_dims=32,
                       drop_path_rate=0.0)


def _objective() -> Stage1Objective:
    torch.manual_seed(0)
    return Stage1Objective(Student(PointMAEEncoder(SMALL), {"t": 16}), MultiTeacherLoss({"t/text": 1.0, "t/image": 1.0}),
                           {"t/text": "t", "t/image": "t"})


def test_auto_precision_is_fp32_on_a_cpu_and_names_are_checked():
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="--precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_cpu_bf16_gives_the_fp32_loss_and_gradient_within_tolerance():
    objective = _objective()
    g = torch.Generator().manual_seed(1)
    points = torch.randn(8, 256, 3, generator=g)
    targets = {"t/text": torch.randn(8, 16, generator=g), "t/image": torch.randn(8, 16, generator=g)}
    results = {}
    for name in ("fp32", "bf16"):
        objective.zero_grad()
        with resolve_precision(name, torch.device("cpu")).autocast():
            loss = objective(points, targets)["total"]
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in objective.parameters() if p.grad is not None])
        results[name] = (float(loss.detach()), grad)
    (l32, g32), (l16, g16) = results["fp32"], results["bf16"]
    assert l16 == pytest.approx(l32, rel=2e-2)
    assert F.cosine_similarity(g32, g16, dim=0) > 0.98


def test_scatter_means_stay_exact_under_bf16_autocast():
    # 1,000 points in one cell: a bf16 count would stop at 256 and the mean would be ~4x too large
    values = torch.rand(1000, 4).bfloat16()
    mean, _ = mean_pair_features(1, torch.zeros(1000, dtype=torch.long), values)
    torch.testing.assert_close(mean.float()[0], values.float().mean(0), rtol=1e-2, atol=1e-2)
    mixing = TokenMixing(8).eval()
    x = torch.rand(1000, 8)
    cell = torch.zeros(1000, dtype=torch.long)
    reference = mixing(x, cell, 1, (4, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = mixing(x.bfloat16(), cell, 1, (4, 4))
    torch.testing.assert_close(low.float(), reference, rtol=5e-2, atol=5e-2)


def test_no_weight_decay_on_biases_norms_tokens_positions_and_temperatures():
    objective = _objective()
    groups = param_groups(objective, lr=1e-3, weight_decay=0.05)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    kept = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    for name in ("student.encoder.cls_token", "student.encoder.cls_pos", "loss_fn.logit_scales.t__text",
                 "student.encoder.norm.weight", "student.encoder.norm.bias"):
        assert name in kept, name
    assert "student.encoder.pos_embed.0.weight" in decayed  # a Linear weight of the position MLP, as Point-MAE
    assert all(p.ndim >= 2 for n, p in objective.named_parameters() if n in decayed)
    assert decayed | kept == {n for n, _ in objective.named_parameters()} and not decayed & kept
    assert not decays("mask_token", torch.zeros(1, 1, 4), {"mask_token"}) and decays("w", torch.zeros(1, 1, 4))


def test_temperature_is_bounded_after_the_step_and_keeps_its_gradient_at_the_bound():
    objective = _objective()
    scale = objective.loss_fn.logit_scales["t__text"]
    with torch.no_grad():
        scale.fill_(MAX_LOGIT_SCALE)
    g = torch.Generator().manual_seed(2)
    losses = objective(torch.randn(8, 256, 3, generator=g), {"t/text": torch.randn(8, 16, generator=g),
                                                           "t/image": torch.randn(8, 16, generator=g)})
    losses["total"].backward()
    assert scale.grad is not None and scale.grad.abs() > 0  # a clamp in forward would give exactly 0 here
    with torch.no_grad():
        scale.fill_(10.0)
        objective.loss_fn.logit_scales["t__image"].fill_(-1.0)
    clamp_logit_scales(objective)
    assert float(scale.detach()) == pytest.approx(math.log(100))
    assert float(objective.loss_fn.logit_scales["t__image"].detach()) == 0.0


def test_knn_is_exact_at_lidar_coordinates():
    # a 2 m patch 50 m from the sensor: the |x|^2 + |y|^2 - 2xy form swaps neighbours here
    g = torch.Generator().manual_seed(0)
    points = torch.rand(1, 2048, 3, generator=g) * 2.0 + torch.tensor([40.0, -35.0, 1.0])
    query = points[:, :256]
    found = knn(query, points, 8, use_pytorch3d=False)
    brute = ((query.double()[:, :, None] - points.double()[:, None]) ** 2).sum(-1)  # float64, by broadcasting
    ref_idx = brute.topk(8, largest=False).indices
    assert torch.equal(knn_naive(query[:, :4].double(), points.double(), 8), ref_idx[:, :4])  # the same reference
    assert torch.equal(found.idx.sort(-1).values, ref_idx.sort(-1).values)
    matmul = torch.cdist(query, points).topk(8, largest=False).indices  # what the default cdist would give
    assert not torch.equal(matmul.sort(-1).values, ref_idx.sort(-1).values)
