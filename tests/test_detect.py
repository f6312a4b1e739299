"""`train detect` and `train eval detect`: 3DETR on the project's encoder, end to end on demo rooms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from train.cli import app
from train.eval.detection_metrics import split_scores

SMALL = dict(num_points=512, num_group=16, group_size=16, num_queries=8, dec_layers=2, dec_dim=32, dec_ffn_dim=32)
SMALL_ARGS = [a for k, v in SMALL.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def test_train_and_evaluate_from_the_command_line(demo_rooms_cache, tmp_path):
    from cache_schema import open_cache
    from train.eval.detection import scores_from_file

    runner = CliRunner()
    out = str(tmp_path / "run")
    r = runner.invoke(app, ["detect", "--cache", demo_rooms_cache, "--out", out, "--epochs", "2", "--warmup-epochs",
                            "1", "--batch-size", "4", "--workers", "0", "--val-every-epochs", "1", "--no-progress",
                            *SMALL_ARGS])
    assert r.exit_code == 0, r.output
    config = json.load(open(f"{out}/config.json"))
    c = config["config"]
    assert (c["lr"], c["weight_decay"], c["grad_clip"], c["val_split"]) == (5e-4, 0.1, 0.1, "test")  # 3DETR's
    assert config["matcher"]["cost_giou"] == 2.0 and config["loss_weights"]["no_object"] == 0.25
    npz = str(tmp_path / "pred.npz")
    r = runner.invoke(app, ["eval", "detect", "--cache", demo_rooms_cache, "--ckpt", f"{out}/best.pt", "--json",
                            "--save-predictions", npz])
    assert r.exit_code == 0, r.output
    scores = json.loads(r.output.strip().splitlines()[-1])
    assert set(scores) >= {"map25", "map50", "per_class"} and scores["split"] == "test"
    cache = open_cache(demo_rooms_cache)
    saved = np.load(npz)
    test_rooms = sorted(str(cache.ids[i]) for i in cache.split("test"))
    assert list(saved["scenes"]) == test_rooms and len(saved["offsets"]) == len(test_rooms) + 1
    truth = [cache.room(int(np.flatnonzero(cache.ids == room)[0])) for room in test_rooms]
    np.testing.assert_array_equal(saved["gt_boxes"], np.concatenate([t.boxes for t in truth]))  # every true box
    np.testing.assert_array_equal(saved["gt_classes"], np.concatenate([t.box_labels for t in truth]))
    again = scores_from_file(npz)
    assert again["map25"] == scores["map25"] and again["map50"] == scores["map50"]
    assert again["per_class"] == scores["per_class"]
    from train.report import report

    _, page = report(out)
    evaluation = json.load(open(f"{out}/eval.json"))
    assert set(evaluation["this run"]) == {"map25", "map50"} and "mAP@0.25" in open(page).read()
    assert "boxes.png" in open(page).read()


def test_a_run_stopped_and_resumed_repeats_the_uninterrupted_one(demo_rooms_cache, tmp_path):
    from train.downstream.detect import DetectConfig, train_detect

    common = dict(cache=demo_rooms_cache, epochs=2, warmup_epochs=1, batch_size=2, workers=1, val_split=None,
                  **SMALL)
    whole = str(tmp_path / "whole")
    train_detect(DetectConfig(out=whole, **common), progress=False)
    parts = str(tmp_path / "parts")
    train_detect(DetectConfig(out=parts, **common), progress=False, stop_at=3)
    train_detect(DetectConfig(out=parts, **common), resume=True, progress=False)
    a, b = (torch.load(f"{d}/last.pt", weights_only=True)["model"] for d in (whole, parts))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_a_short_cpu_run_on_demo_rooms_beats_the_untrained_model(demo_rooms_cache, tmp_path):
    """60 short epochs (3DETR's recipe needs hundreds: no augmentation and a higher rate so a CPU run leaves 0 AP)."""
    from train.downstream.detect import DetectConfig, train_detect
    from train.eval.detection import evaluate_detection, load_detector
    from train.models.detector import Detector

    out = str(tmp_path / "run")
    train_detect(DetectConfig(cache=demo_rooms_cache, out=out, epochs=60, warmup_epochs=2, batch_size=4, lr=2e-3,
                              grad_clip=1.0, augment=False, workers=0, val_split=None, num_points=512,
                              num_group=64, group_size=16, num_queries=48, dec_layers=4), progress=False)
    trained, state = load_detector(f"{out}/last.pt")
    torch.manual_seed(0)
    untrained = Detector(type(trained.encoder)(trained.encoder.config), **state["detector"]).eval()
    held_out = [evaluate_detection(m, demo_rooms_cache, "test", 512)["map25"] for m in (trained, untrained)]
    assert held_out[0] > held_out[1], held_out  # about 0.01-0.05 against 0: the run is short
    seen = [evaluate_detection(m, demo_rooms_cache, "train", 512)["map25"] for m in (trained, untrained)]
    assert seen[0] > seen[1] + 0.02, seen


def test_each_loss_weight_scales_its_own_term(demo_rooms_cache):
    from train.data.detection import SceneStream, SceneStreamConfig
    from train.downstream.detect import DetectConfig, DetectTask, scene_targets

    batch = next(iter(SceneStream(demo_rooms_cache, SceneStreamConfig(num_points=512, prefetch_bytes=0))))
    results = []
    for weights in ({}, {"loss_giou": 0.0}, {"loss_center": 10.0}):
        task = DetectTask(DetectConfig(cache=demo_rooms_cache, out="unused", **SMALL, **weights).resolved())
        torch.manual_seed(0)
        model = task.build(None, torch.device("cpu"), 0, 1).eval()
        with torch.no_grad():
            outputs = model(batch["points"])
            results.append(task.criterion(outputs, scene_targets(batch, batch["points"], torch.device("cpu"))))
    (total, logs), (no_giou, _), (more_center, _) = results
    giou = sum(float(v) for k, v in logs.items() if k.startswith("loss/giou"))  # every decoder layer's
    center = sum(float(v) for k, v in logs.items() if k.startswith("loss/center"))
    assert giou > 0 and center > 0
    assert float(total) - float(no_giou) == pytest.approx(giou, rel=1e-5)
    assert float(more_center) - float(total) == pytest.approx(center, rel=1e-5)  # 10 = twice the default 5


def test_the_box_heads_normalise_every_layer_with_one_batch_of_statistics():
    from train.models.detector import Detector
    from train.models.encoders import create_encoder

    torch.manual_seed(0)
    model = Detector(create_encoder("point-mae-tiny", None, num_group=32, group_size=16), 5, num_queries=8,
                     dec_layers=3, dec_dim=32, dec_ffn_dim=32).train()
    model(torch.rand(2, 512, 3))
    norms = [m for m in model.mlp_heads.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms and all(int(m.num_batches_tracked) == 1 for m in norms)  # 3DETR: the L x B layers stacked once


def test_bf16_on_a_cpu_gives_the_fp32_boxes_within_tolerance():
    from train.models.detector import Detector
    from train.models.encoders import create_encoder

    torch.manual_seed(0)
    model = Detector(create_encoder("point-mae-tiny", None, num_group=32, group_size=16), 5, **{
        k: v for k, v in SMALL.items() if k.startswith(("num_q", "dec"))}).eval()
    points = torch.rand(2, 512, 3) * torch.tensor([5.0, 4.0, 2.5])
    with torch.no_grad():
        fp32 = model(points)["outputs"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(points)["outputs"]
        xyz, lo, hi = points[:, :64], points.amin(1), points.amax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fourier = model.pos_embedding(xyz, lo, hi)
        torch.testing.assert_close(fourier, model.pos_embedding(xyz, lo, hi), rtol=0, atol=0)  # never in bf16
    assert bf16["center_unnormalized"].dtype == torch.float32  # heads return float32 for the loss and matching
    torch.testing.assert_close(bf16["center_unnormalized"], fp32["center_unnormalized"], atol=0.05, rtol=0)
    torch.testing.assert_close(bf16["size_unnormalized"], fp32["size_unnormalized"], atol=0.1, rtol=0)
    torch.testing.assert_close(bf16["sem_cls_prob"], fp32["sem_cls_prob"], atol=0.05, rtol=0)


def test_point_m2ae_detects_with_its_scene_grouping(demo_rooms_cache, tmp_path):
    from train.downstream.detect import DetectConfig, train_detect
    from train.eval.detection import load_detector

    out = str(tmp_path / "m2ae")
    train_detect(DetectConfig(cache=demo_rooms_cache, out=out, model="point-m2ae-tiny", epochs=1, warmup_epochs=0,
                              batch_size=2, workers=0, val_split=None, num_points=2048, num_queries=8, dec_layers=2,
                              dec_dim=32, dec_ffn_dim=32), progress=False)
    model, state = load_detector(f"{out}/last.pt")
    assert state["encoder"]["name"] == "point-m2ae"
    assert tuple(state["encoder"]["config"]["local_radius"]) == (0.4, 0.8, 1.2)
    with torch.no_grad():
        out = model(torch.rand(1, 2048, 3) * 4)
        tokens = model.encoder.encode(model.encoder.tokenize(torch.rand(1, 2048, 3))).tokens
    assert tokens.shape[1] == 512 and out["outputs"]["sem_cls_logits"].shape == (1, 8, len(state["box_classes"]) + 1)


def test_validation_follows_the_val_cache_and_its_splits(demo_rooms_cache, objects_cache, tmp_path):
    from test_semseg import write_rooms

    from train.downstream.detect import DetectConfig

    cfg = DetectConfig(cache=demo_rooms_cache, out="unused", **SMALL)
    assert cfg.resolved().val_split == "test"  # auto: the demo rooms have no val split
    with pytest.raises(ValueError, match="--val-cache .* objects cache"):
        DetectConfig(cache=demo_rooms_cache, out="unused", val_cache=objects_cache[0], **SMALL).resolved()
    with pytest.raises(ValueError, match="--val-split 'val'"):
        DetectConfig(cache=demo_rooms_cache, out="unused", val_split="val", **SMALL).resolved()
    no_boxes = str(tmp_path / "no-boxes.zarr")
    write_rooms(no_boxes, [3000, 3000])
    with pytest.raises(ValueError, match="--val-cache .* without boxes"):
        DetectConfig(cache=demo_rooms_cache, out="unused", val_cache=no_boxes, **SMALL).resolved()


def test_eval_detect_refuses_a_cache_of_other_classes_and_a_missing_split(demo_rooms_cache, tmp_path):
    from train.downstream.detect import DetectConfig, train_detect

    out = str(tmp_path / "run")
    train_detect(DetectConfig(cache=demo_rooms_cache, out=out, epochs=1, warmup_epochs=0, batch_size=4, workers=0,
                              val_split=None, **SMALL), progress=False)
    state = torch.load(f"{out}/last.pt", weights_only=False)
    state["box_classes"] = ["chair"] * len(state["box_classes"])
    torch.save(state, f"{out}/renamed.pt")
    r = CliRunner().invoke(app, ["eval", "detect", "--cache", demo_rooms_cache, "--ckpt", f"{out}/renamed.pt"])
    assert r.exit_code != 0 and "other box classes" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["eval", "detect", "--cache", demo_rooms_cache, "--ckpt", f"{out}/last.pt",
                                 "--split", "val"])
    assert r.exit_code != 0 and "--split" in r.output and "Traceback" not in r.output


def test_detect_refuses_caches_it_cannot_read(objects_cache, tmp_path):
    from test_semseg import write_rooms

    runner = CliRunner()
    r = runner.invoke(app, ["detect", "--cache", objects_cache[0], "--out", str(tmp_path / "a")])
    assert r.exit_code != 0 and "objects cache" in r.output and "Traceback" not in r.output
    rooms = str(tmp_path / "no-boxes.zarr")
    write_rooms(rooms, [3000, 3000])
    r = runner.invoke(app, ["detect", "--cache", rooms, "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and "without boxes" in r.output and "Traceback" not in r.output


def test_the_saved_predictions_recompute_the_json(tmp_path):
    """split_scores on a file written by hand: the arrays are all anyone needs."""
    box = np.array([[0, 0, 0, 1, 1, 1]], np.float32)
    arrays = dict(scenes=np.array(["a", "b"]), offsets=np.array([0, 1, 1]), boxes=box, scores=np.array([0.9]),
                  classes=np.array([0]), gt_offsets=np.array([0, 1, 2]), gt_boxes=np.concatenate([box, box]),
                  gt_classes=np.array([0, 1]))
    np.savez(tmp_path / "p.npz", **arrays, class_names=np.array(["chair", "table"]))
    from train.eval.detection import scores_from_file

    scores = scores_from_file(str(tmp_path / "p.npz"))
    assert scores["per_class"]["chair"]["ap25"] == 1.0 and scores["per_class"]["table"]["ap25"] == 0.0
    assert scores["map25"] == 0.5 == split_scores(**arrays, class_names=("chair", "table"))["map25"]
