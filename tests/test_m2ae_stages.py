"""Point-M2AE through every command exactly as Point-MAE: stage-1, stage-2 (its own multi-scale masking and the
jigsaw on its coarsest tokens), export-teacher, eval, finetune, fewshot-style recipes, segment, report and
export-encoder to the official format and back - on the small demo cache, with the tiny preset, via the CLI."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from train import load_encoder
from train.cli import app

FAST = ["--batch-size", "4", "--num-points", "128", "--workers", "0", "--no-progress"]
MODEL = ["--model", "point-m2ae-tiny"]


def _ok(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def m2ae_s1(small_demo_cache, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("m2ae") / "s1")
    _ok("stage1", "--cache", small_demo_cache, "--out", out, "--steps", "3", *MODEL, *FAST)
    return out


def test_stage1_trains_a_point_m2ae_student_and_records_it(m2ae_s1, small_demo_cache):
    state = torch.load(os.path.join(m2ae_s1, "last.pt"), weights_only=True)
    assert state["encoder"]["name"] == "point-m2ae" and "model_config" not in state
    assert state["encoder"]["config"]["local_attention"] is False  # pre-training attends globally, as the official
    config = json.load(open(os.path.join(m2ae_s1, "config.json")))
    assert config["encoder"]["name"] == "point-m2ae" and config["config"]["model"] == "point-m2ae-tiny"
    result = json.loads(_ok("eval", "zeroshot", "--cache", small_demo_cache, "--ckpt",
                            os.path.join(m2ae_s1, "last.pt"), "--num-points", "128", "--json"))
    assert result["num_classes"] == 10


def test_stage2_distils_the_coarsest_tokens_with_its_own_masking(m2ae_s1, small_demo_cache, tmp_path):
    from train.stages.stage2 import Stage2Config, Stage2Task

    teacher = os.path.join(m2ae_s1, "last.pt")
    out = str(tmp_path / "s2")
    _ok("stage2", "--cache", small_demo_cache, "--teacher", teacher, "--out", out, "--steps", "2", *FAST)
    metrics = open(os.path.join(out, "metrics.csv")).read()
    assert "loss/local" in metrics and "loss/global" in metrics
    task = Stage2Task(Stage2Config(cache=small_demo_cache, out=str(tmp_path / "x"), teacher=teacher))
    model = task.build(None, "cpu", 0, 1)
    assert model.cfg.mask_ratio == 0.8  # the family's own default
    encoder = model.student.encoder
    points = torch.rand(2, 128, 3) * 2 - 1
    patches = encoder.tokenize(points)
    taught = task.teacher(patches)
    assert taught.tokens.shape == (2, encoder.num_tokens, encoder.token_dim) and taught.cls is None
    torch.manual_seed(0)
    mask = encoder.random_mask(patches, 0.8)
    perm = torch.stack([torch.randperm(encoder.num_tokens) for _ in range(2)])
    out = model(patches, taught.tokens, taught.global_feature, mask=mask, perm=perm, details=True)
    assert out["global_input"].shape == (2, int((~mask[0]).sum()), encoder.token_dim)  # no cls: tokens only
    identity = torch.arange(encoder.num_tokens).expand(2, -1)
    plain = model(patches, taught.tokens, taught.global_feature, mask=mask, perm=identity)
    assert abs(float((out["local"] - plain["local"]).detach())) > 1e-4  # the jigsaw changes the loss here too

    # Table 8 for Point-M2AE: its own hierarchical reconstruction replaces the local term (--target, the old name)
    points_run = str(tmp_path / "points")
    _ok("stage2", "--cache", small_demo_cache, "--teacher", teacher, "--out", points_run, "--steps", "2",
        "--target", "points", "--no-global", *FAST)
    rows = open(os.path.join(points_run, "metrics.csv")).read()
    assert "loss/points" in rows and "loss/local" not in rows and "loss/global" not in rows
    assert json.load(open(os.path.join(points_run, "config.json")))["config"]["target"] == "points"
    state = torch.load(os.path.join(points_run, "last.pt"), weights_only=True)
    assert any(k.startswith("hierarchical.token_prop.0.") for k in state["decoders"])


def test_exported_teacher_features_of_point_m2ae_equal_on_the_fly_ones(m2ae_s1, small_demo_cache, tmp_path):
    import shutil

    from torch.utils.data import DataLoader

    from train.data.objects import ObjectStream
    from train.export_teacher import export_teacher
    from train.stages.stage2 import Stage2Config, Stage2Task

    url = str(tmp_path / "cache.zarr")
    shutil.copytree(small_demo_cache, url)
    teacher = os.path.join(m2ae_s1, "last.pt")
    assert "tokens 16x128, global 128" in export_teacher(teacher, url, num_points=128, progress=False)
    task = Stage2Task(Stage2Config(cache=url, out=str(tmp_path / "x"), teacher=teacher, teacher_source="cache",
                                   num_points=128))
    stream = ObjectStream(url, task.stream_config())
    stream.set_position(0, 0, 8)
    batch = next(iter(DataLoader(stream, batch_size=None)))
    taught = task.teacher(task.teacher.encoder.tokenize(batch["points"]))
    torch.testing.assert_close(batch[f"{task.teacher_name}/tokens"], taught.tokens, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(batch[f"{task.teacher_name}/global"], taught.global_feature, atol=2e-2, rtol=1e-2)


def test_finetune_and_segment_from_point_m2ae_then_export_for_the_official_code(m2ae_s1, small_demo_cache,
                                                                               tmp_path):
    init = os.path.join(m2ae_s1, "last.pt")
    ft = str(tmp_path / "ft")
    _ok("finetune", "--cache", small_demo_cache, "--init", init, "--out", ft, "--epochs", "1",
        "--warmup-epochs", "0", *FAST)
    state = torch.load(os.path.join(ft, "last.pt"), weights_only=True)
    config = state["encoder"]["config"]
    # the official ModelNet40 recipe: local attention, 16/8/8 neighbours, mean + max, label smoothing 0.3
    assert config["local_attention"] is True and config["group_sizes"] == (16, 8, 8)
    assert config["global_pool"] == "mean+max" and state["model"]["head.0.weight"].shape[1] == 128
    run_config = json.load(open(os.path.join(ft, "config.json")))["config"]
    assert run_config["label_smoothing"] == 0.3
    _ok("report", ft)
    seg = str(tmp_path / "seg")
    _ok("segment", "--cache", small_demo_cache, "--init", init, "--out", seg, "--epochs", "1", "--warmup-epochs", "0",
        *FAST)
    seg_state = torch.load(os.path.join(seg, "last.pt"), weights_only=True)
    assert seg_state["encoder"]["config"]["scale_norms"] is True
    assert any(k.startswith("propagations.2.") for k in seg_state["model"])  # the per-level head
    _ok("eval", "partseg", "--cache", small_demo_cache, "--ckpt", os.path.join(seg, "last.pt"))
    official = str(tmp_path / "ft.pth")
    _ok("export-encoder", os.path.join(ft, "last.pt"), "--format", "point-m2ae", "--out", official)
    back = torch.load(official, weights_only=True)["base_model"]
    assert "norm.weight" in back and all(k.startswith(("h_encoder.", "norm.")) for k in back)
    mine, theirs = load_encoder(os.path.join(ft, "last.pt")), load_encoder(official)
    points = torch.rand(2, 128, 3) * 2 - 1
    torch.testing.assert_close(theirs(points)[1], mine(points)[1], atol=0, rtol=0)
