"""`train` as a user calls it: every bad option, folder, checkpoint or chunk is one line naming it (no
traceback, no run folder left behind), a finished run is protected, and `--config` re-runs a run."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest
import torch
from typer.testing import CliRunner

from train.cli import app

FAST = ["--steps", "1", "--batch-size", "4", "--num-points", "128", "--workers", "0", "--no-progress"]


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "weights_only" not in result.output
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def s1_run(small_demo_cache, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "s1")
    result = _invoke("stage1", "--cache", small_demo_cache, "--out", out, "--lr", "0.002", "--seed", "3",
                     "--weight", "clip-tiny/text=0.5", *FAST)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("args, words", [
    (["--steps", "0"], ["--steps", "positive"]),
    (["--batch-size", "-2"], ["--batch-size", "positive"]),
    (["--num-points", "0"], ["--num-points"]),
    (["--workers", "-1"], ["--workers", "negative"]),
    (["--sampling", "poisson"], ["--sampling", "poisson"]),
    (["--precision", "fp8"], ["--precision", "fp8"]),
    (["--weight", "clip-tiny/txt=1"], ["--weight", "clip-tiny/txt", "clip-tiny/text"]),
    (["--weight", "clip-tiny/text"], ["--weight", "TERM=NUMBER"]),
])
def test_bad_options_are_one_line_and_leave_no_run_folder(small_demo_cache, tmp_path, args, words):
    out = str(tmp_path / "run")
    base = dict(zip(FAST[:-1:2], FAST[1:-1:2]))
    base.update(dict(zip(args[::2], args[1::2])))
    flat = [x for kv in base.items() for x in kv]
    _one_line_error(_invoke("stage1", "--cache", small_demo_cache, "--out", out, *flat, "--no-progress"), *words)
    assert not os.path.exists(out)


def test_a_finished_run_is_not_overwritten_by_accident(small_demo_cache, s1_run, tmp_path):
    _one_line_error(_invoke("stage1", "--cache", small_demo_cache, "--out", s1_run, *FAST), s1_run, "--overwrite")
    assert os.path.exists(os.path.join(s1_run, "last.pt"))
    copy = str(tmp_path / "copy")
    shutil.copytree(s1_run, copy)
    before = os.path.getmtime(os.path.join(copy, "last.pt"))
    # a failing start with --overwrite clears nothing
    _one_line_error(_invoke("stage1", "--cache", small_demo_cache, "--out", copy, "--overwrite", *FAST,
                            "--batch-size", "100000"), "batch")
    assert os.path.getmtime(os.path.join(copy, "last.pt")) == before
    assert _invoke("stage1", "--cache", small_demo_cache, "--out", copy, "--overwrite", *FAST).exit_code == 0
    assert os.path.getmtime(os.path.join(copy, "last.pt")) > before


def test_garbage_and_wrong_kind_checkpoints_are_one_line(small_demo_cache, s1_run, tmp_path):
    garbage = str(tmp_path / "garbage.pt")
    with open(garbage, "wb") as f:
        f.write(os.urandom(2000))
    s1 = os.path.join(s1_run, "last.pt")
    _one_line_error(_invoke("stage2", "--cache", small_demo_cache, "--teacher", garbage, "--out",
                            str(tmp_path / "a"), *FAST), garbage, "not a readable checkpoint")
    _one_line_error(_invoke("eval", "linear", "--cache", small_demo_cache, "--ckpt", garbage), garbage)
    not_ours = str(tmp_path / "weights.pt")
    torch.save({"weight": torch.zeros(2)}, not_ours)
    _one_line_error(_invoke("eval", "zeroshot", "--cache", small_demo_cache, "--ckpt", not_ours), "not a checkpoint")
    # a stage-1 checkpoint where a fusion one belongs, and the other way round
    _one_line_error(_invoke("eval", "seg", "--cache", small_demo_cache, "--ckpt", s1), "`train stage1`",
                    "`train fusion finetune`")
    s2 = str(tmp_path / "s2")
    assert _invoke("stage2", "--cache", small_demo_cache, "--teacher", s1, "--out", s2, *FAST).exit_code == 0
    _one_line_error(_invoke("stage2", "--cache", small_demo_cache, "--teacher", os.path.join(s2, "last.pt"),
                            "--out", str(tmp_path / "c"), *FAST), "`train stage2`", "needs a `train stage1` one")
    assert not glob.glob(str(tmp_path / "[ac]"))


def test_a_corrupt_chunk_during_training_is_one_line(small_demo_cache, tmp_path):
    url = str(tmp_path / "cache.zarr")
    shutil.copytree(small_demo_cache, url)
    for chunk in glob.glob(os.path.join(url, "points", "c", "**", "*"), recursive=True):
        if os.path.isfile(chunk):
            with open(chunk, "wb") as f:
                f.write(b"\x00not zstd" * 10)
    for workers in ("0", "1"):
        result = _invoke("stage1", "--cache", url, "--out", str(tmp_path / f"r{workers}"), *FAST, "--workers", workers)
        _one_line_error(result, url, "cannot read rows")


def test_config_reruns_a_run_and_flags_override(small_demo_cache, s1_run, tmp_path):
    again = str(tmp_path / "again")
    result = _invoke("stage1", "--config", os.path.join(s1_run, "config.json"), "--out", again, "--steps", "2",
                     "--no-progress")
    assert result.exit_code == 0, result.output
    old = json.load(open(os.path.join(s1_run, "config.json")))["config"]
    new = json.load(open(os.path.join(again, "config.json")))["config"]
    assert new["steps"] == 2 and new["out"] == again
    assert {k: v for k, v in new.items() if k not in ("steps", "out")} == \
        {k: v for k, v in old.items() if k not in ("steps", "out")}
    assert new["lr"] == 0.002 and new["seed"] == 3 and new["term_weights"] == {"clip-tiny/text": 0.5}
    _one_line_error(_invoke("stage2", "--config", os.path.join(s1_run, "config.json"), "--out",
                            str(tmp_path / "x")), "'stage1' run", "'stage2'")


def test_epochs_of_a_batch_or_two_read_in_the_main_process(small_demo_cache, tmp_path):
    # 40 train shapes in batches of 16: 2 batches per epoch, fewer than 4 per worker of 2
    out = str(tmp_path / "short")
    result = _invoke("stage1", "--cache", small_demo_cache, "--out", out, "--steps", "3", "--batch-size", "16",
                     "--num-points", "128", "--workers", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "reading in the main process" in result.output
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["loader_workers"] == 0 and config["config"]["workers"] == 2 and config["batches_per_epoch"] == 2


def test_a_run_whose_workers_and_process_group_fail_to_shut_down_keeps_its_checkpoint(small_demo_cache, tmp_path,
                                                                                        monkeypatch):
    from torch.utils.data import dataloader

    import train.loop

    original = dataloader._MultiProcessingDataLoaderIter._shutdown_workers

    def stuck_workers(self):
        original(self)  # they do go, so the test leaves no process behind; the failure is what is reported
        if not getattr(self, "_reported", False):  # once: the iterator's __del__ shuts down again
            self._reported = True
            raise TimeoutError("worker 0 still alive after 5.0 seconds")

    def broken_group():
        raise RuntimeError("Connection closed by peer [127.0.0.1]:29500\nmore lines")

    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "_shutdown_workers", stuck_workers)
    monkeypatch.setattr(train.loop, "close_distributed", broken_group)
    out = str(tmp_path / "run")
    result = CliRunner().invoke(app, ["stage1", "--cache", small_demo_cache, "--out", out,
                                     *FAST[:-3], "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output + result.stderr
    assert os.path.exists(os.path.join(out, "last.pt")) and os.path.exists(os.path.join(out, "metrics.csv"))
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2 and "Traceback" not in result.stderr
    assert "data loader's workers" in warnings[0] and "TimeoutError: worker 0 still alive" in warnings[0]
    assert "process group" in warnings[1] and "Connection closed by peer" in warnings[1]
    assert "more lines" not in result.stderr
    state = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert state["step"] == 1
