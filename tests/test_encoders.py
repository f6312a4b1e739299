"""The encoder registry, the one interface every family answers, checkpoints from before the registry, and the
field's released Point-MAE checkpoints in and out (Point-M2AE's own in tests/test_point_m2ae.py)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from train import load_encoder
from train.checkpoint import CheckpointError, encoder_record
from train.cli import app
from train.encoder_io import build_from, export_encoder
from train.models import create_encoder, encoder_from_record, list_encoders
from train.models.encoders import point_mae
from train.optim import no_decay_names

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TINY = [name for name in list_encoders() if name.endswith("-tiny")]


def _points(n: int = 256, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_the_registry_names_every_family_and_refuses_unknown_names():
    assert {"point-mae", "point-mae-tiny", "point-m2ae", "point-m2ae-tiny"} <= set(list_encoders())
    assert create_encoder("base").config == create_encoder("point-mae").config  # the first presets' names
    assert create_encoder("tiny").config == create_encoder("point-mae-tiny").config
    with pytest.raises(ValueError, match="unknown encoder 'pointnet'.*point-m2ae"):
        create_encoder("pointnet")
    with pytest.raises(ValueError, match="no setting depthh"):
        create_encoder("point-mae-tiny", depthh=3)


def test_point_mae_has_the_official_encoders_parameter_count():
    # Pang-Yatian/Point-MAE PointTransformer (cfgs/finetune_modelnet.yaml), cls_head_finetune excluded
    assert sum(p.numel() for p in create_encoder("point-mae").parameters()) == 21_825_792


@pytest.mark.parametrize("name", TINY)
def test_every_family_answers_the_same_interface(name):
    torch.manual_seed(0)
    encoder = create_encoder(name).eval()
    points = _points(512)
    patches = encoder.tokenize(points)
    g = encoder.num_tokens
    assert patches.centers.shape == (2, g, 3)
    full = encoder.encode(patches)
    assert full.tokens.shape == (2, g, encoder.token_dim) and full.global_feature.shape == (2, encoder.global_dim)
    torch.testing.assert_close(full.global_feature, encoder.pool(full.tokens, full.cls))
    tokens, glob = encoder(points)
    torch.testing.assert_close(tokens, full.tokens)
    torch.testing.assert_close(glob, full.global_feature)
    mask = encoder.random_mask(patches, encoder.default_mask_ratio)
    assert mask.shape == (2, g) and (mask.sum(1) == mask.sum(1)[0]).all() and 0 < int(mask.sum(1)[0]) < g
    seen = encoder.encode(patches, visible=~mask)
    kept = int((~mask).sum(1)[0])
    assert seen.tokens.shape == (2, kept, encoder.token_dim)
    torch.testing.assert_close(seen.centers, patches.centers[~mask].reshape(2, kept, 3))
    assert encoder.encode(patches, visible=torch.ones_like(mask)).tokens.shape == full.tokens.shape
    levels = encoder.forward_intermediates(patches)
    assert [lv.features.shape[-1] for lv in levels] == encoder.intermediate_dims
    if hasattr(encoder, "cls_token"):  # the segmentation models' sequence holds no cls token (Point-MAE, ACT)
        with torch.no_grad():
            encoder.cls_token.add_(1.0)
        torch.testing.assert_close(encoder.forward_intermediates(patches)[-1].features, levels[-1].features)
        with torch.no_grad():
            encoder.cls_token.sub_(1.0)
    assert all(lv.centers.shape[:2] == lv.features.shape[:2] for lv in levels)
    names = {n for n, _ in encoder.named_parameters()}
    assert encoder.no_weight_decay() <= names
    # a checkpoint's record rebuilds the same module
    rebuilt = encoder_from_record(json.loads(json.dumps(encoder.describe())))
    rebuilt.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(rebuilt.eval()(points)[1], glob)


def test_no_weight_decay_comes_from_the_modules_not_from_names():
    encoder = create_encoder("point-mae-tiny")
    wrapped = torch.nn.ModuleDict({"encoder": encoder})
    assert no_decay_names(wrapped) == {"encoder.cls_token", "encoder.cls_pos"}


# ---------------------------------------------------------------- checkpoints written before the registry


def test_a_checkpoint_from_before_the_registry_loads_as_point_mae_and_computes_what_it_did():
    # written by the code of commit fa6eb17 (a 1-step stage-1 run of a 16-dim Point-MAE; optimiser state dropped)
    state = torch.load(os.path.join(FIXTURES, "point_mae_stage1_v0.pt"), weights_only=True)
    assert "encoder" not in state and encoder_record(state)["name"] == "point-mae"
    expected = torch.load(os.path.join(FIXTURES, "point_mae_v0_features.pt"), weights_only=True)
    for path in ("point_mae_stage1_v0.pt", "point_mae_encoder_v0.safetensors"):
        encoder = load_encoder(os.path.join(FIXTURES, path))
        assert encoder.family == "point-mae" and encoder.token_dim == 16
        tokens, glob = encoder(expected["points"])
        torch.testing.assert_close(tokens, expected["tokens"], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(glob, expected["global"], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- the released Point-MAE checkpoints


def _official_finetune_state(encoder, classes: int = 40) -> dict:
    """A state with the key names, nesting and prefixes of Point-MAE's released fine-tuned files
    (``modelnet_1k.pth``, ``scan_hardest.pth``: DataParallel's ``module.``, a ``cls_head_finetune``)."""
    state = point_mae.to_official(encoder.state_dict())
    head = {"cls_head_finetune.0.weight": torch.randn(256, 2 * encoder.token_dim),
            "cls_head_finetune.8.weight": torch.randn(classes, 256)}
    return {"base_model": {f"module.{k}": v for k, v in {**state, **head}.items()}, "epoch": 299}


def _official_pretrain_state(encoder) -> dict:
    """Point-MAE's released ``pretrain.pth``: the encoder under ``MAE_encoder.`` without cls token and cls_pos,
    beside the decoder."""
    state = {f"MAE_encoder.{k}": v for k, v in point_mae.to_official(encoder.state_dict()).items()
             if k not in ("cls_token", "cls_pos")}
    state.update({"mask_token": torch.zeros(1, 1, encoder.token_dim),
                  "decoder_pos_embed.0.weight": torch.randn(128, 3),
                  "MAE_decoder.blocks.blocks.0.norm1.weight": torch.ones(encoder.token_dim),
                  "MAE_decoder.norm.weight": torch.ones(encoder.token_dim),
                  "increase_dim.0.weight": torch.randn(96, encoder.token_dim, 1)})
    return {"base_model": state}


def test_official_key_names_are_the_released_ones():
    names = set(point_mae.to_official(create_encoder("point-mae").state_dict()))
    for key in ("cls_token", "cls_pos", "encoder.first_conv.0.weight", "encoder.first_conv.1.running_mean",
                "encoder.second_conv.3.weight", "pos_embed.2.weight", "blocks.blocks.11.attn.qkv.weight",
                "blocks.blocks.0.mlp.fc1.weight", "blocks.blocks.0.mlp.fc2.bias", "norm.weight"):
        assert key in names, key
    assert "blocks.blocks.0.attn.qkv.bias" not in names  # qkv_bias=False, as the official blocks


def test_a_released_fine_tuned_checkpoint_loads_with_nothing_missing(tmp_path, capsys):
    torch.manual_seed(0)
    source = create_encoder("point-mae").eval()
    path = str(tmp_path / "modelnet_1k.pth")
    torch.save(_official_finetune_state(source), path)
    encoder, report = build_from(path)
    assert report["missing"] == [] and sorted(report["left_out"]) == ["cls_head_finetune.0.weight",
                                                                      "cls_head_finetune.8.weight"]
    points = _points(1024)
    torch.testing.assert_close(encoder.eval()(points)[1], source(points)[1], atol=0, rtol=0)
    load_encoder(path)
    assert "cls_head_finetune" in capsys.readouterr().err  # what was not used is said, not dropped silently


def test_a_released_pretraining_checkpoint_loads_and_says_what_it_lacks(tmp_path, capsys):
    torch.manual_seed(1)
    source = create_encoder("point-mae")
    path = str(tmp_path / "pretrain.pth")
    torch.save(_official_pretrain_state(source), path)
    encoder, report = build_from(path)
    assert sorted(report["missing"]) == ["cls_pos", "cls_token"]
    theirs = source.state_dict()
    for name, value in encoder.state_dict().items():
        if name not in ("cls_pos", "cls_token"):
            assert torch.equal(value, theirs[name]), name
    load_encoder(path)
    err = capsys.readouterr().err
    assert "kept as initialised: cls_token, cls_pos" in err and "MAE_decoder.* (2)" in err


def test_official_to_project_to_official_is_bit_exact(tmp_path):
    torch.manual_seed(2)
    released = _official_finetune_state(create_encoder("point-mae"))
    path, out = str(tmp_path / "scan_hardest.pth"), str(tmp_path / "back.pth")
    torch.save(released, path)
    result = CliRunner().invoke(app, ["export-encoder", path, "--format", "point-mae", "--out", out])
    assert result.exit_code == 0, result.output
    back = torch.load(out, weights_only=True)["base_model"]
    original = {k[len("module."):]: v for k, v in released["base_model"].items() if "cls_head" not in k}
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)
    import yaml

    with open(str(tmp_path / "back.yaml")) as f:
        model = yaml.safe_load(f)["model"]
    assert model["NAME"] == "PointTransformer" and model["trans_dim"] == 384 and model["depth"] == 12
    assert model["num_group"] == 64 and model["group_size"] == 32 and model["encoder_dims"] == 384


def test_a_project_checkpoint_exports_for_the_official_code_and_comes_back(tmp_path):
    torch.manual_seed(3)
    source = create_encoder("point-mae-tiny").eval()
    mine = str(tmp_path / "mine.safetensors")
    from safetensors.torch import save_file

    save_file(source.state_dict(), mine, metadata={"format": "teacher-cache/encoder",
                                                    "encoder": json.dumps(source.describe())})
    official = str(tmp_path / "official.pth")
    written = export_encoder(mine, official, "point-mae")
    assert written["format"] == "point-mae" and os.path.exists(written["yaml"])
    again, report = build_from(official)
    assert report["missing"] == [] and report["left_out"] == []
    points = _points()
    torch.testing.assert_close(again.eval()(points)[1], source(points)[1], atol=0, rtol=0)
    with pytest.raises(ValueError, match="exports as point-mae or safetensors"):
        export_encoder(mine, str(tmp_path / "x.pth"), "point-m2ae")


def test_files_that_are_no_encoder_fail_in_one_line(tmp_path):
    stray = str(tmp_path / "stray.pth")
    torch.save({"base_model": {"backbone.conv1.weight": torch.zeros(2, 2)}}, stray)
    with pytest.raises(CheckpointError, match="not a released Point-MAE .*Point-M2AE"):
        build_from(stray)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        build_from(str(text))
    with pytest.raises(FileNotFoundError):
        build_from(str(tmp_path / "absent.pth"))


# ---------------------------------------------------------------- the computation is the official one


def _official_point_mae_forward(state: dict, points: torch.Tensor, num_group: int, group_size: int,
                                num_heads: int) -> torch.Tensor:
    """Point-MAE's fine-tuning forward written out from the released state dict with plain tensor ops (eval
    mode): mini-PointNet -> [cls ; tokens] + [cls_pos ; pos_embed] before every block -> norm ->
    concat(cls, max over tokens). Grouping by the project's FPS + kNN (checked against brute force elsewhere)."""
    from train.ops import farthest_point_sample, knn

    def bn(x, p):  # eval BatchNorm1d over (B, C, N)
        return ((x - state[p + ".running_mean"][:, None]) / torch.sqrt(state[p + ".running_var"][:, None] + 1e-5)
                * state[p + ".weight"][:, None] + state[p + ".bias"][:, None])

    def conv(x, p):
        return torch.einsum("oc,bcn->bon", state[p + ".weight"][..., 0], x) + state[p + ".bias"][:, None]

    def lin(x, p, bias=True):
        y = x @ state[p + ".weight"].T
        return y + state[p + ".bias"] if bias else y

    b = points.shape[0]
    idx = farthest_point_sample(points, num_group)
    center = torch.stack([points[i, idx[i]] for i in range(b)])
    nn_idx = knn(center, points, group_size).idx
    groups = torch.stack([points[i][nn_idx[i]] for i in range(b)]) - center[:, :, None]    # (B, G, S, 3)
    x = groups.reshape(b * num_group, group_size, 3).transpose(1, 2)
    f = conv(F.relu(bn(conv(x, "encoder.first_conv.0"), "encoder.first_conv.1")), "encoder.first_conv.3")
    f = torch.cat([f.max(2, keepdim=True)[0].expand_as(f), f], 1)
    f = conv(F.relu(bn(conv(f, "encoder.second_conv.0"), "encoder.second_conv.1")), "encoder.second_conv.3")
    tokens = f.max(2)[0].reshape(b, num_group, -1)
    c = tokens.shape[-1]
    x = torch.cat([state["cls_token"].expand(b, -1, -1), tokens], 1)
    pos = torch.cat([state["cls_pos"].expand(b, -1, -1),
                     lin(F.gelu(lin(center, "pos_embed.0")), "pos_embed.2")], 1)
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("blocks.blocks."))
    for i in range(depth):
        p = f"blocks.blocks.{i}"
        x = x + pos
        h = F.layer_norm(x, (c,), state[p + ".norm1.weight"], state[p + ".norm1.bias"])
        q, k, v = lin(h, p + ".attn.qkv", bias=False).reshape(b, -1, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-2, -1)) * (c // num_heads) ** -0.5).softmax(-1)
        x = x + lin((att @ v).transpose(1, 2).reshape(b, -1, c), p + ".attn.proj")
        h = F.layer_norm(x, (c,), state[p + ".norm2.weight"], state[p + ".norm2.bias"])
        x = x + lin(F.gelu(lin(h, p + ".mlp.fc1")), p + ".mlp.fc2")
    x = F.layer_norm(x, (c,), state["norm.weight"], state["norm.bias"])
    return torch.cat([x[:, 0], x[:, 1:].max(1)[0]], -1)


def test_point_mae_computes_what_the_official_forward_computes():
    torch.manual_seed(4)
    encoder = create_encoder("point-mae", depth=4).eval()  # the official width and grouping, fewer blocks
    for m in encoder.modules():  # trained-looking BatchNorm statistics, so that eval BN is not an identity
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    official = point_mae.to_official(encoder.state_dict())
    points = _points(1024)
    expected = _official_point_mae_forward(official, points, 64, 32, 6)
    torch.testing.assert_close(encoder(points)[1], expected, atol=1e-4, rtol=1e-4)


def test_a_released_point_m2ae_pretraining_state_starts_a_fine_tuning_encoder_without_idle_norms(tmp_path):
    from train.models.encoders import point_m2ae

    torch.manual_seed(5)
    source = create_encoder("point-m2ae-tiny", scale_norms=True, local_attention=False)
    state = point_m2ae.to_official(source.state_dict(), kind="pretrain")
    state.update({"mask_token": torch.zeros(1, 1, 128), "h_decoder.norm.weight": torch.ones(64)})
    path = str(tmp_path / "pre-train.pth")
    torch.save({"base_model": state}, path)
    import yaml

    with open(str(tmp_path / "pre-train.yaml"), "w") as f:  # the tiny preset's 4 heads are no official default
        yaml.safe_dump({"model": point_m2ae.official_yaml(source.config, kind="pretrain")}, f)
    as_released, report = build_from(path)
    assert as_released.config.scale_norms and not as_released.config.local_attention and report["missing"] == []
    # the classification recipe has no use for the per-scale norms: left out (a parameter without a gradient
    # would stall DDP), said so, and the rest loaded
    tuned, report = build_from(path, "modelnet40")
    assert not tuned.config.scale_norms and tuned.config.local_attention and report["missing"] == []
    assert {"h_encoder.encoder_norms.0.weight", "h_encoder.encoder_norms.1.bias", "mask_token"} <= set(
        report["left_out"])
    theirs = source.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in tuned.state_dict().items())
