"""Part segmentation: the metric by hand, the class restriction, the interpolation against brute force, and a
short run on the demo's part labels that clearly beats the untrained model; CLI and report."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cache_schema import open_cache
from train.cli import app
from train.downstream.segment import SegmentConfig, train_segment
from train.eval.metrics import part_iou_scores
from train.eval.part_segmentation import evaluate_partseg, load_segmenter
from train.models import create_encoder
from train.models.part_segmentation import PartSegmentation, restrict_to_class
from train.ops import three_nn_interpolate

SMALL = dict(num_points=256, num_group=16, group_size=16, batch_size=8, workers=0, warmup_epochs=1, log_every=5,
             precision="fp32")


def test_part_iou_by_hand():
    class_parts = [np.array([0, 1]), np.array([2, 3, 4])]
    # shape 0 (class 0): truth 0 0 1 1, pred 0 1 1 1 -> part 0: 1/2, part 1: 2/3 -> 7/12
    # shape 1 (class 1): truth 2 2 2 2, pred 2 2 3 3 -> part 2: 2/4, part 3: 0/2, part 4 absent in both: 1 -> 1/2
    # shape 2 (class 1): all right, parts 2 and 3 present, 4 absent: 1
    pred = [np.array([0, 1, 1, 1]), np.array([2, 2, 3, 3]), np.array([2, 3, 3, 2])]
    truth = [np.array([0, 0, 1, 1]), np.array([2, 2, 2, 2]), np.array([2, 3, 3, 2])]
    s = part_iou_scores(pred, truth, np.array([0, 1, 1]), class_parts, ("a", "b"))
    assert s["instance_miou"] == pytest.approx((7 / 12 + 1 / 2 + 1) / 3)
    assert s["class_miou"] == pytest.approx((7 / 12 + (1 / 2 + 1) / 2) / 2)
    assert s["per_class"] == pytest.approx({"a": 7 / 12, "b": 0.75})


def test_predictions_stay_within_the_class_parts():
    logits = torch.tensor([[[0.0, 9.0, 1.0, 2.0]]]).expand(2, 3, 4).clone()
    mask = torch.tensor([[True, False, True, False], [False, True, False, True]])
    pred = restrict_to_class(logits, torch.tensor([0, 1]), mask)
    assert pred[0].tolist() == [2, 2, 2] and pred[1].tolist() == [1, 1, 1]


def test_three_nn_interpolation_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    query, points, feats = torch.rand(2, 50, 3, generator=g) * 40, torch.rand(2, 9, 3, generator=g) * 40, \
        torch.rand(2, 9, 5, generator=g)
    out = three_nn_interpolate(query, points, feats)
    for b in range(2):
        for m in range(50):
            d2 = ((points[b].double() - query[b, m].double()) ** 2).sum(-1)
            near = d2.argsort()[:3]
            w = 1 / (d2[near] + 1e-8)
            expected = (feats[b, near].double() * (w / w.sum())[:, None]).sum(0)
            assert torch.allclose(out[b, m].double(), expected, atol=1e-5)


@pytest.fixture(scope="module")
def seg_run(small_demo_cache, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("seg") / "run")
    metrics = train_segment(SegmentConfig(cache=small_demo_cache, out=out, epochs=8, lr=2e-3, **SMALL),
                            progress=False)
    return out, metrics


def test_a_short_run_on_demo_parts_clearly_beats_the_untrained_model(seg_run, small_demo_cache):
    out, metrics = seg_run
    cache = open_cache(small_demo_cache)
    assert cache.has_part_labels and len(cache.part_names) == 31
    torch.manual_seed(0)
    untrained = PartSegmentation(create_encoder("point-mae-tiny", num_group=16, group_size=16),
                                 len(cache.label_names), len(cache.part_names))
    before = evaluate_partseg(untrained, cache, "test", 256)
    model, state = load_segmenter(os.path.join(out, "best.pt"))
    after = evaluate_partseg(model, cache, "test", 256, state["class_parts"])
    assert after["instance_miou"] == pytest.approx(metrics["best/instance_miou"])
    assert after["instance_miou"] > before["instance_miou"] + 0.1, (before, after)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["stage"] == "segment" and config["train_split"] == "train" and config["num_parts"] == 31


def test_cli_and_report_of_a_segmentation_run(seg_run, small_demo_cache, tmp_path):
    from typer.testing import CliRunner

    from train.report import report

    out, _ = seg_run
    done = CliRunner().invoke(app, ["eval", "partseg", "--cache", small_demo_cache, "--ckpt",
                                    os.path.join(out, "best.pt"), "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert 0 < result["instance_miou"] <= 1 and 0 < result["class_miou"] <= 1 and result["num_shapes"] == 10
    png, page = report(out)
    assert os.path.getsize(os.path.join(out, "parts.png")) > 10_000 and "parts.png" in open(page).read()
    wrong = CliRunner().invoke(app, ["segment", "--cache", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "x")])
    assert wrong.exit_code == 2 and "error:" in wrong.output


@pytest.mark.parametrize("sampling", ["prefix", "random", "first", "fps"])
def test_streamed_part_labels_follow_their_points(small_demo_cache, sampling):
    from train.data.objects import ObjectStream, StreamConfig

    cache = open_cache(small_demo_cache)
    stored, labels = cache.array("points")[:].astype(np.float32), cache.array("part_label")[:]
    stream = ObjectStream(small_demo_cache, StreamConfig(num_points=128, sampling=sampling, part_labels=True,
                                                         augment=False))
    stream.set_position(0, 0, 8)
    for batch in stream:
        for row, points, parts in zip(batch["row"].numpy(), batch["points"].numpy(), batch["part_label"].numpy()):
            d = ((stored[row][None] - points[:, None]) ** 2).sum(-1)  # each streamed point is a stored one
            assert (d.min(axis=1) < 1e-10).all()
            np.testing.assert_array_equal(labels[row][d.argmin(axis=1)], parts)


def test_a_checkpoint_from_before_the_cls_change_warns_and_cannot_be_resumed(seg_run, tmp_path, capsys):
    from train.models.part_segmentation import check_intermediates

    out, _ = seg_run
    state = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert state["intermediates"] == "no-cls"
    del state["intermediates"]
    old = str(tmp_path / "old.pt")
    torch.save(state, old)
    model, _ = load_segmenter(old)
    assert "still held the cls token" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot be resumed"):
        check_intermediates(state, model.encoder, old, resuming=True)
