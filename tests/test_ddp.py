"""Real `torchrun` (gloo, CPU, 2 ranks): every stage keeps the ranks' weights bit-identical, and a 2-rank run
stopped and resumed repeats the uninterrupted one exactly."""

from __future__ import annotations

import csv
import json
import os
import subprocess

import pytest
import torch
from torchrun import torchrun

HERE = os.path.dirname(__file__)


def _torchrun(stage: str, **options) -> subprocess.CompletedProcess:
    """Any task of train.tasks.TASKS under 2-process torchrun (tests/ddp_run.py)."""
    return torchrun(os.path.join(HERE, "ddp_run.py"), stage, json.dumps(options))


def _rank_params(out: str) -> tuple[dict, dict]:
    return tuple(torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=True) for r in (0, 1))


def _assert_identical(out: str) -> None:
    a, b = _rank_params(out)
    assert a.keys() == b.keys() and len(a) > 0
    different = [n for n in a if not torch.equal(a[n], b[n])]
    assert not different, f"ranks differ in {different[:5]}"


def _losses(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.csv")) as f:
        return [{k: v for k, v in r.items() if k.startswith("loss/")} for r in csv.DictReader(f)]


@pytest.mark.parametrize("stage", ["stage1", "joint"])
def test_stage1_and_joint_ranks_hold_identical_weights(small_demo_cache, tmp_path, stage):
    # joint: one forward with the student registered twice (the objective's and the masked branch's): every
    # parameter, the decoders and temperatures too, gets its gradient averaged, or DDP stalls on the second step
    out = str(tmp_path / stage)
    _torchrun(stage, cache=small_demo_cache, out=out, steps=3, batch_size=4, num_points=128, workers=0,
              log_every=1, warmup_steps=1)
    _assert_identical(out)
    a, _ = _rank_params(out)
    assert any("logit_scale" in n for n in a)  # the temperatures are inside the DDP module too
    if stage == "joint":
        assert any(n.startswith("distill.local_decoder.") for n in a)
        assert len(_losses(out)) == 3 and "loss/local" in _losses(out)[0]


def test_stage2_ranks_hold_identical_weights(small_demo_cache, stage1_ckpt, tmp_path):
    out = str(tmp_path / "s2")
    _torchrun("stage2", cache=small_demo_cache, out=out, teacher=stage1_ckpt, steps=3, batch_size=4,
              num_points=128, workers=0, log_every=1, warmup_steps=1)
    _assert_identical(out)


def test_point_m2ae_stage2_ranks_hold_identical_weights(small_demo_cache, tmp_path):
    # variable-length visible sets per scale, padded per rank: DDP still averages every gradient
    s1 = str(tmp_path / "s1")
    _torchrun("stage1", cache=small_demo_cache, out=s1, model="point-m2ae-tiny", steps=2, batch_size=4,
              num_points=128, workers=0, log_every=1, warmup_steps=1)
    _assert_identical(s1)
    out = str(tmp_path / "s2")
    _torchrun("stage2", cache=small_demo_cache, out=out, teacher=os.path.join(s1, "last.pt"), steps=3, batch_size=4,
              num_points=128, workers=0, log_every=1, warmup_steps=1)
    _assert_identical(out)
    a, _ = _rank_params(out)
    assert any(n.startswith("student.encoder.h_encoder.") for n in a)


def test_point_m2ae_mae_ranks_hold_identical_weights(small_demo_cache, tmp_path):
    # the hierarchical decoder: every parameter it trains has a gradient on both ranks (the scale-0 norm, read by
    # no loss, is frozen), or DDP would stop; the ranks end bit-identical
    out = str(tmp_path / "mae")
    _torchrun("mae", cache=small_demo_cache, out=out, model="point-m2ae-tiny", epochs=1, warmup_epochs=0,
              batch_size=4, num_points=128, workers=0, log_every=1)
    _assert_identical(out)
    a, _ = _rank_params(out)
    assert any("token_prop" in n for n in a)


def test_finetune_ranks_hold_identical_weights(small_demo_cache, stage1_ckpt, tmp_path):
    out = str(tmp_path / "ft")
    _torchrun("finetune", cache=small_demo_cache, out=out, init=stage1_ckpt, protocol="full", epochs=1,
              warmup_epochs=0, batch_size=4, num_points=128, num_group=8, group_size=16, workers=0, log_every=1,
              val_split=None)
    _assert_identical(out)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["world_size"] == 2 and config["config"]["steps"] == config["batches_per_epoch"] > 1


def test_segment_ranks_hold_identical_weights(small_demo_cache, tmp_path):
    out = str(tmp_path / "seg")
    _torchrun("segment", cache=small_demo_cache, out=out, epochs=1, warmup_epochs=0, batch_size=4, num_points=128,
              num_group=8, group_size=16, workers=0, log_every=1, val_split=None)
    _assert_identical(out)


def test_semseg_ranks_hold_identical_weights(tmp_path):
    from test_semseg import write_rooms

    cache = str(tmp_path / "rooms.zarr")
    write_rooms(cache, [3000, 4000, 5000])
    out = str(tmp_path / "semseg")
    _torchrun("semseg", cache=cache, out=out, epochs=1, warmup_epochs=0, batch_size=2, num_points=256,
              num_group=8, group_size=16, workers=1, log_every=1, val_split=None)
    _assert_identical(out)


def test_detect_ranks_hold_identical_weights(demo_rooms_cache, tmp_path):
    out = str(tmp_path / "detect")
    _torchrun("detect", cache=demo_rooms_cache, out=out, epochs=1, warmup_epochs=0, batch_size=2, num_points=512,
              num_group=16, group_size=16, num_queries=8, dec_layers=2, dec_dim=32, dec_ffn_dim=32, workers=1,
              log_every=1, val_split=None)
    _assert_identical(out)


@pytest.mark.parametrize("mode", ["pretrain", "finetune"])
def test_fusion_ranks_hold_identical_weights(small_scenes_cache, tmp_path, mode):
    out = str(tmp_path / mode)
    weights = {"contrastive": 1.0, "regression": 1.0, "occupancy": 0.5, "codebook": 0.5}
    _torchrun(f"fusion-{mode}", cache=small_scenes_cache, out=out, mode=mode, steps=3, batch_size=1, dim=16, depth=2,
              workers=0, log_every=1, warmup_steps=1, **weights)
    _assert_identical(out)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["world_size"] == 2


def test_a_2_rank_run_stopped_and_resumed_repeats_the_uninterrupted_one(small_demo_cache, stage1_ckpt,
                                                                        tmp_path):
    common = dict(cache=small_demo_cache, teacher=stage1_ckpt, steps=6, batch_size=2, num_points=128, workers=1,
                  log_every=1, warmup_steps=1, ckpt_every=100)
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    _torchrun("stage2", out=full, **common)
    _torchrun("stage2", out=part, stop_at=3, **common)
    _torchrun("stage2", out=part, resume=True, **common)
    assert _losses(part) == _losses(full) and len(_losses(full)) == 6
    for a, b in zip(_rank_params(full), _rank_params(part)):  # both ranks end where the uninterrupted ones did
        assert all(torch.equal(a[n], b[n]) for n in a)
    with open(os.path.join(part, "cost.json")) as f:  # rank 0's record of both stretches, 2 processes each
        cost = json.load(f)
    assert cost["world_size"] == 2 and cost["steps"] == 6 and len(cost["segments"]) == 2
    assert cost["device_seconds"] == pytest.approx(2 * (cost["train_seconds"] + cost["validation_seconds"]))
    assert cost["started_from"]["option"] == "--teacher" and cost["started_from"]["path"] == os.path.abspath(stage1_ckpt)
