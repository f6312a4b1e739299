"""Point-M2AE encoder: shapes, the official parameter count and key names, masking, padding, local attention,
and an independent functional re-implementation (plain torch ops on the official-named state dict)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from train.models.encoders import create_encoder, encoder_from_record
from train.models.encoders import point_m2ae as m2ae

OFFICIAL_FINETUNE_PARAMETERS = 12_654_400  # Point_M2AE_ModelNet40 without cls_head_finetune


def seeded_points(b=3, n=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(b, n, 3, generator=g) * 2 - 1
    return pts / pts.norm(dim=-1).max()


def tiny(seed=0, **overrides):
    """The tiny preset with random BatchNorm statistics and LayerNorm affines (so no norm is the identity), eval."""
    torch.manual_seed(seed)
    enc = create_encoder("point-m2ae-tiny", **overrides)
    g = torch.Generator().manual_seed(seed + 1)
    for m in enc.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.LayerNorm)):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return enc.eval()


def assert_close(a, b, tol=1e-5, what=""):
    diff = (a - b).abs()
    where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
    assert diff.max() <= tol, f"{what}: max |diff| {diff.max():.3g} at {where}"


# ---- the official names and shapes, written down from the official classes (models/modules.py, Point_M2AE*.py) ----

def official_encoder_shapes(dims=(96, 192, 384), depths=(5, 5, 5), kind="finetune") -> dict[str, tuple]:
    """Parameter and buffer shapes of the official encoder: Token_Embed, encoder_pos_embeds, Encoder_Block, norm."""
    out = {}

    def conv(name, o, i):
        out[f"{name}.weight"], out[f"{name}.bias"] = (o, i, 1), (o,)

    def bn(name, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[f"{name}.{k}"] = (c,)
        out[f"{name}.num_batches_tracked"] = ()

    def ln(name, c):
        out[f"{name}.weight"], out[f"{name}.bias"] = (c,), (c,)

    for s, c in enumerate(dims):
        t = f"h_encoder.token_embed.{s}"
        i = 3 if s == 0 else dims[s - 1]
        a, b, m = (128, 256, 512) if s == 0 else (i, i, c)
        conv(f"{t}.first_conv.0", a, i), bn(f"{t}.first_conv.1", a), conv(f"{t}.first_conv.3", b, a)
        conv(f"{t}.second_conv.0", m, 2 * b), bn(f"{t}.second_conv.1", m), conv(f"{t}.second_conv.3", c, m)
        p = f"h_encoder.encoder_pos_embeds.{s}"
        out.update({f"{p}.0.weight": (c, 3), f"{p}.0.bias": (c,), f"{p}.2.weight": (c, c), f"{p}.2.bias": (c,)})
        for j in range(depths[s]):
            k = f"h_encoder.encoder_blocks.{s}.blocks.{j}"
            ln(f"{k}.norm1", c), ln(f"{k}.norm2", c)
            out.update({f"{k}.attn.qkv.weight": (3 * c, c), f"{k}.attn.proj.weight": (c, c),
                        f"{k}.attn.proj.bias": (c,),
                        f"{k}.mlp.fc1.weight": (4 * c, c), f"{k}.mlp.fc1.bias": (4 * c,),
                        f"{k}.mlp.fc2.weight": (c, 4 * c), f"{k}.mlp.fc2.bias": (c,)})
    if kind == "finetune":
        ln("norm", dims[-1])
    else:  # pre-training and segmentation: one LayerNorm per scale
        for s, c in enumerate(dims):
            ln(f"h_encoder.encoder_norms.{s}", c)
    return out


def is_buffer(name):
    return name.endswith(("running_mean", "running_var", "num_batches_tracked"))


def official_state(shapes, extra, seed=0, prefix="module."):
    g = torch.Generator().manual_seed(seed)
    state = {k: (torch.randint(0, 100, shape, generator=g) if k.endswith("num_batches_tracked")
                 else torch.randn(shape, generator=g)) for k, shape in {**shapes, **extra}.items()}
    return {"base_model": {prefix + k: v for k, v in state.items()}, "epoch": 299}


FINETUNE_HEAD = {"cls_head_finetune.0.weight": (256, 384), "cls_head_finetune.0.bias": (256,),
                 "cls_head_finetune.1.running_mean": (256,), "cls_head_finetune.8.weight": (40, 256)}
PRETRAIN_DECODER = {"mask_token": (1, 384), "h_decoder.0.blocks.0.attn.qkv.weight": (1152, 384),
                    "decoder_pos_embeds.1.2.weight": (192, 192), "token_prop.0.fuse.net.0.weight": (192, 576, 1),
                    "decoder_norm.weight": (192,), "rec_head.weight": (48, 192, 1)}


# ---- an independent functional re-implementation of the official forward (one cloud, no padding) ----

def ref_layer_norm(sd, name, x):
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def ref_token_embed(sd, name, x):
    """Official Token_Embed on x (M, K, C): Conv1d(k=1) = per-point matmul, BatchNorm1d with running stats."""
    def conv(n, h):
        return h @ sd[f"{name}.{n}.weight"][..., 0].T + sd[f"{name}.{n}.bias"]

    def bn(n, h):
        p = f"{name}.{n}"
        scale = sd[f"{p}.weight"] / torch.sqrt(sd[f"{p}.running_var"] + 1e-5)
        return (h - sd[f"{p}.running_mean"]) * scale + sd[f"{p}.bias"]

    h = conv("first_conv.3", torch.relu(bn("first_conv.1", conv("first_conv.0", x))))
    h = torch.cat([h.max(1, keepdim=True)[0].expand_as(h), h], -1)
    return conv("second_conv.3", torch.relu(bn("second_conv.1", conv("second_conv.0", h)))).max(1)[0]


def ref_block(sd, name, x, blocked, heads):
    """Official Block: additive -1e5 on blocked (N, N) pairs, softmax attention, erf GELU MLP."""
    n, c = x.shape
    qkv = (ref_layer_norm(sd, f"{name}.norm1", x) @ sd[f"{name}.attn.qkv.weight"].T).reshape(n, 3, heads, c // heads)
    q, k, v = qkv.permute(1, 2, 0, 3)                                           # (H, N, d) each
    attn = (q @ k.transpose(-1, -2)) * (c // heads) ** -0.5 + blocked.float() * -100000.0
    y = (attn.softmax(-1) @ v).transpose(0, 1).reshape(n, c)
    x = x + y @ sd[f"{name}.attn.proj.weight"].T + sd[f"{name}.attn.proj.bias"]
    h = ref_layer_norm(sd, f"{name}.norm2", x) @ sd[f"{name}.mlp.fc1.weight"].T + sd[f"{name}.mlp.fc1.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return x + h @ sd[f"{name}.mlp.fc2.weight"].T + sd[f"{name}.mlp.fc2.bias"]


def reference(enc, patches, b, visible=None):
    """Cloud ``b``: per scale the block outputs of the kept tokens (all, or the back-projected visible ones, by
    Python sets), computed on those tokens alone. Returns [(x (L, C), kept token ids)] per scale."""
    cfg, sd = enc.config, m2ae.to_official(enc.state_dict(), "segment")
    idxs = [i[b] for i in patches.scale_idx]
    n = len(cfg.encoder_dims)
    keep = [None] * n
    keep[-1] = list(range(cfg.num_groups[-1])) if visible is None else torch.nonzero(visible[b])[:, 0].tolist()
    for s in range(n - 1, 0, -1):
        keep[s - 1] = (sorted({int(j) for i in keep[s] for j in idxs[s][i]}) if visible is not None
                       else list(range(cfg.num_groups[s - 1])))
    out, full = [], None
    for s in range(n):
        t = f"h_encoder.token_embed.{s}"
        tokens = ref_token_embed(sd, t, patches.neighborhood[b] if s == 0 else full[idxs[s]])  # (G_s, C_s)
        ids = torch.tensor(keep[s])
        x, c = tokens[ids], patches.scale_centers[s][b][ids]
        d = torch.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
        local = cfg.local_attention and cfg.local_radius[s] > 0
        blocked = d >= cfg.local_radius[s] if local else torch.zeros_like(d, dtype=torch.bool)
        p = f"h_encoder.encoder_pos_embeds.{s}"
        pos = F.gelu(c @ sd[f"{p}.0.weight"].T + sd[f"{p}.0.bias"]) @ sd[f"{p}.2.weight"].T + sd[f"{p}.2.bias"]
        for j in range(cfg.encoder_depths[s]):
            x = ref_block(sd, f"h_encoder.encoder_blocks.{s}.blocks.{j}", x + pos, blocked, cfg.num_heads)
        full = tokens.clone()
        full[ids] = x
        out.append((x, ids))
    return out, sd


# ---- tests ----

def test_shapes_and_record():
    enc = tiny()
    pts = seeded_points(4)
    p = enc.tokenize(pts)
    assert p.centers.shape == (4, 16, 3) and p.centers is p.scale_centers[-1]
    assert p.neighborhood.shape == (4, 64, 16, 3)
    assert [tuple(c.shape) for c in p.scale_centers] == [(4, 64, 3), (4, 32, 3), (4, 16, 3)]
    assert [tuple(i.shape) for i in p.scale_idx] == [(4, 64, 16), (4, 32, 8), (4, 16, 8)]
    out = enc.encode(p)
    assert out.tokens.shape == (4, 16, 128) and out.cls is None and out.global_feature.shape == (4, enc.global_dim)
    mask = enc.random_mask(p, enc.default_mask_ratio)
    assert mask.shape == (4, 16) and (mask.sum(1) == int(0.8 * 16)).all()   # the official truncation: 12, not 13
    masked = enc.encode(p, ~mask)
    assert masked.tokens.shape == (4, 4, 128) and torch.equal(masked.centers, p.centers[~mask].reshape(4, 4, 3))
    levels = enc.forward_intermediates(p)
    assert [tuple(lv.features.shape) for lv in levels] == [(4, 64, 32), (4, 32, 64), (4, 16, 128)]
    assert enc.token_dim == 128 and enc.num_tokens == 16 and enc.global_dim == 128
    assert create_encoder("point-m2ae-tiny", global_pool="concat").global_dim == 256
    tokens, global_feature = enc(pts)
    assert torch.equal(tokens, out.tokens) and torch.equal(global_feature, out.global_feature)
    again = encoder_from_record(enc.describe())                 # tuples -> JSON-like lists -> tuples
    assert again.config == enc.config and isinstance(again.config.num_groups, tuple)
    with pytest.raises(ValueError, match="one entry per scale"):
        create_encoder("point-m2ae-tiny", encoder_depths=[1, 1])


@pytest.fixture(scope="module")
def official_size():
    return create_encoder("point-m2ae")


def test_official_parameter_count_and_names(official_size):
    enc = official_size
    shapes = official_encoder_shapes()
    official = sum(math.prod(s) for k, s in shapes.items() if not is_buffer(k))
    assert official == OFFICIAL_FINETUNE_PARAMETERS
    assert sum(p.numel() for p in enc.parameters()) == OFFICIAL_FINETUNE_PARAMETERS
    assert {k: tuple(v.shape) for k, v in enc.state_dict().items()} == shapes
    assert enc.config.local_attention and enc.config.global_pool == "mean+max" and enc.default_mask_ratio == 0.8
    rates = [b.drop_path.p for s in enc.h_encoder.encoder_blocks for b in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.1, 15).tolist())  # linear over all 15 blocks


def test_tokenize_nests_the_scales_and_takes_the_nearest():
    enc = tiny()
    pts = seeded_points(2)
    p = enc.tokenize(pts)
    src = pts
    for s, (c, idx) in enumerate(zip(p.scale_centers, p.scale_idx)):
        for b in range(2):
            d = ((c[b][:, None] - src[b][None]) ** 2).sum(-1).sqrt()               # (G_s, N_s)
            assert (d.min(1).values == 0).all()                                    # centres are points of src
            kth = d.sort(1).values[:, idx.shape[-1] - 1:idx.shape[-1]]
            assert (d.gather(1, idx[b]) <= kth + 1e-6).all()                       # the K nearest
        src = c
    assert_close(p.neighborhood, m2ae.gather_rows(pts, p.scale_idx[0]) - p.scale_centers[0][:, :, None], 0, "relative")


@pytest.mark.parametrize("local_attention", [True, False])
def test_matches_functional_reference_unmasked(local_attention):
    enc = tiny(local_attention=local_attention, scale_norms=True)
    p = enc.tokenize(seeded_points(2))
    with torch.no_grad():
        out, levels = enc.encode(p), enc.forward_intermediates(p)
        for b in range(2):
            scales, sd = reference(enc, p, b)
            tokens = ref_layer_norm(sd, "h_encoder.encoder_norms.2", scales[-1][0])
            assert_close(out.tokens[b], tokens, what="tokens")
            assert_close(out.global_feature[b], tokens.mean(0) + tokens.max(0)[0], what="global")
            for s, (x, _) in enumerate(scales):
                want = ref_layer_norm(sd, f"h_encoder.encoder_norms.{s}", x)
                assert_close(levels[s].features[b], want, what=f"level {s}")
                assert torch.equal(levels[s].centers[b], p.scale_centers[s][b])


@pytest.mark.parametrize("local_attention", [False, True])
def test_masked_encode_matches_reference_per_cloud(local_attention):
    """Batched, padded, masked encoding = each cloud computed alone on its own visible tokens, no padding."""
    enc = tiny(local_attention=local_attention)
    p = enc.tokenize(seeded_points(4))
    torch.manual_seed(1)
    visible = ~enc.random_mask(p, 0.75)
    with torch.no_grad():
        out = enc.encode(p, visible)
        lengths = [m.sum(1) for m in enc.back_project(p, visible)]
        assert any(len(set(n.tolist())) > 1 for n in lengths[:-1])              # the finer sets do vary in length
        for b in range(4):
            scales, sd = reference(enc, p, b, visible)
            want = ref_layer_norm(sd, "h_encoder.encoder_norms.2", scales[-1][0])
            assert_close(out.tokens[b], want, what=f"cloud {b}")
            assert all(torch.equal(ids, torch.nonzero(m[b])[:, 0]) for (_, ids), m in
                       zip(scales, enc.back_project(p, visible)))


def test_padding_does_not_change_results():
    enc = tiny()
    pts = seeded_points(4)
    p = enc.tokenize(pts)
    torch.manual_seed(2)
    visible = ~enc.random_mask(p, 0.8)
    with torch.no_grad():
        batched = enc.encode(p, visible).tokens
        for b in range(4):
            alone = enc.encode(enc.tokenize(pts[b:b + 1]), visible[b:b + 1]).tokens
            assert_close(batched[b], alone[0], what=f"cloud {b}")


def test_masked_patches_do_not_influence_visible_outputs():
    enc = tiny()
    p = enc.tokenize(seeded_points(2))
    torch.manual_seed(3)
    visible = ~enc.random_mask(p, 0.8)
    finest = enc.back_project(p, visible)[0]                                       # (B, G_0)
    with torch.no_grad():
        before = enc.encode(p, visible).tokens
        moved = torch.where(finest[:, :, None, None], p.neighborhood, torch.randn_like(p.neighborhood))
        after = enc.encode(m2ae.PointM2AEPatches(p.centers, moved, p.scale_centers, p.scale_idx), visible).tokens
        assert torch.equal(before, after)
        moved = torch.where(finest[:, :, None, None], torch.randn_like(p.neighborhood), p.neighborhood)
        after = enc.encode(m2ae.PointM2AEPatches(p.centers, moved, p.scale_centers, p.scale_idx), visible).tokens
        assert not torch.allclose(before, after)


def test_all_visible_back_projects_to_the_covered_tokens():
    """Officially a finer token is encoded in pre-training only if a coarser token has it among its kNN, even with
    nothing masked; with full coverage visible=all equals visible=None (the fine-tuning path)."""
    enc = tiny()
    p = enc.tokenize(seeded_points(2))
    ones = torch.ones(2, 16, dtype=torch.bool)
    for s, m in enumerate(enc.back_project(p, ones)[:-1]):
        covered = torch.zeros_like(m)
        for b in range(2):
            covered[b, p.scale_idx[s + 1][b].unique()] = True
        assert torch.equal(m, covered)
    full = tiny(num_groups=(64, 16, 8), group_sizes=(16, 64, 16))                  # every kNN covers everything
    q = full.tokenize(seeded_points(2))
    with torch.no_grad():
        assert_close(full.encode(q, torch.ones(2, 8, dtype=torch.bool)).tokens, full.encode(q).tokens)


def test_local_attention_stays_within_the_radius():
    enc = tiny()
    p = enc.tokenize(seeded_points(2))
    for s, r in enumerate(enc.config.local_radius):
        c = p.scale_centers[s]
        allowed = enc.allowed_attention(c, None, s)
        for b in range(2):
            for i in range(c.shape[1]):
                for j in range(c.shape[1]):
                    assert bool(allowed[b, i, j]) == (math.dist(c[b, i].tolist(), c[b, j].tolist()) < r)
    # the block honours it: output token i depends on input token j only if j is within the radius of i
    s, c = 0, p.scale_centers[0][:1]
    allowed = enc.allowed_attention(c, None, s)
    assert not allowed.all() and allowed.sum(-1).max() > 1
    block = enc.h_encoder.encoder_blocks[s].blocks[0]
    x = torch.randn(1, c.shape[1], enc.config.encoder_dims[s], requires_grad=True)
    for i in range(0, c.shape[1], 7):
        (g,) = torch.autograd.grad(block(x, allowed)[0, i].sum(), x)
        assert torch.equal(g[0].abs().sum(-1) > 0, allowed[0, i])


def test_official_batch_quirks():
    """Off by default; on, the two batch-dependent slips of the official pre-training are reproduced."""
    enc = tiny(local_attention=False)
    quirky = tiny(local_attention=False, official_batch_quirks=True)
    p = enc.tokenize(seeded_points(4))
    visible = torch.ones(4, 16, dtype=torch.bool)
    visible[:, :12] = False                                                        # token 0 masked everywhere
    sets, quirk_sets = enc.back_project(p, visible), quirky.back_project(p, visible)
    assert all(bool(q[0, 0]) for q in quirk_sets[:-1])                             # token 0 of cloud 0 only
    assert all(torch.equal(a[1:], q[1:]) and torch.equal(a[0, 1:], q[0, 1:]) for a, q in zip(sets, quirk_sets))
    # padding leak: a real token within the radius of the origin may attend to a padding slot (centre 0)
    centers = torch.tensor([[[0.1, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    valid = torch.tensor([[True, True, False]])
    assert enc.allowed_attention(centers, valid, 0)[0].tolist() == [[True, True, False], [True, True, False],
                                                                     [True, True, True]]
    assert quirky.allowed_attention(centers, valid, 0)[0, :2].tolist() == [[True, True, True], [True, True, False]]
    with torch.no_grad():
        assert not torch.allclose(enc.encode(p, visible).tokens, quirky.encode(p, visible).tokens)


def test_pool():
    tokens = torch.randn(2, 5, 128)
    assert_close(tiny().pool(tokens, None), tokens.mean(1) + tokens.max(1)[0], 0)
    assert_close(tiny(global_pool="concat").pool(tokens, None),
                 torch.cat([tokens.mean(1), tokens[:, 1:].max(1)[0]], -1), 0)    # official: token 0 not in the max


def test_no_weight_decay_is_the_official_token_rule():
    enc = tiny()
    official = {n for n, p in enc.named_parameters() if p.ndim == 1 or n.endswith(".bias") or "token" in n}
    ours = {n for n, p in enc.named_parameters() if p.ndim == 1 or n.endswith(".bias")} | enc.no_weight_decay()
    assert ours == official and all(n.startswith("h_encoder.token_embed.") for n in enc.no_weight_decay())


def test_finetune_checkpoint_round_trip(official_size):
    shapes = official_encoder_shapes()
    released = official_state(shapes, FINETUNE_HEAD)                               # {'base_model': module.*}
    assert m2ae.official_kind(released) == "finetune"
    ours, left = m2ae.from_official(released)
    assert sorted(left) == sorted(FINETUNE_HEAD)
    config = m2ae.config_from_official(released)
    assert config == m2ae.PointM2AEConfig()
    enc = official_size
    result = enc.load_state_dict(ours, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    back = m2ae.to_official(enc.state_dict())
    theirs = {k[len("module."):]: v for k, v in released["base_model"].items()}
    assert back.keys() == shapes.keys()
    assert all(torch.equal(back[k], theirs[k]) for k in back)


def test_pretrain_and_segment_checkpoints_round_trip():
    shapes = official_encoder_shapes(kind="pretrain")
    released = official_state(shapes, PRETRAIN_DECODER, prefix="")
    assert m2ae.official_kind(released) == "pretrain"
    ours, left = m2ae.from_official(released)
    assert sorted(left) == sorted(PRETRAIN_DECODER)
    config = m2ae.config_from_official(released)
    assert config.scale_norms and not config.local_attention                      # pre-training attends globally
    enc = create_encoder("point-m2ae", scale_norms=True, local_attention=False)
    result = enc.load_state_dict(ours, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    theirs = released["base_model"]
    for kind in ("pretrain", "segment"):
        back = m2ae.to_official(enc.state_dict(), kind)
        assert back.keys() == shapes.keys() and all(torch.equal(back[k], theirs[k]) for k in back)
    finetune = m2ae.to_official(enc.state_dict())                                 # what the fine-tuning code loads
    assert finetune.keys() == official_encoder_shapes().keys()
    assert torch.equal(finetune["norm.weight"], theirs["h_encoder.encoder_norms.2.weight"])
    segment = official_state(shapes, {"propagations.0.mlp_convs.0.weight": (1536, 99, 1)})
    assert m2ae.official_kind(segment) == "segment" and m2ae.config_from_official(segment).local_attention


def test_official_yaml():
    assert m2ae.official_yaml(m2ae.PointM2AEConfig()) == {
        "NAME": "Point_M2AE_ModelNet40", "smooth": 0.3, "group_sizes": [16, 8, 8], "num_groups": [512, 256, 64],
        "encoder_depths": [5, 5, 5], "encoder_dims": [96, 192, 384], "local_radius": [0.32, 0.64, 1.28],
        "drop_path_rate": 0.1, "num_heads": 6}
    scan = m2ae.official_yaml(m2ae.PointM2AEConfig(global_pool="concat", group_sizes=(32, 16, 16)))
    assert scan["NAME"] == "Point_M2AE_ScanObjectNN" and scan["group_sizes"] == [32, 16, 16]
    pre = m2ae.official_yaml(m2ae.PointM2AEConfig(), kind="pretrain")
    assert pre["NAME"] == "Point_M2AE" and pre["mask_ratio"] == 0.8 and pre["decoder_dims"] == [384, 192]
