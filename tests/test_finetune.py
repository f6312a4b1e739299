"""Fine-tuning protocols, voting, the smoothed loss, encoder export: on a small, clearly separable points cache
built by `preprocess points` from ScanObjectNN-format files."""

from __future__ import annotations

import dataclasses
import json
import os

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cache_schema import open_cache
from preprocess.build_points import PointBuildConfig, build_points
from train import load_encoder
from train.checkpoint import CheckpointError
from train.cli import app
from train.downstream.finetune import (
    FinetuneConfig,
    build_encoder,
    smoothed_cross_entropy,
    train_finetune,
)
from train.encoder_io import encoder_state, export_encoder
from train.eval.classification import evaluate_classifier, load_classifier, predict_logits

POINTS = 256
SMALL = dict(num_points=POINTS, num_group=16, group_size=16, batch_size=16, workers=0, warmup_epochs=1,
             log_every=5, precision="fp32")


def _shape(kind: int, rng: np.random.Generator) -> np.ndarray:
    """0: a sphere, 1: a flat disc (xz plane), 2: a vertical rod (y axis); rotation about y keeps them apart."""
    if kind == 0:
        p = rng.normal(size=(POINTS, 3))
        return 0.8 * p / np.linalg.norm(p, axis=1, keepdims=True)
    if kind == 1:
        r, a = np.sqrt(rng.random(POINTS)), rng.uniform(0, 2 * np.pi, POINTS)
        return np.stack([r * np.cos(a), 0.02 * rng.normal(size=POINTS), r * np.sin(a)], 1)
    return np.stack([0.05 * rng.normal(size=POINTS), rng.uniform(-1, 1, POINTS), 0.05 * rng.normal(size=POINTS)], 1)


@pytest.fixture(scope="module")
def separable_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("separable")
    rng = np.random.default_rng(0)
    os.makedirs(root / "h5" / "main_split")
    for split, n in (("training", 96), ("test", 30)):
        labels = np.arange(n) % 3
        data = np.stack([_shape(k, rng) for k in labels]).astype(np.float32)
        with h5py.File(root / "h5" / "main_split" / f"{split}_objectdataset.h5", "w") as f:
            f["data"], f["label"], f["mask"] = data, labels, np.zeros((n, POINTS))
    url = str(root / "separable.zarr")
    build_points(url, PointBuildConfig("scanobjectnn", str(root / "h5"), "obj_bg"), progress=False)
    return url


@pytest.fixture(scope="module")
def full_run(separable_cache, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ft") / "full")
    cfg = FinetuneConfig(cache=separable_cache, out=out, protocol="full", epochs=12, lr=2e-3, **SMALL)
    metrics = train_finetune(cfg, progress=False)
    return out, metrics


def test_full_fine_tuning_learns_a_separable_set_and_keeps_the_best(full_run, separable_cache):
    out, metrics = full_run
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["stage"] == "finetune" and config["recipe"] == "scanobjectnn"  # picked from the cache
    assert config["config"]["augmentation"] == "rotate" and config["config"]["label_smoothing"] == 0.2
    per_epoch = config["batches_per_epoch"]
    assert config["config"]["steps"] == 12 * per_epoch and config["config"]["warmup_steps"] == per_epoch
    with open(os.path.join(out, "validation.csv")) as f:
        rows = f.read().splitlines()
    assert len(rows) == 1 + 12  # validated on the test split every epoch
    assert metrics["best/overall_accuracy"] >= 0.9
    model, _ = load_classifier(os.path.join(out, "best.pt"))
    scores = evaluate_classifier(model, open_cache(separable_cache), "test", POINTS)
    assert scores["overall_accuracy"] == pytest.approx(metrics["best/overall_accuracy"])


@pytest.mark.parametrize("protocol", ["linear", "mlp3"])
def test_frozen_protocols_leave_the_encoder_bit_identical(full_run, separable_cache, tmp_path, protocol):
    init = os.path.join(full_run[0], "last.pt")
    out = str(tmp_path / protocol)
    metrics = train_finetune(FinetuneConfig(cache=separable_cache, out=out, init=init, protocol=protocol,
                                            epochs=3, lr=5e-3, **SMALL), progress=False)
    before = build_encoder(FinetuneConfig(cache=separable_cache, out=out, init=init, num_group=16, group_size=16,
                                          drop_path_rate=0.1)).state_dict()
    after = {k[len("encoder."):]: v for k, v in torch.load(os.path.join(out, "last.pt"),
                                                            weights_only=True)["model"].items()
             if k.startswith("encoder.")}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen encoder changed (weights or BN stats)"
    head = torch.load(os.path.join(out, "last.pt"), weights_only=True)["model"]
    assert any(k.startswith("head.") for k in head)
    if protocol == "linear":  # one linear layer on good features separates the set
        assert metrics["best/overall_accuracy"] >= 0.9


def test_voting_with_one_copy_is_plain_evaluation(full_run, separable_cache):
    model, _ = load_classifier(os.path.join(full_run[0], "last.pt"))
    cache = open_cache(separable_cache)
    rows = cache.done_rows("test")
    points = torch.from_numpy(cache.array("points").get_orthogonal_selection((rows, slice(0, POINTS))))
    with torch.inference_mode():
        direct = model(points.float()).numpy()
    np.testing.assert_allclose(predict_logits(model, cache, rows, POINTS, vote=1), direct, rtol=1e-5, atol=1e-5)
    voted = predict_logits(model, cache, rows, POINTS, vote=4)
    assert not np.allclose(voted, direct)
    np.testing.assert_array_equal(voted, predict_logits(model, cache, rows, POINTS, vote=4))  # seeded


def test_the_smoothed_loss_is_point_berts():
    logits, target, eps = torch.randn(7, 5), torch.tensor([0, 1, 2, 3, 4, 0, 1]), 0.2
    one_hot = F.one_hot(target, 5).float()
    smooth = one_hot * (1 - eps) + (1 - one_hot) * eps / 4
    reference = -(smooth * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(smoothed_cross_entropy(logits, target, eps), reference, atol=1e-6)
    assert torch.allclose(smoothed_cross_entropy(logits, target, 0.0), F.cross_entropy(logits, target))


def test_exported_encoder_loads_without_pickle_and_computes_the_same(full_run, tmp_path):
    ckpt = os.path.join(full_run[0], "last.pt")
    path = str(tmp_path / "encoder.safetensors")
    record = export_encoder(ckpt, path)
    assert record["parameters"] > 0
    with open(path, "rb") as f:
        assert b"\x80\x04" not in f.read(64)  # a safetensors header is JSON, not a pickle
    encoder = load_encoder(path)
    model, _ = load_classifier(ckpt)
    points = torch.rand(2, POINTS, 3)
    with torch.inference_mode():
        tokens, feature = encoder(points)
        _, expected = model.encoder(points)
    assert tokens.shape == (2, 16, encoder.token_dim) and feature.shape == (2, 2 * encoder.token_dim)
    assert torch.equal(feature, expected)
    record, weights, _ = encoder_state(path)
    assert record == model.encoder.describe() and record["name"] == "point-mae"
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file at all")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_encoder(str(garbage))


def test_the_cli_fine_tunes_evaluates_with_votes_and_exports(full_run, separable_cache, tmp_path):
    from typer.testing import CliRunner

    runner = CliRunner()
    best = os.path.join(full_run[0], "best.pt")
    done = runner.invoke(app, ["eval", "classify", "--cache", separable_cache, "--ckpt", best, "--vote", "3",
                               "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert result["vote"] == 3 and 0 <= result["mean_class_accuracy"] <= 1 and result["num_samples"] == 30
    out = str(tmp_path / "enc.safetensors")
    assert runner.invoke(app, ["export-encoder", best, "--out", out]).exit_code == 0 and os.path.exists(out)
    bad = runner.invoke(app, ["finetune", "--cache", separable_cache, "--out", str(tmp_path / "x"),
                              "--protocol", "half"])
    assert bad.exit_code == 2 and "--protocol is one of full, mlp3, linear" in bad.output
    wrong_kind = runner.invoke(app, ["eval", "classify", "--cache", separable_cache, "--ckpt", out])
    assert wrong_kind.exit_code == 2 and "is not a checkpoint of this tool" in wrong_kind.output


def test_fewshot_folds_are_seeded_class_balanced_and_fine_tuned(separable_cache, tmp_path):
    from train.downstream.fewshot import FewshotConfig, draw_fold, run_fewshot

    cache = open_cache(separable_cache)
    train, test = cache.done_rows("train"), cache.done_rows("test")
    a = draw_fold(cache.labels, train, test, way=2, shot=4, queries=5, seed=1, fold=0)
    again = draw_fold(cache.labels, train, test, 2, 4, 5, 1, 0)
    assert np.array_equal(a.train_rows, again.train_rows) and np.array_equal(a.test_rows, again.test_rows)
    assert not np.array_equal(a.train_rows, draw_fold(cache.labels, train, test, 2, 4, 5, 1, 1).train_rows)
    assert set(a.train_rows) <= set(train) and set(a.test_rows) <= set(test)
    for c in a.classes:
        assert (cache.labels[a.train_rows] == c).sum() == 4 and (cache.labels[a.test_rows] == c).sum() == 5
    with pytest.raises(ValueError, match="4-way"):
        draw_fold(cache.labels, train, test, 4, 4, 5, 1, 0)
    out = str(tmp_path / "fs")
    cfg = FewshotConfig(cache=separable_cache, out=out, epochs=2, way=2, shot=4, folds=2, queries=5, **SMALL)
    summary = run_fewshot(cfg, progress=False)
    assert len(summary["per_fold"]) == 2 and 0 <= summary["std"] <= summary["mean"] <= 1
    fold_cache = open_cache(os.path.join(out, "fold-0", "cache.zarr"))
    assert fold_cache.num_rows == 2 * (4 + 5) and len(fold_cache.label_names) == 2
    assert sorted(np.bincount(fold_cache.labels[fold_cache.split("test")]).tolist()) == [5, 5]
    written = json.load(open(os.path.join(out, "fewshot.json")))
    assert written["mean"] == summary["mean"] and written["way"] == 2
    with pytest.raises(ValueError, match="not empty"):
        run_fewshot(dataclasses.replace(cfg, folds=1), progress=False)


def test_a_killed_fewshot_run_resumes_fold_by_fold_to_the_uninterrupted_result(separable_cache, tmp_path,
                                                                                 monkeypatch):
    from train.downstream import fewshot

    real = fewshot.train_finetune
    cfg = fewshot.FewshotConfig(cache=separable_cache, out=str(tmp_path / "whole"), epochs=2, way=2, shot=4, folds=3,
                                queries=5, **SMALL)
    whole = fewshot.run_fewshot(cfg, progress=False)
    calls = []

    def killed_in_fold_1(fold_cfg, resume=False, progress=True):
        calls.append((os.path.basename(os.path.dirname(fold_cfg.out)), resume))
        if fold_cfg.out.endswith(os.path.join("fold-1", "run")) and not resume:
            real(fold_cfg, progress=False, stop_at=1)  # its first checkpoint, then the job is killed
            raise KeyboardInterrupt
        return real(fold_cfg, resume=resume, progress=progress)

    monkeypatch.setattr(fewshot, "train_finetune", killed_in_fold_1)
    stopped = dataclasses.replace(cfg, out=str(tmp_path / "stopped"))
    with pytest.raises(KeyboardInterrupt):
        fewshot.run_fewshot(stopped, progress=False)
    assert calls == [("fold-0", False), ("fold-1", False)]
    assert os.path.exists(os.path.join(stopped.out, "fold-0", "fold.json"))
    with pytest.raises(ValueError, match="not empty; pass --resume"):
        fewshot.run_fewshot(stopped, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(shot: 4 -> 3\)"):
        fewshot.run_fewshot(dataclasses.replace(stopped, shot=3), resume=True, progress=False)
    with pytest.raises(ValueError, match="holds no few-shot run"):
        fewshot.run_fewshot(dataclasses.replace(stopped, out=str(tmp_path / "never")), resume=True, progress=False)
    for bad in ({"init": str(tmp_path / "missing.pt")}, {"way": 7}):  # --overwrite with bad input empties nothing
        with pytest.raises(ValueError, match="missing.pt: no such file|7-way"):
            fewshot.run_fewshot(dataclasses.replace(stopped, overwrite=True, **bad), progress=False)
    assert os.path.exists(os.path.join(stopped.out, "fold-0", "fold.json"))
    calls.clear()
    resumed = fewshot.run_fewshot(stopped, resume=True, progress=False)
    assert calls == [("fold-1", True), ("fold-2", False)]  # fold 0 kept, fold 1 continued, fold 2 run
    assert resumed["per_fold"] == whole["per_fold"] and resumed["mean"] == whole["mean"]
    assert json.load(open(os.path.join(stopped.out, "fewshot.json")))["per_fold"] == whole["per_fold"]


def test_fewshot_refuses_torchrun(separable_cache, tmp_path, monkeypatch):
    from train.downstream.fewshot import FewshotConfig, run_fewshot

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="without torchrun"):
        run_fewshot(FewshotConfig(cache=separable_cache, out=str(tmp_path / "fs"), epochs=1, way=2, shot=4, folds=1,
                                  queries=5, **SMALL))
    assert not os.path.exists(tmp_path / "fs")


def test_report_draws_a_fine_tuning_run_with_its_accuracies(full_run, separable_cache):
    from train.report import report

    png, page = report(full_run[0])
    assert os.path.getsize(png) > 10_000 and "finetune" in open(page).read()
    table = json.load(open(os.path.join(full_run[0], "eval.json")))
    model, _ = load_classifier(os.path.join(full_run[0], "best.pt"))
    expected = evaluate_classifier(model, open_cache(separable_cache), "test", POINTS)
    assert table["this run"]["overall_accuracy"] == expected["overall_accuracy"]
    assert 0 <= table["this run"]["overall_accuracy_vote10"] <= 1
