"""Fusion distillation runs on a small demo-scenes cache: every pre-training term, exact resume, fine-tuning
from a checkpoint on a share of labels, `train eval seg`, and torchrun."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import torch

from train.models.fusion import mean_pair_features

SMALL = dict(dim=16, depth=2, batch_size=2, workers=0, log_every=1)
ALL_TERMS = {"contrastive": 1.0, "regression": 1.0, "occupancy": 0.5, "codebook": 0.5}


def _losses(run_dir: str, key: str = "loss/total") -> list[float]:
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return [float(r[key]) for r in csv.DictReader(f)]


def test_a_points_2d_feature_is_the_mean_of_its_own_pairs():
    pair_point = torch.tensor([0, 2, 0, 3])          # point 0 seen by two cameras, point 1 by none
    values = torch.tensor([[1.0, 0.0], [5.0, 5.0], [3.0, 2.0], [7.0, 1.0]])
    mean, paired = mean_pair_features(5, pair_point, values)
    torch.testing.assert_close(mean, torch.tensor([[2.0, 1.0], [0, 0], [5.0, 5.0], [7.0, 1.0], [0, 0]]))
    assert paired.tolist() == [True, False, True, True, False]


def test_pretraining_with_every_term_resumes_exactly(small_scenes_cache, tmp_path):
    from train.stages.fusion import FusionRunConfig, train_fusion

    common = dict(cache=small_scenes_cache, steps=4, ckpt_every=2, warmup_steps=1, **ALL_TERMS, **SMALL)
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    metrics = train_fusion(FusionRunConfig(out=full, **common), progress=False)
    assert all(metrics[f"loss/{k}"] > 0 for k in ALL_TERMS)
    train_fusion(FusionRunConfig(out=part, **common), progress=False, stop_at=2)
    train_fusion(FusionRunConfig(out=part, **common), progress=False, resume=True)
    np.testing.assert_allclose(_losses(part), _losses(full), rtol=1e-5)
    assert len(_losses(full)) == 4


def test_finetune_on_a_share_of_labels_from_a_checkpoint_and_eval_seg(small_scenes_cache, tmp_path):
    from typer.testing import CliRunner

    from train.cli import app
    from train.stages.fusion import FusionRunConfig, train_fusion

    pre = str(tmp_path / "pre")
    train_fusion(FusionRunConfig(cache=small_scenes_cache, out=pre, steps=2, **SMALL), progress=False)
    fine = str(tmp_path / "fine")
    runner = CliRunner()
    result = runner.invoke(app, ["fusion", "finetune", "--cache", small_scenes_cache, "--out", fine, "--labels", "40%",
                                 "--init", os.path.join(pre, "last.pt"), "--steps", "2", "--dim", "16", "--depth", "2",
                                 "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    config = json.load(open(os.path.join(fine, "config.json")))
    assert len(config["labelled_frames"]) == 2   # 40% of the 5 training frames (the last of 6 is val)
    assert {"loss/ce", "loss/ce_fused", "loss/consistency"} <= set(json.loads(result.output.strip().splitlines()[-1]))
    result = runner.invoke(app, ["eval", "seg", "--cache", small_scenes_cache, "--ckpt", os.path.join(fine, "last.pt"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    seg = json.loads(result.output)
    assert 0 <= seg["miou"] <= 1 and set(seg["per_class_iou"]) == {"ground", "building", "wall", "car", "pole",
                                                                   "barrel"}
    assert seg["num_frames"] == 1 and seg["num_points"] > 10_000
    bad = runner.invoke(app, ["fusion", "finetune", "--cache", small_scenes_cache, "--out", str(tmp_path / "x"),
                              "--init", os.path.join(fine, "last.pt"), "--workers", "0"])
    assert bad.exit_code == 2 and "needs a `train fusion pretrain` one" in bad.output


def test_fusion_under_torchrun(small_scenes_cache, tmp_path):
    from torchrun import torchrun

    run_dir = str(tmp_path / "ddp")
    torchrun("-m", "train", "fusion", "pretrain", "--cache", small_scenes_cache, "--out", run_dir, "--steps", "2",
             "--batch-size", "1", "--dim", "16", "--depth", "2", "--workers", "0", "--log-every", "1", "--no-progress")
    assert len(_losses(run_dir)) == 2 and json.load(open(os.path.join(run_dir, "config.json")))["world_size"] == 2
