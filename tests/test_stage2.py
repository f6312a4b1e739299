"""Stage-2: token shuffling and its targets, positions after the shuffle, the global decoder's input,
masking, the frozen teacher, exported features, exact resume and evaluation of its checkpoints
(torchrun: tests/test_ddp.py)."""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train.models.encoders.point_mae import PointMAEConfig, PointMAEEncoder, PointMAEPatches
from train.models.masked_distillation import (
    MaskedDistillation,
    MaskedDistillationConfig,
    random_mask,
    split_visible_masked,
)
from train.models.student import Student
from train.ops.reference import chamfer_naive

SMALL = PointMAEConfig(trans_dim=32, depth=1, num_heads=2, num_group=8, group_size=4, encoder_dims=32,
                       drop_path_rate=0.0)


def _setup(**cfg):
    torch.manual_seed(0)
    student = Student(PointMAEEncoder(SMALL), {"t": 8})
    model = MaskedDistillation(student, MaskedDistillationConfig(**cfg), token_dim=16, global_dim=64).eval()
    points = torch.randn(2, 64, 3)
    patches = student.encoder.tokenize(points)
    teacher_tokens = torch.randn(2, 8, 16)   # every token its own random feature: a mix-up cannot match
    teacher_global = torch.randn(2, 64)
    mask = torch.tensor([[1, 0, 1, 1, 0, 1, 0, 1], [0, 1, 1, 0, 1, 1, 1, 0]], dtype=torch.bool)  # 5 of 8
    return model, patches, patches.centers, teacher_tokens, teacher_global, mask


def _capture(module):
    seen = {}
    module.register_forward_hook(lambda m, args, out: seen.update(x=args[0].detach(), pos=args[1].detach()))
    return seen


def test_the_jigsaw_shuffles_content_while_positions_and_targets_stay_in_token_order():
    model, patches, center, tt, tg, mask = _setup()
    perm = torch.stack([torch.randperm(8, generator=torch.Generator().manual_seed(s)) for s in (1, 2)])
    seen = _capture(model.local_decoder)
    out = model(patches, tt, tg, mask=mask, perm=perm, details=True)
    ids = out["token_ids"]
    np.testing.assert_array_equal(ids.numpy(), split_visible_masked(mask).numpy())  # slots keep token order
    for b in range(2):
        vis_ids = torch.nonzero(~mask[b]).flatten().tolist()
        for i in range(8):
            g = int(ids[b, i])
            torch.testing.assert_close(out["local_target"][b, i], tt[b, g])     # target = slot i's own token
            torch.testing.assert_close(out["pos_centres"][b, i], center[b, g])  # position = slot i's own centre
            moved = int(ids[b, int(perm[b, i])])                                 # content = another slot's token
            expected_in = out["visible"][b, vis_ids.index(moved)] if moved in vis_ids else model.mask_token[0, 0]
            torch.testing.assert_close(out["decoder_input"][b, i], expected_in)
    visible_slots = (~mask).sum(1)
    assert any(int(perm[b, i]) != i for b in range(2) for i in range(int(visible_slots[b])))  # content did move
    # positions are added after the shuffle, in the unshuffled order
    torch.testing.assert_close(seen["x"], out["decoder_input"])
    torch.testing.assert_close(seen["pos"], model.decoder_pos_embed(center.gather(1, ids[..., None].expand(-1, -1, 3))))
    by_hand = (1 - F.cosine_similarity(out["local_prediction"], torch.gather(tt, 1, ids[..., None].expand(-1, -1, 16)),
                                       dim=-1)).mean()
    torch.testing.assert_close(out["local"], by_hand)


def test_shuffling_tokens_with_positions_and_targets_is_a_no_op_but_the_jigsaw_is_not():
    model, patches, center, tt, tg, mask = _setup(use_global=False)
    model.requires_grad_(False)
    perm = torch.stack([torch.randperm(8, generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    identity = torch.arange(8).expand(2, 8)
    plain = model(patches, tt, tg, mask=mask, perm=identity, details=True)
    x, ids = plain["decoder_input"], plain["token_ids"]

    def loss_of(content, slot_ids):  # the local term for given decoder content and per-slot token ids
        pos = model.decoder_pos_embed(center.gather(1, slot_ids[..., None].expand(-1, -1, 3)))
        y = model.local_head(model.local_norm(model.local_decoder(content, pos)))
        target = tt.gather(1, slot_ids[..., None].expand(-1, -1, tt.shape[-1]))
        return (1 - F.cosine_similarity(y, target, dim=-1)).mean()

    torch.testing.assert_close(loss_of(x, ids), plain["local"])
    # the old scheme: tokens, their positions and their targets permuted together -> the same loss
    together = loss_of(x.gather(1, perm[..., None].expand_as(x)), ids.gather(1, perm))
    assert abs(float(together - plain["local"])) < 1e-6
    # the jigsaw: only the content moves -> a different loss
    jigsaw = model(patches, tt, tg, mask=mask, perm=perm)["local"]
    torch.testing.assert_close(jigsaw, loss_of(x.gather(1, perm[..., None].expand_as(x)), ids))
    assert abs(float(jigsaw - plain["local"])) > 1e-3
    # and so does --no-shuffle against shuffling: the ablation measures something
    off = MaskedDistillation(model.student, MaskedDistillationConfig(shuffle=False, use_global=False), 16, 64).eval()
    off.load_state_dict(model.state_dict())
    torch.testing.assert_close(off(patches, tt, tg, mask=mask)["local"], plain["local"])


def test_without_shuffling_the_order_is_visible_then_masked():
    model, patches, center, tt, tg, mask = _setup(shuffle=False)
    out = model(patches, tt, tg, mask=mask, details=True)
    expected = torch.stack([torch.cat([torch.nonzero(~m).flatten(), torch.nonzero(m).flatten()]) for m in mask])
    np.testing.assert_array_equal(out["token_ids"].numpy(), expected.numpy())


def test_the_global_decoder_sees_only_visible_tokens_without_positions():
    model, patches, center, tt, tg, mask = _setup()
    seen = _capture(model.global_decoder)
    out = model(patches, tt, tg, mask=mask, details=True)
    assert seen["x"].shape == (2, 1 + 3, 32)                    # the cls token and 3 visible of 8 patches
    torch.testing.assert_close(seen["x"], out["global_input"])
    assert torch.count_nonzero(seen["pos"]) == 0
    # cls and tokens are what the encoder gives for the visible patches alone
    encoded = model.student.encoder.encode(patches, visible=~mask)
    torch.testing.assert_close(seen["x"][:, 1:], encoded.tokens)
    torch.testing.assert_close(seen["x"][:, 0], encoded.cls)
    # so moving the masked patches' points changes nothing the global decoder sees
    moved = patches.neighborhood.clone()
    moved[mask] += torch.randn_like(moved[mask])
    seen_before = seen["x"]
    model(PointMAEPatches(center, moved), tt, tg, mask=mask)
    torch.testing.assert_close(seen["x"], seen_before)


def test_mask_ratio_is_respected():
    m = random_mask(16, 64, 0.6)
    assert m.shape == (16, 64) and (m.sum(1) == 38).all()
    assert not torch.equal(m[0], m[1])
    with pytest.raises(ValueError, match="masks 64 of 64"):
        random_mask(1, 64, 1.0)


def test_points_target_reconstructs_the_masked_patches():
    model, patches, center, tt, tg, mask = _setup(target="points", use_global=False)
    nb = patches.neighborhood
    out = model(patches, None, None, mask=mask, details=True)
    assert {"points", "total"} <= set(out) and "local" not in out and "global" not in out
    # the loss is the Chamfer distance of each masked patch's prediction to that patch's own points
    pred, truth = out["points_prediction"], nb[mask]                  # (B*Gm, K, 3) each, in the same order
    assert pred.shape == truth.shape == (10, 4, 3)
    torch.testing.assert_close(out["points"].detach(), chamfer_naive(pred.detach(), truth))
    # the encoder never sees the masked points, so moving them moves only the target, and the loss with it
    moved = nb.clone()
    moved[mask] += 0.5
    out_moved = model(PointMAEPatches(center, moved), None, None, mask=mask, details=True)
    torch.testing.assert_close(out_moved["points_prediction"], pred)
    assert not torch.allclose(out_moved["points"], out["points"])
    out["total"].backward()
    assert model.student.encoder.pos_embed[0].weight.grad is not None


# ---------------------------------------------------------------- runs on a real cache


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def test_teacher_gets_no_gradient_and_stays_in_eval_mode(small_demo_cache, stage1_ckpt, tmp_path):
    from train.loop import run
    from train.stages.stage2 import Stage2Config, Stage2Task

    cfg = Stage2Config(cache=small_demo_cache, out=str(tmp_path / "s2"), teacher=stage1_ckpt, steps=2, batch_size=4,
                       num_points=128, workers=0)
    task = Stage2Task(cfg)
    before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    metrics = run(cfg, task, progress=False)
    assert metrics["loss/local"] > 0 and metrics["loss/global"] > 0
    assert not task.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in task.teacher.parameters())
    for k, v in task.teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])
    with pytest.raises(RuntimeError, match="frozen"):
        task.teacher.train()
    # the stage-1 encoder learns at a tenth of the new decoders' rate (both on the same schedule)
    state = torch.load(os.path.join(cfg.out, "last.pt"), weights_only=True)
    groups = state["optimizer"]["param_groups"]
    encoder = [g for g in groups if g["names"][0].startswith("student.")]
    decoders = [g for g in groups if not g["names"][0].startswith("student.")]
    assert all(all(n.startswith("student.") == g["names"][0].startswith("student.") for n in g["names"])
               for g in groups)
    assert all(g["lr"] == pytest.approx(0.1 * d["lr"]) for g in encoder for d in decoders) and decoders[0]["lr"] > 0
    assert sum(len(g["params"]) for g in encoder) == sum(p.requires_grad for p in task.module.student.parameters())
    assert Stage2Config(cache=cfg.cache, out=cfg.out, init="random").encoder_lr_scale == 1.0  # nothing to protect
    # the student did move away from its stage-1 initialisation
    state = torch.load(os.path.join(cfg.out, "last.pt"), weights_only=True)
    s1 = torch.load(stage1_ckpt, weights_only=True)
    assert not torch.equal(state["model"]["encoder.pos_embed.0.weight"], s1["model"]["encoder.pos_embed.0.weight"])
    torch.testing.assert_close(state["model"]["heads.clip-tiny.proj.weight"], s1["model"]["heads.clip-tiny.proj.weight"])


def test_exported_teacher_features_equal_on_the_fly_ones(small_demo_cache, stage1_ckpt, tmp_path):
    from torch.utils.data import DataLoader

    from cache_schema import open_cache
    from cache_schema.validate import validate
    from train.data.objects import ObjectStream
    from train.export_teacher import export_teacher
    from train.stages.stage2 import Stage2Config, Stage2Task

    url = str(tmp_path / "cache.zarr")
    shutil.copytree(small_demo_cache, url)
    message = export_teacher(stage1_ckpt, url, num_points=128, progress=False)
    task = Stage2Task(Stage2Config(cache=url, out=str(tmp_path / "x"), teacher=stage1_ckpt, teacher_source="cache",
                                   num_points=128))
    assert task.teacher_name in message and task.teacher_name in open_cache(url).teachers
    assert validate(url) == []
    stream = ObjectStream(url, task.stream_config())
    stream.set_position(0, 0, 8)
    batch = next(iter(DataLoader(stream, batch_size=None)))
    taught = task.teacher(task.teacher.encoder.tokenize(batch["points"]))
    tokens, glob = taught.tokens, taught.global_feature
    torch.testing.assert_close(batch[f"{task.teacher_name}/tokens"], tokens, atol=2e-2, rtol=1e-2)  # float16 store
    torch.testing.assert_close(batch[f"{task.teacher_name}/global"], glob, atol=2e-2, rtol=1e-2)
    assert "already has" in export_teacher(stage1_ckpt, url, num_points=128, progress=False)


def test_stage2_resumes_exactly_and_its_checkpoint_evaluates(small_demo_cache, stage1_ckpt, tmp_path):
    from cache_schema import open_cache
    from train.eval import frozen
    from train.stages.stage2 import Stage2Config, train_stage2

    common = dict(cache=small_demo_cache, teacher=stage1_ckpt, steps=4, batch_size=4, num_points=128, workers=0,
                  log_every=1, warmup_steps=1, ckpt_every=2)
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    train_stage2(Stage2Config(out=full, **common), progress=False)
    train_stage2(Stage2Config(out=part, **common), progress=False, stop_at=2)
    train_stage2(Stage2Config(out=part, **common), resume=True, progress=False)
    a = [float(r["loss/total"]) for r in _metrics(full)]
    b = [float(r["loss/total"]) for r in _metrics(part)]
    assert len(a) == len(b) == 4
    np.testing.assert_allclose(b, a, rtol=1e-5)
    cache = open_cache(small_demo_cache)
    student = frozen.load_student(os.path.join(full, "last.pt"), cache)
    assert 0 <= frozen.linear_probe(student, cache, num_points=128)["accuracy"] <= 1
    assert frozen.zeroshot(student, cache, num_points=128)["num_classes"] == 10


def test_stage2_refuses_bad_settings(small_demo_cache, stage1_ckpt, tmp_path):
    from train.stages.stage2 import Stage2Config, train_stage2

    base = dict(cache=small_demo_cache, out=str(tmp_path / "r"), steps=1, batch_size=4, num_points=128, workers=0)
    with pytest.raises(ValueError, match="needs --teacher"):
        train_stage2(Stage2Config(**base), progress=False)
    with pytest.raises(ValueError, match="nothing to learn"):
        train_stage2(Stage2Config(teacher=stage1_ckpt, local=False, use_global=False, **base), progress=False)
    with pytest.raises(ValueError, match="--local-target points replaces the local term, which --no-local"):
        train_stage2(Stage2Config(teacher=stage1_ckpt, local=False, target="points", **base), progress=False)
    with pytest.raises(ValueError, match="export-teacher"):
        train_stage2(Stage2Config(teacher=stage1_ckpt, teacher_source="cache", **base), progress=False)
