"""Single-stage multi-task pre-training (`train joint`, the paper's Table 9 baseline): its loss against stage-1's
objective and MaskedDistillation recomputed separately, stop-gradient targets, random init, the CLI run and its
checkpoint in resuming, fine-tuning and evaluation (torchrun: tests/test_ddp.py)."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from train.cli import app
from train.data.objects import ObjectStream
from train.stages.joint import JointConfig, JointTask
from train.stages.stage1 import Stage1Objective


def _built(cache: str, out: str, **options):
    """A joint task built as the loop builds it (seed 0, one process), its module and one batch of 4 clouds."""
    task = JointTask(JointConfig(cache=cache, out=out, num_points=128, batch_size=4, workers=0, **options))
    stream = ObjectStream(cache, task.stream_config())
    stream.set_position(0, 0, 4)
    batch = next(iter(DataLoader(stream, batch_size=None)))
    torch.manual_seed(0)
    module = task.build(stream, torch.device("cpu"), 0, 1)
    targets = {t: batch[t] for t in module.head_of}
    return task, module, batch["points"], targets


def _mask_and_perm(module, points):
    g = torch.Generator().manual_seed(1)
    patches = module.student.encoder.tokenize(points)
    b, n = patches.centers.shape[:2]
    mask = torch.rand(b, n, generator=g).argsort(1) < round(0.6 * n)
    perm = torch.rand(b, n, generator=g).argsort(1)
    return mask, perm


def _grads(module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in module.named_parameters()}


def test_the_loss_is_stage1s_plus_the_weighted_distillation_of_the_students_own_detached_features(
        small_demo_cache, tmp_path):
    task, module, points, targets = _built(small_demo_cache, str(tmp_path / "j"), stage2_weight=0.5)
    mask, perm = _mask_and_perm(module, points)
    seen = {}
    module.distill.register_forward_pre_hook(lambda m, args: seen.update(tokens=args[1], glob=args[2]))
    joint = module(points, targets, mask=mask, perm=perm)
    # the reference: stage-1's own objective, and MaskedDistillation fed by a separate no-grad pass of the encoder
    stage1 = Stage1Objective(task.model, task.loss_fn, module.head_of)(points, targets)
    encoder = module.student.encoder
    patches = encoder.tokenize(points)
    with torch.no_grad():
        full = encoder.encode(patches)
    distilled = module.distill(patches, full.tokens, full.global_feature, mask=mask, perm=perm)
    assert set(joint) == set(stage1) | {"local", "global"} and len(stage1) == 4  # the demo cache has 3 terms
    for term in stage1:
        if term != "total":
            torch.testing.assert_close(joint[term], stage1[term], rtol=0, atol=0)
    for term in ("local", "global"):
        torch.testing.assert_close(joint[term], distilled[term])
        assert distilled[term] > 0.05  # a real loss, not a trivially matched one
    torch.testing.assert_close(joint["total"], stage1["total"] + 0.5 * (distilled["local"] + distilled["global"]))
    # the targets are the encoder's full-cloud outputs, and carry no gradient
    assert not seen["tokens"].requires_grad and not seen["glob"].requires_grad
    torch.testing.assert_close(seen["tokens"], full.tokens, rtol=0, atol=0)
    torch.testing.assert_close(seen["glob"], full.global_feature, rtol=0, atol=0)
    # so the gradient is stage-1's plus that of the distillation with constant targets: none flows through them
    g_joint = _grads(module, module(points, targets, mask=mask, perm=perm)["total"])
    g_stage1 = _grads(module, Stage1Objective(task.model, task.loss_fn, module.head_of)(points, targets)["total"])
    g_distill = _grads(module, 0.5 * module.distill(patches, full.tokens, full.global_feature, mask=mask,
                                                    perm=perm)["total"])
    for name in g_joint:
        torch.testing.assert_close(g_joint[name], g_stage1[name] + g_distill[name], rtol=1e-4, atol=1e-6)
        assert g_joint[name].abs().sum() > 0, f"{name} gets no gradient (DDP would stall)"
    assert any(n.startswith("distill.local_decoder.") for n in g_joint)
    assert any(g_distill[n].abs().sum() > 0 for n in g_joint if n.startswith("student.encoder."))


def test_weight_0_is_the_stage1_loss_exactly(small_demo_cache, tmp_path):
    task, module, points, targets = _built(small_demo_cache, str(tmp_path / "j"), stage2_weight=0.0)
    joint = module(points, targets)
    stage1 = Stage1Objective(task.model, task.loss_fn, module.head_of)(points, targets)
    assert torch.equal(joint["total"], stage1["total"]) and joint["local"] > 0


def test_the_switches_reach_the_masked_branch_and_nothing_left_is_refused(small_demo_cache, tmp_path):
    _, module, points, targets = _built(small_demo_cache, str(tmp_path / "j"), use_global=False, mask_ratio=0.5,
                                        decoder_depth=1, shuffle=False)
    cfg = module.distill.cfg
    assert (cfg.mask_ratio, cfg.shuffle, cfg.local, cfg.use_global, cfg.decoder_depth) == (0.5, False, True, False, 1)
    assert "global" not in module(points, targets) and not hasattr(module.distill, "global_decoder")
    with pytest.raises(ValueError, match="--no-local and --no-global together"):
        JointConfig(cache="c", out="o", local=False, use_global=False).validate()
    with pytest.raises(ValueError, match="--stage2-weight must not be negative"):
        JointConfig(cache="c", out="o", stage2_weight=-1.0).validate()


def test_a_cli_run_starts_from_random_init_logs_every_loss_and_its_checkpoint_fine_tunes_and_evaluates(
        small_demo_cache, tmp_path, monkeypatch):
    from train.downstream.finetune import FinetuneConfig
    from train.downstream.recipe import build_encoder
    from train.models.encoders import create_encoder

    first = {}
    build = JointTask.build

    def capture(self, *args):
        module = build(self, *args)
        first.update({k: v.clone() for k, v in self.model.encoder.state_dict().items()})
        return module

    monkeypatch.setattr(JointTask, "build", capture)
    out = str(tmp_path / "joint")
    result = CliRunner().invoke(app, ["joint", "--cache", small_demo_cache, "--out", out, "--steps", "2",
                                      "--batch-size", "4", "--num-points", "128", "--workers", "0", "--log-every", "1",
                                      "--seed", "3", "--val-split", "test", "--no-progress"])
    assert result.exit_code == 0, result.output
    torch.manual_seed(3)  # the loop seeds before building: a fresh encoder of the preset, as `train stage1` starts
    fresh = create_encoder("point-mae-tiny", "pretrain").state_dict()
    assert first.keys() == fresh.keys() and all(torch.equal(first[k], fresh[k]) for k in fresh)
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for column in ("loss/local", "loss/global", "loss/total", "loss/clip-tiny/text", "loss/dinov2-tiny/image"):
        assert float(rows[-1][column]) > 0, column
    assert json.load(open(os.path.join(out, "config.json")))["config"]["stage2_weight"] == 1.0
    assert "zeroshot_top1" in open(os.path.join(out, "validation.csv")).readline()
    state = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert state["stage"] == "joint" and state["decoders"] and state["heads"] and state["loss"]
    saved = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
    assert not torch.equal(saved["pos_embed.0.weight"], fresh["pos_embed.0.weight"])  # it trained
    # a resume restores the student, the temperatures and the decoders (the loop does the rest, as for every task)
    again, module, _, _ = _built(small_demo_cache, out)
    again.load_state(state)
    assert all(torch.equal(v, state["model"][k]) for k, v in again.model.state_dict().items())
    assert all(torch.equal(v, state["loss"][k]) for k, v in again.loss_fn.state_dict().items())
    decoders = {k: v for k, v in module.distill.state_dict().items() if not k.startswith("student.")}
    assert decoders.keys() == state["decoders"].keys()
    assert all(torch.equal(v, state["decoders"][k]) for k, v in decoders.items())
    # `train finetune --init runs/joint/last.pt` starts from exactly this encoder
    cfg = FinetuneConfig(cache=small_demo_cache, out=str(tmp_path / "ft"), init=os.path.join(out, "last.pt"),
                         num_points=128).resolved()
    loaded = build_encoder(cfg, cfg.recipe).state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    # zero-shot (through the text head it trained) and the linear probe read it
    for mode, key in (("zeroshot", "top1"), ("linear", "accuracy")):
        result = CliRunner().invoke(app, ["eval", mode, "--cache", small_demo_cache, "--ckpt",
                                          os.path.join(out, "last.pt"), "--num-points", "128", "--json"])
        assert result.exit_code == 0, result.output
        assert 0 <= json.loads(result.output)[key] <= 1
