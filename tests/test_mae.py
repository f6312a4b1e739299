"""`train mae`: the baselines' own masked point reconstruction, each family's official recipe, no teacher."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch
from typer.testing import CliRunner

from train.cli import app
from train.loop import lr_at
from train.stages.mae import MAE_RECIPES, MaeConfig, MaeTask

FAST = ["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "8", "--num-points", "128", "--workers", "0",
        "--no-progress"]


def test_recipes_are_the_official_configs():
    pm = MaeConfig(cache="c", out="o", model="point-mae").resolved()
    assert (pm.mask_ratio, pm.decoder_depth, pm.decoder_drop_path, pm.num_points, pm.lr, pm.weight_decay,
            pm.epochs, pm.cosine_epochs, pm.warmup_epochs, pm.grad_clip, pm.augmentation) == \
        (0.6, 4, 0.1, 1024, 1e-3, 0.05, 300, 300, 10, 0.0, "scale-translate")
    m2 = MaeConfig(cache="c", out="o", model="point-m2ae").resolved()
    assert (m2.mask_ratio, m2.decoder_depth, m2.up_blocks, m2.num_points, m2.epochs, m2.cosine_epochs) == \
        (0.8, 1, 1, 2048, 300, 400)
    assert MaeConfig(cache="c", out="o", model="point-mae", mask_ratio=0.75).resolved().mask_ratio == 0.75
    assert set(MAE_RECIPES) == {"point-mae", "point-m2ae"}


def test_the_cut_cosine_of_point_m2ae():
    """The official Point-M2AE schedule: a cosine set for 400 epochs, stopped at 300 (lr never reaches 0)."""
    m2 = MaeConfig(cache="c", out="o", model="point-m2ae").resolved()
    cfg = MaeTask(m2).schedule(m2, batches_per_epoch=10)
    assert (cfg.steps, cfg.warmup_steps, cfg.cosine_steps) == (3000, 100, 4000)
    # timm's CosineLRScheduler (warmup_prefix False, t_in_epochs): cos over t / t_initial from t = 0; written out
    # per epoch here (the official steps once per epoch, we once per step: equal at epoch boundaries)
    for epoch in (10, 150, 299):
        official = 0.5 * (1 + math.cos(math.pi * epoch / 400))
        assert lr_at(epoch * 10, cfg) == pytest.approx(official)
    assert lr_at(cfg.steps - 1, cfg) > 0.14  # never reaches 0: cut at 300 of 400 epochs
    assert lr_at(5, cfg) == pytest.approx(6 / 100)  # linear warm-up over 10 epochs


@pytest.mark.parametrize("model", ["point-mae-tiny", "point-m2ae-tiny"])
def test_train_mae_then_finetune_from_it(small_demo_cache, tmp_path, model):
    out = str(tmp_path / "mae")
    r = CliRunner().invoke(app, ["mae", "--cache", small_demo_cache, "--out", out, "--model", model, *FAST])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(os.path.join(out, "metrics.csv"))))
    assert "loss/chamfer" in rows[0] and all(float(x["loss/chamfer"]) > 0 for x in rows)
    state = torch.load(os.path.join(out, "last.pt"), weights_only=False)
    assert state["stage"] == "mae" and state["heads"] == {}
    decoders = " ".join(state["decoders"])
    assert ("hierarchical.token_prop" in decoders) == (model == "point-m2ae-tiny")
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["config"]["grad_clip"] == 0.0 and config["reconstruction"] in ("patches", "hierarchical")
    if model == "point-mae-tiny":  # the official pre-training encoder has no cls token
        assert config["encoder"]["config"]["cls_token"] is False
        assert not any("cls" in k for k in state["model"])
    # fine-tuning starts from exactly the pre-trained encoder
    ft = str(tmp_path / "ft")
    r = CliRunner().invoke(app, ["finetune", "--cache", small_demo_cache, "--init", os.path.join(out, "last.pt"),
                                 "--out", ft, "--stop-at", "1", *FAST])
    assert r.exit_code == 0, r.output
    from train.encoder_io import start_from

    encoder = start_from(os.path.join(out, "last.pt"), "--init", "modelnet40").state_dict()
    trained = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
    assert trained and all(torch.equal(encoder[k], v) for k, v in trained.items() if k in encoder)
    # only what the fine-tuning encoder has no use for is left out: Point-M2AE's per-scale norms
    assert {k for k in trained if k not in encoder} == {k for k in trained if "encoder_norms" in k}


def test_grad_clip_zero_means_no_clipping_and_loss_is_the_reconstruction(small_demo_cache, tmp_path, monkeypatch):
    """--grad-clip 0 (the official recipes) never calls the clip (which at 0 would zero every gradient), the
    weights move, and the logged loss is the MaskedDistillation points loss, nothing added."""
    def no_clip(*args, **kwargs):
        raise AssertionError("clip_grad_norm_ called with --grad-clip 0")

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", no_clip)
    out = str(tmp_path / "mae")
    r = CliRunner().invoke(app, ["mae", "--cache", small_demo_cache, "--out", out, "--model", "point-mae-tiny",
                                 "--grad-clip", "0", "--log-every", "1", "--seed", "5", *FAST])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(os.path.join(out, "metrics.csv"))))
    assert all(float(x["loss/chamfer"]) == float(x["loss/total"]) for x in rows)
    from train.models.encoders import create_encoder

    torch.manual_seed(5)  # the loop seeds just before it builds: the run's initial encoder
    start = create_encoder("point-mae-tiny", "mae").state_dict()
    end = torch.load(os.path.join(out, "last.pt"), weights_only=False)["model"]
    assert not torch.equal(start["blocks.blocks.0.attn.qkv.weight"], end["encoder.blocks.blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("model", ["point-mae-tiny", "point-m2ae-tiny"])
def test_no_weight_decay_is_the_official_rule(model):
    """Both references' optimisers: no decay on 1-D parameters, biases and every name with 'token' in it."""
    from train.optim import param_groups

    cfg = MaeConfig(cache="c", out="o", model=model).resolved()
    task = MaeTask(cfg)
    module = task.build(None, torch.device("cpu"), 0, 1)
    official = {n for n, p in module.named_parameters() if p.requires_grad
                and (p.ndim == 1 or n.endswith(".bias") or "token" in n)}
    names = {n for g in param_groups(module, 1e-3, 0.05) if g["weight_decay"] == 0 for n in g["names"]}
    assert names == official
    assert any("token_prop" in n for n in names) == (model == "point-m2ae-tiny")


def test_stage1_after_mae_starts_from_its_encoder(small_demo_cache, tmp_path):
    """Table 9's reversed order: stage-1 initialised from a masked-reconstruction run takes its encoder weights
    exactly; the cls token (the official pre-training has none) and the heads start fresh."""
    from train.stages.stage1 import Stage1Config, Stage1Task

    mae = str(tmp_path / "mae")
    r = CliRunner().invoke(app, ["mae", "--cache", small_demo_cache, "--out", mae, "--model", "point-mae-tiny",
                                 *FAST])
    assert r.exit_code == 0, r.output
    state = torch.load(os.path.join(mae, "last.pt"), weights_only=False)
    cfg = Stage1Config(cache=small_demo_cache, out=str(tmp_path / "s1"), init=os.path.join(mae, "last.pt"))
    from train.data.objects import ObjectStream

    task = Stage1Task(cfg)
    stream = ObjectStream(small_demo_cache, task.stream_config())
    model = task.build(stream, torch.device("cpu"), 0, 1)
    weights = model.student.state_dict()
    trained = {k: v for k, v in state["model"].items() if k.startswith("encoder.")}
    assert trained and all(torch.equal(weights[k], v) for k, v in trained.items())
    assert {k for k in weights if k.startswith("encoder.") and k not in trained} == {"encoder.cls_token",
                                                                                     "encoder.cls_pos"}
    assert model.student.heads  # stage-1's heads, new
