"""What runs cost (the paper's Table 5): cost.json written by the loop, added to on resume, followed along the
runs' starting checkpoints, and the tables `train report` prints from it."""

from __future__ import annotations

import json
import os

import pytest
import torch

from train.costs import CostClock, cost_chain, previous_cost, write_json
from train.report import chain_table, cost_table, run_cost

TINY = {"batch_size": 4, "num_points": 128, "workers": 0, "log_every": 1, "warmup_steps": 1}


def _cost(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "cost.json")) as f:
        return json.load(f)


def test_a_run_records_its_parameters_and_adds_its_seconds_on_resume(small_demo_cache, tmp_path):
    from train.models.encoders import create_encoder
    from train.stages.stage1 import Stage1Config, Stage1Task, train_stage1

    cfg = Stage1Config(cache=small_demo_cache, out=str(tmp_path / "s1"), steps=2, ckpt_every=1, **TINY)
    train_stage1(cfg, progress=False, stop_at=1)
    first = _cost(cfg.out)
    assert first["steps"] == 1 and first["train_seconds"] > 0
    train_stage1(cfg, resume=True, progress=False)
    cost = _cost(cfg.out)
    task = Stage1Task(cfg)  # a fresh model, built apart from the run
    fresh = task.build(task.make_stream(cfg.cache, 0, 1), torch.device("cpu"), 0, 1)
    total = sum(p.numel() for p in fresh.parameters())
    assert cost["parameters"] == {"total": total, "trainable": total,
                                  "encoder": sum(p.numel() for p in create_encoder("point-mae-tiny").parameters())}
    assert cost["stage"] == "stage1" and cost["device"] == "cpu" and cost["world_size"] == 1
    assert cost["steps"] == 2 and cost["started_from"] is None and cost["validation_seconds"] == 0
    a, b = cost["segments"]
    assert a == first["segments"][0] and (a["first_step"], a["last_step"], b["first_step"], b["last_step"]) == (
        0, 1, 1, 2)
    assert b["train_seconds"] > 0 and cost["train_seconds"] == pytest.approx(a["train_seconds"] + b["train_seconds"])
    assert cost["device_seconds"] == pytest.approx(cost["train_seconds"])
    assert cost["device_hours"] == pytest.approx(cost["device_seconds"] / 3600)
    assert torch.load(os.path.join(cfg.out, "last.pt"), weights_only=True)["cost"]["steps"] == 2


def test_a_resumed_run_takes_the_checkpoints_cost_when_cost_json_is_not_its_step(tmp_path):
    in_ckpt = {"steps": 4, "device_seconds": 8.0}
    assert previous_cost(str(tmp_path), {"step": 4, "cost": in_ckpt}) == in_ckpt  # no cost.json
    write_json(str(tmp_path / "cost.json"), {"steps": 6, "device_seconds": 12.0})  # written after a later save
    assert previous_cost(str(tmp_path), {"step": 4, "cost": in_ckpt}) == in_ckpt
    write_json(str(tmp_path / "cost.json"), {"steps": 4, "device_seconds": 9.0})  # + the validation after the save
    assert previous_cost(str(tmp_path), {"step": 4, "cost": in_ckpt})["device_seconds"] == 9.0
    assert previous_cost(str(tmp_path / "none"), {"step": 4}) is None  # a checkpoint older than costs


def test_validation_is_timed_apart_and_processes_multiply_seconds(monkeypatch, tmp_path):
    now = [100.0]
    monkeypatch.setattr("train.costs.time.perf_counter", lambda: now[0])
    params = {"total": 10, "trainable": 10, "encoder": 8}
    clock = CostClock("stage1", torch.device("cpu"), 4, params, None, None, 0)
    clock.start()
    now[0] += 30.0
    clock.validation(6.0)
    cost = clock.record(5)
    assert (cost["train_seconds"], cost["validation_seconds"], cost["device_seconds"]) == (24.0, 6.0, 120.0)
    resumed = CostClock("stage1", torch.device("cpu"), 2, params, None, cost, 5)  # on 2 processes now
    resumed.start()
    now[0] += 9.0
    total = resumed.record(8)
    assert (total["train_seconds"], total["device_seconds"], total["steps"]) == (33.0, 138.0, 8)
    assert [s["world_size"] for s in total["segments"]] == [4, 2]


def test_a_finetune_run_follows_its_init_back_to_stage1(small_demo_cache, stage1_ckpt, tmp_path):
    from train.downstream.finetune import FinetuneConfig, train_finetune
    from train.models.classifier import PointClassifier
    from train.models.encoders import create_encoder

    ft = str(tmp_path / "ft")
    train_finetune(FinetuneConfig(cache=small_demo_cache, out=ft, init=stage1_ckpt, protocol="linear", epochs=1,
                                  warmup_epochs=0, batch_size=8, num_points=128, num_group=8, group_size=16,
                                  workers=0, val_split=None), progress=False)
    cost = _cost(ft)
    assert cost["started_from"] == {"option": "--init", "checkpoint": stage1_ckpt,
                                    "path": os.path.abspath(stage1_ckpt)}
    fresh = PointClassifier(create_encoder("point-mae-tiny"), 10, "linear")  # the demo's 10 classes
    assert cost["parameters"] == {"total": sum(p.numel() for p in fresh.parameters()),
                                  "trainable": sum(p.numel() for p in fresh.head.parameters()),
                                  "encoder": sum(p.numel() for p in fresh.encoder.parameters())}
    s1 = os.path.dirname(stage1_ckpt)
    assert [r["run_dir"] for r in cost_chain(ft)] == [s1, ft]
    summary = run_cost(ft)
    assert summary["pretrain_hours"] == pytest.approx(_cost(s1)["device_seconds"] / 3600)
    assert summary["finetune_hours"] == pytest.approx(cost["device_seconds"] / 3600)
    assert not summary["pretrain_unknown"] and summary["result"] is None  # not evaluated, did not validate
    table = chain_table(ft)
    assert f"| stage1 | {s1} | cpu x1 | 2 |" in table and f"| finetune | {ft} | cpu x1 |" in table


def _fake_run(root, name: str, stage: str, hours: float | None, source: str | None, params: int = 1_000_000,
              option: str = "--init") -> str:
    run = str(root / name)
    os.makedirs(run)
    if hours is None:  # a run from before cost.json: only its config
        key = option.strip("-")
        write_json(os.path.join(run, "config.json"), {"stage": stage, "config": {key: source}})
        return run
    started = {"option": option, "checkpoint": source, "path": source} if source else None
    write_json(os.path.join(run, "cost.json"), {
        "stage": stage, "device": "cuda:A100", "world_size": 8, "steps": 10, "device_seconds": hours * 3600,
        "device_hours": hours, "parameters": {"total": params, "trainable": params, "encoder": params // 2},
        "started_from": started})
    return run


def test_the_cost_table_sums_its_rows(tmp_path):
    s1 = _fake_run(tmp_path, "s1", "stage1", 1.5, None)
    s2 = _fake_run(tmp_path, "s2", "stage2", 2.25, os.path.join(s1, "last.pt"), option="--teacher")
    ft = _fake_run(tmp_path, "ft", "finetune", 0.5, os.path.join(s2, "best.pt"), params=22_093_327)
    with open(os.path.join(ft, "eval.json"), "w") as f:
        json.dump({"this run": {"overall_accuracy": 0.901}}, f)
    released = tmp_path / "released" / "pointmae.pth"  # a checkpoint outside any run folder
    os.makedirs(released.parent)
    released.write_bytes(b"x")
    mae = _fake_run(tmp_path, "mae-ft", "finetune", 0.75, str(released))
    old = _fake_run(tmp_path, "old-s1", "stage1", None, None)  # recorded no cost
    old_ft = _fake_run(tmp_path, "old-ft", "finetune", 0.25, os.path.join(old, "last.pt"))
    table = cost_table([ft, mae, old_ft]).splitlines()
    assert table[0] == ("| run | devices | #params | stage1 device-h | stage2 device-h | pre-train device-h | "
                        "fine-tune device-h | result |")
    assert table[2] == f"| {ft} | cuda:A100 | 22.1M | 1.5 | 2.25 | 3.75 | 0.5 | OA 90.1% (evaluation) |"
    assert table[3] == f"| {mae} | cuda:A100 | 1M | - | - | 0 + ? | 0.75 | - |"
    assert table[4] == f"| {old_ft} | cuda:A100 | 1M | ? | - | 0 + ? | 0.25 | - |"
    assert run_cost(ft)["hours"] == {"stage1": 1.5, "stage2": 2.25, "finetune": 0.5}
    assert [r["stage"] for r in run_cost(mae)["chain"]] == ["external", "finetune"]
    lines = chain_table(ft).splitlines()
    assert lines[2] == f"| stage1 | {s1} | cuda:A100 x8 | 10 | 1.5 | 1M | 0.5M |"
    assert lines[-3:] == ["pre-train device-hours: 3.75", "fine-tune device-hours: 0.5",
                          "result: OA 90.1% (evaluation)"]


def test_train_report_costs_prints_runs_side_by_side(tmp_path):
    from typer.testing import CliRunner

    from train.cli import app

    s1 = _fake_run(tmp_path, "s1", "stage1", 2.0, None)
    ft = _fake_run(tmp_path, "ft", "finetune", 1.0, os.path.join(s1, "last.pt"))
    result = CliRunner().invoke(app, ["report", "--costs", ft, s1])
    assert result.exit_code == 0, result.output
    assert f"| {ft} | cuda:A100 | 1M | 2 | 2 | 1 | - |" in result.output
    assert f"| {s1} | cuda:A100 | 1M | 2 | 2 | 0 | - |" in result.output
    two = CliRunner().invoke(app, ["report", ft, s1])
    assert two.exit_code == 2 and "--costs" in two.output
