"""The encoder families' own masked point reconstruction (target "points"): Point-MAE's patches and Point-M2AE's
hierarchical decoder, against brute-force loops of what the official code computes (Chamfer-L2, FPS + kNN
targets, back-projected masks, the scale-1 target, feature propagation), and its use from stage-2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import typer

from train.cli import app
from train.models import create_encoder
from train.models.masked_distillation import MaskedDistillation, MaskedDistillationConfig
from train.models.reconstruction import FeaturePropagation
from train.models.student import Student
from train.ops import chamfer_distance
from train.ops.reference import chamfer_naive, fps_naive, knn_naive

POINTS = {"shuffle": False, "local": False, "use_global": False, "target": "points"}


def _model(name: str, ratio: float, **cfg) -> MaskedDistillation:
    torch.manual_seed(0)
    encoder = create_encoder(name, "mae")
    return MaskedDistillation(Student(encoder, {}), MaskedDistillationConfig(ratio, **{**POINTS, **cfg}),
                              encoder.token_dim, encoder.global_dim)


def _mask(batch: int, tokens: int, ratio: float, seed: int = 0) -> torch.Tensor:
    order = torch.rand(batch, tokens, generator=torch.Generator().manual_seed(seed)).argsort(dim=1)
    return order < int(ratio * tokens)


def _same_set(a: torch.Tensor, b: torch.Tensor) -> None:
    """Two (K, 3) point sets equal up to order (random coordinates: no ties)."""
    torch.testing.assert_close(a[a[:, 0].argsort()], b[b[:, 0].argsort()])


def test_chamfer_with_unequal_counts_is_the_official_l2_formula():
    torch.manual_seed(0)
    pred, truth = torch.randn(5, 16, 3), torch.randn(5, 8, 3)
    # ChamferDistanceL2: mean over all (l, i) of the squared distance to the nearest point of the same row,
    # plus the same from the other side
    dist1 = [min(float(((p - q) ** 2).sum()) for q in truth[l]) for l in range(5) for p in pred[l]]
    dist2 = [min(float(((q - p) ** 2).sum()) for p in pred[l]) for l in range(5) for q in truth[l]]
    official = sum(dist1) / len(dist1) + sum(dist2) / len(dist2)
    for use_pytorch3d in (True, False):
        assert abs(float(chamfer_distance(pred, truth, use_pytorch3d=use_pytorch3d)) - official) < 1e-5
    assert abs(float(chamfer_naive(pred, truth)) - official) < 1e-5


def test_point_mae_reconstructs_each_masked_patch_of_fps_and_knn_with_the_official_decoder():
    model = _model("point-mae-tiny", 0.6, decoder_depth=4, decoder_drop_path=0.1).eval()
    encoder = model.student.encoder
    assert not hasattr(encoder, "cls_token") and encoder.global_dim == encoder.token_dim  # the pre-training model
    assert [b.drop_path.p for b in model.local_decoder.blocks] == pytest.approx([0, 0.1 / 3, 0.2 / 3, 0.1])
    fc1 = model.local_decoder.blocks[0].mlp.fc1.weight.detach()     # xavier-uniform: up to sqrt(6 / fans)
    bound = (6 / sum(fc1.shape)) ** 0.5
    assert 0.9 * bound < float(fc1.abs().max()) <= bound
    torch.manual_seed(1)
    points = torch.rand(2, 40, 3)  # few points: the brute-force FPS is a Python loop
    patches = encoder.tokenize(points)
    mask = _mask(2, 32, 0.6)
    assert (mask.sum(1) == 19).all()  # int(0.6 * 32), the official truncation
    out = model(patches, None, None, mask=mask, details=True)
    pred, truth = out["points_prediction"], out["points_target"]
    assert pred.shape == truth.shape == (38, 32, 3)
    centres = fps_naive(points, 32)
    row = 0
    for b in range(2):
        for g in torch.nonzero(mask[b]).flatten().tolist():              # masked patches, in index order
            c = points[b, centres[b, g]]
            near = knn_naive(c.view(1, 1, 3), points[b:b + 1], 32)[0, 0]
            _same_set(truth[row], points[b, near] - c)
            # prediction row `row` is the decoder slot whose position is that same patch's centre
            vis = int((~mask[b]).sum())
            slot = vis + int(mask[b, :g].sum())
            torch.testing.assert_close(out["pos_centres"][b, slot], c)
            assert row == b * 19 + slot - vis
            row += 1
    torch.testing.assert_close(out["points"].detach(), chamfer_naive(pred.detach(), truth))


def _m2ae(ratio: float = 0.8):
    model = _model("point-m2ae-tiny", ratio, decoder_depth=1, decoder_drop_path=0.1, up_blocks=1).eval()
    torch.manual_seed(2)
    points = torch.rand(2, 128, 3)
    patches = model.student.encoder.tokenize(points)
    return model, patches, _mask(2, 16, ratio, seed=3)


def test_point_m2ae_back_projects_and_reconstructs_scale_one_at_the_official_sizes():
    model, patches, mask = _m2ae()
    encoder, decoder = model.student.encoder, model.hierarchical
    assert encoder.config.scale_norms and not encoder.config.local_attention  # the "mae" recipe
    assert decoder.scale == 1
    out = model(patches, None, None, mask=mask, details=True)
    c0, c1, c2 = patches.scale_centers
    # brute-force back-projection: a finer token is visible iff it is among the kNN of a visible coarser one
    visible1 = torch.zeros(2, 32, dtype=torch.bool)
    visible0 = torch.zeros(2, 64, dtype=torch.bool)
    near1, near0 = knn_naive(c2, c1, 8), knn_naive(c1, c0, 8)
    for b in range(2):
        for i in range(16):
            if not mask[b, i]:
                visible1[b, near1[b, i]] = True
        for j in range(32):
            if visible1[b, j]:
                visible0[b, near0[b, j]] = True
    levels = out["levels"]
    assert torch.equal(levels[2].masked, mask)
    assert torch.equal(levels[1].masked, ~visible1) and torch.equal(levels[0].masked, ~visible0)
    # the target: the 8 scale-0 centres around each masked scale-1 centre, relative to it; 16 points predicted
    pred, truth = out["points_prediction"], out["points_target"]
    assert pred.shape == (int((~visible1).sum()), 16, 3) and truth.shape == (int((~visible1).sum()), 8, 3)
    row = 0
    for b in range(2):
        for j in torch.nonzero(~visible1[b]).flatten().tolist():
            _same_set(truth[row], c0[b, near0[b, j]] - c1[b, j])
            row += 1
    torch.testing.assert_close(out["points"].detach(), chamfer_naive(pred.detach(), truth))


def test_point_m2ae_skip_is_the_visible_tokens_and_masked_points_reach_nothing():
    model, patches, mask = _m2ae()
    seen = {}
    model.hierarchical.token_prop[0].register_forward_hook(lambda m, args, out: seen.update(skip=args[2].detach()))
    out = model(patches, None, None, mask=mask, details=True)
    level = out["levels"][1]
    skip = seen["skip"]                                                   # (B, G_1, C_1)
    assert skip.shape == (2, 32, 64) and torch.count_nonzero(skip[level.masked]) == 0
    for b in range(2):
        real = level.ids[b][level.valid[b]]
        torch.testing.assert_close(skip[b, real], level.tokens[b][level.valid[b]])
    # the encoder never sees masked scale-0 patches: moving their points changes neither prediction nor target
    moved = patches.neighborhood.clone()
    hidden = out["levels"][0].masked
    moved[hidden] += 0.3
    patches_moved = type(patches)(patches.centers, moved, patches.scale_centers, patches.scale_idx)
    again = model(patches_moved, None, None, mask=mask, details=True)
    torch.testing.assert_close(again["points_prediction"], out["points_prediction"])
    torch.testing.assert_close(again["points"], out["points"])
    moved[~hidden] += 0.3                                                 # and moving the visible ones does
    other = model(type(patches)(patches.centers, moved, patches.scale_centers, patches.scale_idx), None, None,
                  mask=mask, details=True)
    assert not torch.allclose(other["points_prediction"], out["points_prediction"])


def test_unread_scale_norms_are_frozen_and_every_trained_parameter_gets_a_gradient():
    model, patches, mask = _m2ae()
    norms = model.student.encoder.h_encoder.encoder_norms
    assert not norms[0].weight.requires_grad and not norms[0].bias.requires_grad
    assert norms[1].weight.requires_grad
    model.train()
    model(patches, None, None, mask=mask)["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []  # so DDP needs no search for unused parameters


def test_feature_propagation_is_the_official_computation():
    torch.manual_seed(4)
    fp = FeaturePropagation(6 + 5, 7, blocks=2).train()
    fine, coarse_xyz = torch.rand(2, 10, 3), torch.rand(2, 4, 3)
    skip, coarse = torch.randn(2, 10, 6), torch.randn(2, 4, 5)
    # written out as PointNetFeaturePropagation: 3 nearest by squared distance, weights 1 / (d^2 + 1e-8)
    # normalised, [skip ; interpolated], conv-BN-GELU, then per block GELU(BN(conv(GELU(BN(conv x)))) + x)
    d = ((fine[:, :, None] - coarse_xyz[:, None]) ** 2).sum(-1)           # (B, N, S)
    dist, idx = d.sort(dim=-1)
    w = 1.0 / (dist[..., :3] + 1e-8)
    w = w / w.sum(-1, keepdim=True)
    inter = torch.stack([(coarse[b][idx[b, :, :3]] * w[b, ..., None]).sum(1) for b in range(2)])
    x = torch.cat([skip, inter], -1).transpose(1, 2)                      # (B, C, N)

    def conv_bn(seq, x):
        conv, bn = seq[0], seq[1]
        x = F.conv1d(x, conv.weight, conv.bias)
        return F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)

    x = F.gelu(conv_bn(fp.fuse.net, x))
    for block in fp.extraction.operation:
        x = F.gelu(conv_bn(block.net2, F.gelu(conv_bn(block.net1, x))) + x)
    torch.testing.assert_close(fp(fine, coarse_xyz, skip, coarse), x.transpose(1, 2))


def test_local_target_points_replaces_the_feature_loss_and_both_flag_names_set_it():
    encoder = create_encoder("point-m2ae-tiny", "pretrain")
    torch.manual_seed(5)
    points = torch.rand(2, 128, 3)
    patches = encoder.tokenize(points)
    mask = _mask(2, 16, 0.8, seed=6)
    taught = encoder.encode(patches)
    losses = {}
    for target in ("features", "points"):
        torch.manual_seed(0)
        model = MaskedDistillation(Student(encoder, {}), MaskedDistillationConfig(0.8, False, use_global=False,
                                                                                    target=target),
                                   encoder.token_dim, encoder.global_dim).eval()
        losses[target] = model(patches, taught.tokens, taught.global_feature, mask=mask)
    assert "local" in losses["features"] and "points" not in losses["features"]
    assert "points" in losses["points"] and "local" not in losses["points"]
    assert abs(float((losses["points"]["total"] - losses["features"]["total"]).detach())) > 1e-3
    stage2 = typer.main.get_command(app).commands["stage2"]
    for flag in ("--local-target", "--target"):
        ctx = stage2.make_context("stage2", ["--cache", "c", "--teacher", "t.pt", "--out", "o", flag, "points"])
        assert ctx.params["target"] == "points"


def test_a_cls_less_point_mae_loads_into_the_fine_tuning_encoder_with_a_fresh_cls_token(tmp_path):
    import json

    from safetensors.torch import save_file

    from train.encoder_io import FORMAT, build_from, describe_load

    encoder = create_encoder("point-mae-tiny", "mae")
    assert encoder.describe()["config"]["cls_token"] is False and encoder.no_weight_decay() == set()
    path = str(tmp_path / "mae.safetensors")
    save_file(encoder.state_dict(), path, metadata={"format": FORMAT, "encoder": json.dumps(encoder.describe())})
    tuned, report = build_from(path, "modelnet40")
    assert tuned.config.cls_token and tuned.global_dim == 2 * tuned.token_dim
    assert sorted(report["missing"]) == ["cls_pos", "cls_token"] and report["left_out"] == []
    assert "kept as initialised: cls_token, cls_pos" in describe_load(path, report)
    same, report = build_from(path)  # no recipe: the encoder as trained
    assert not same.config.cls_token and report["missing"] == []
    points = torch.rand(2, 64, 3)
    torch.testing.assert_close(same.eval()(points)[1], encoder.eval()(points)[1])
