"""Validation during training: best.pt is the best validated checkpoint (there is none without validation),
every stage has a score, a split that does not exist stops the start, and `train report` draws every kind of
run folder (fusion included)."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from typer.testing import CliRunner

from train import checkpoint
from train.cli import app

FAST = ["--batch-size", "4", "--num-points", "128", "--workers", "0", "--no-progress"]


def _rows(path: str) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_best_pt_is_the_best_validated_step(small_demo_cache, tmp_path):
    out = str(tmp_path / "s1")
    result = CliRunner().invoke(app, ["stage1", "--cache", small_demo_cache, "--out", out, "--steps", "6",
                                      "--val-split", "test", "--val-every", "2", "--lr", "0.01", *FAST])
    assert result.exit_code == 0, result.output
    val = _rows(os.path.join(out, "validation.csv"))
    assert [int(r["step"]) for r in val] == [2, 4, 6]
    assert all(float(r["score"]) == float(r["zeroshot_top1"]) for r in val)  # stage-1 validates zero-shot
    best = json.load(open(os.path.join(out, "best.json")))
    top = max(val, key=lambda r: float(r["score"]))  # the first of equal scores is kept
    assert best["step"] == int(top["step"]) and best["score"] == pytest.approx(float(top["score"]), abs=1e-6)
    assert checkpoint.load(os.path.join(out, "best.pt"))["step"] == best["step"]
    assert checkpoint.load(os.path.join(out, "last.pt"))["step"] == 6
    # what best.json says is what the checkpoint scores
    from train.eval.frozen import load_student, open_for_eval, zeroshot

    cache = open_for_eval(small_demo_cache)
    again = zeroshot(load_student(os.path.join(out, "best.pt"), cache), cache, "test", 128)["top1"]
    assert again == pytest.approx(best["score"])


def test_a_run_killed_between_saving_and_validating_a_step_validates_it_on_resume(small_demo_cache, tmp_path,
                                                                                  monkeypatch):
    """The loop saves last.pt, then validates: a kill in between must not leave that step out of best.pt's race."""
    from train.stages.stage1 import Stage1Config, Stage1Task, train_stage1

    cfg = Stage1Config(cache=small_demo_cache, out=str(tmp_path / "s1"), steps=6, val_split="test", val_every=2,
                       lr=0.01, batch_size=4, num_points=128, workers=0)
    real, seen = Stage1Task.validate, []

    def killed_while_validating_step_4(self, url, split):
        seen.append(split)
        if len(seen) == 2:
            raise KeyboardInterrupt  # the job dies here, with last.pt of step 4 written
        return real(self, url, split)

    monkeypatch.setattr(Stage1Task, "validate", killed_while_validating_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_stage1(cfg, progress=False)
    monkeypatch.undo()
    assert checkpoint.load(os.path.join(cfg.out, "last.pt"))["step"] == 4
    assert [int(r["step"]) for r in _rows(os.path.join(cfg.out, "validation.csv"))] == [2]
    train_stage1(cfg, resume=True, progress=False)
    val = _rows(os.path.join(cfg.out, "validation.csv"))
    assert [int(r["step"]) for r in val] == [2, 4, 6]  # step 4 validated once, on resume
    top = max(val, key=lambda r: float(r["score"]))
    assert json.load(open(os.path.join(cfg.out, "best.json")))["step"] == int(top["step"])
    train_stage1(cfg, resume=True, progress=False)  # a finished run resumed validates nothing again
    assert len(_rows(os.path.join(cfg.out, "validation.csv"))) == 3


def test_stage2_validates_with_a_linear_probe(small_demo_cache, stage1_ckpt, tmp_path):
    out = str(tmp_path / "s2")
    result = CliRunner().invoke(app, ["stage2", "--cache", small_demo_cache, "--teacher", stage1_ckpt,
                                      "--out", out, "--steps", "2", "--val-split", "test", "--val-every", "1", *FAST])
    assert result.exit_code == 0, result.output
    val = _rows(os.path.join(out, "validation.csv"))
    assert len(val) == 2 and all(0 <= float(r["linear_accuracy"]) <= 1 for r in val)
    assert os.path.exists(os.path.join(out, "best.pt"))


def test_a_missing_validation_split_stops_the_start(small_demo_cache, tmp_path):
    out = str(tmp_path / "r")
    result = CliRunner().invoke(app, ["stage1", "--cache", small_demo_cache, "--out", out, "--steps", "1",
                                      "--val-split", "val", *FAST])
    assert result.exit_code == 2 and "--val-split 'val'" in result.output and "train, test" in result.output.replace(
        "test, train", "train, test")
    assert not os.path.exists(out)


def test_fusion_validates_and_every_run_folder_gets_a_report(small_scenes_cache, tmp_path):
    common = ["--cache", small_scenes_cache, "--steps", "2", "--batch-size", "1", "--dim", "16", "--depth", "2",
              "--workers", "0", "--max-points", "4000", "--val-split", "val", "--val-every", "1", "--no-progress"]
    pre, fine = str(tmp_path / "pre"), str(tmp_path / "fine")
    runner = CliRunner()
    assert runner.invoke(app, ["fusion", "pretrain", "--out", pre, *common]).exit_code == 0
    assert all(-1 <= float(r["pair_cosine"]) <= 1 for r in _rows(os.path.join(pre, "validation.csv")))
    result = runner.invoke(app, ["fusion", "finetune", "--out", fine, "--init", os.path.join(pre, "best.pt"),
                                 "--labels", "40%", *common])
    assert result.exit_code == 0, result.output
    val = _rows(os.path.join(fine, "validation.csv"))
    assert len(val) == 2 and all(float(r["score"]) == float(r["miou"]) for r in val)
    for run in (pre, fine):
        result = runner.invoke(app, ["report", run])
        assert result.exit_code == 0, result.output
        page = open(os.path.join(run, "report.html")).read()
        assert "fusion" in page
    assert "mIoU" in open(os.path.join(fine, "report.html")).read()
    table = json.load(open(os.path.join(fine, "eval.json")))
    assert table["checkpoint"] == "best.pt" and 0 <= table["this run"]["miou"] <= 1
    # the table is what `train eval seg` gives for that checkpoint
    seg = json.loads(runner.invoke(app, ["eval", "seg", "--cache", small_scenes_cache, "--ckpt",
                                         os.path.join(fine, "best.pt"), "--json"]).output)
    assert seg["miou"] == pytest.approx(table["this run"]["miou"])
    assert torch.load(os.path.join(fine, "best.pt"), weights_only=True)["stage"] == "fusion-finetune"
