"""Run settings are written once, as config fields: the commands' options, help, defaults, checks and `--config`
re-runs all come from them."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from train.cli import app
from train.cli.config_command import CONTROLS, config_command
from train.downstream.detect import DetectConfig
from train.downstream.fewshot import FewshotConfig
from train.downstream.finetune import FinetuneConfig
from train.downstream.segment import SegmentConfig
from train.downstream.semseg import SemsegConfig
from train.loop import LoopConfig
from train.settings import check_settings, option_name
from train.stages.fusion import FusionRunConfig
from train.stages.joint import JointConfig
from train.stages.stage1 import Stage1Config
from train.stages.stage2 import Stage2Config

COMMANDS = {  # command path -> (config class, settings the command fixes or leaves out, run controls)
    ("stage1",): (Stage1Config, (), tuple(CONTROLS)),
    ("stage2",): (Stage2Config, (), tuple(CONTROLS)),
    ("joint",): (JointConfig, (), tuple(CONTROLS)),
    ("finetune",): (FinetuneConfig, (), tuple(CONTROLS)),
    ("segment",): (SegmentConfig, (), tuple(CONTROLS)),
    ("semseg",): (SemsegConfig, (), tuple(CONTROLS)),
    ("detect",): (DetectConfig, (), tuple(CONTROLS)),
    ("fewshot",): (FewshotConfig, (), ("resume", "progress")),
    ("fusion", "pretrain"): (FusionRunConfig, ("mode", *FusionRunConfig.finetune_only), tuple(CONTROLS)),
    ("fusion", "finetune"): (FusionRunConfig, ("mode", *FusionRunConfig.pretrain_only), tuple(CONTROLS)),
}


def _click_command(path: tuple[str, ...]):
    command = get_command(app)
    for name in path:
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_setting_is_an_option_with_the_fields_default_and_help(path):
    cls, left_out, controls = COMMANDS[path]
    command = _click_command(path)
    params = {p.name: p for p in command.params}
    offered = [f for f in dataclasses.fields(cls) if f.name not in (*left_out, *getattr(cls, "not_options", ()))]
    expected = {f.name for f in offered} | set(controls) | ({"config"} if path != ("fewshot",) else set())
    assert set(params) == expected
    described = cls.described_defaults() if hasattr(cls, "described_defaults") else {}
    for f in offered:
        param = params[f.name]
        assert option_name(f) in param.opts
        shown = param.help.replace("\\[", "[")  # brackets escaped for rich, which would eat them as markup
        assert shown.startswith(f.metadata["help"]) and f.metadata["help"], f.name
        if f.name in described:
            assert f"[recipe: {described[f.name]}]" in shown
        if f.default is not dataclasses.MISSING and f.name != "term_weights":
            assert param.default == f.default, f.name
    assert params["out"].required


def test_recipe_defaults_are_shown_from_the_recipe_tables():
    help_of = {p.name: p.help for p in _click_command(("finetune",)).params}
    assert "[recipe: 1024 modelnet40, 2048 scanobjectnn]" in help_of["num_points"]
    assert "[recipe: 300]" in help_of["epochs"]
    assert "[recipe: 150]" in {p.name: p.help for p in _click_command(("fewshot",)).params}["epochs"]
    assert "[recipe: 2048]" in {p.name: p.help for p in _click_command(("segment",)).params}["num_points"]


@pytest.mark.parametrize("cfg, words", [
    (LoopConfig(cache="c", out="o", steps=0), "--steps must be positive, got 0"),
    (LoopConfig(cache="c", out="o", workers=-1), "--workers must not be negative"),
    (LoopConfig(cache="c", out="o", precision="fp8"), "--precision is one of auto, fp32, bf16, fp16"),
    (Stage2Config(cache="c", out="o", target="voxels"), "--local-target is one of features, points, got 'voxels'"),
    (Stage2Config(cache="c", out="o", mask_ratio=1.0), "--mask-ratio must be in (0, 1)"),
    (FinetuneConfig(cache="c", out="o", protocol="mlp9"), "--protocol is one of full, mlp3, linear"),
    (FinetuneConfig(cache="c", out="o", label_smoothing=1.0), "--label-smoothing must be in [0, 1)"),
    (FusionRunConfig(cache="c", out="o", codebook=-1.0), "--codebook must not be negative"),
])
def test_settings_are_checked_by_their_declared_choices_and_bounds(cfg, words):
    check_settings(type(cfg)(cache="c", out="o"))  # the defaults pass
    with pytest.raises(ValueError, match=re.escape(words)):
        check_settings(cfg)


def _capturing_app(cls, stage, **kwargs):
    seen = {}

    def run(cfg, **controls):
        seen["cfg"], seen["controls"] = cfg, controls
        return {}

    app = typer.Typer()
    app.command()(config_command(cls, stage, run, "A test command.", **kwargs))
    app.command("other")(lambda: None)  # two commands: typer keeps the command's name on the line
    return app, seen


def test_config_file_settings_are_defaults_that_the_command_line_overrides(tmp_path):
    app, seen = _capturing_app(Stage1Config, "stage1")
    saved = dataclasses.asdict(Stage1Config(cache="saved.zarr", out="old", lr=0.002, seed=3, steps=7,
                                            term_weights={"clip-tiny/text": 0.5}, val_split="val"))
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"stage": "stage1", "config": saved}))
    result = CliRunner().invoke(app, ["stage1", "--config", str(path), "--out", "new", "--seed", "5",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.cache, cfg.out, cfg.lr, cfg.seed, cfg.steps) == ("saved.zarr", "new", 0.002, 5, 7)
    assert cfg.term_weights == {"clip-tiny/text": 0.5} and cfg.val_split == "val"
    assert seen["controls"] == {"resume": False, "stop_at": None, "progress": False}
    typed = CliRunner().invoke(app, ["stage1", "--config", str(path), "--out", "new", "--weight", "a/text=2"])
    assert typed.exit_code == 0 and seen["cfg"].term_weights == {"a/text": 2.0}


def test_an_old_fusion_config_with_one_weights_dict_still_reruns(tmp_path):
    app, seen = _capturing_app(FusionRunConfig, "fusion-pretrain", fixed={"mode": "pretrain"},
                               omit=FusionRunConfig.finetune_only)
    old = {k: v for k, v in dataclasses.asdict(FusionRunConfig(cache="s.zarr", out="o")).items()
           if k not in ("contrastive", "regression", "occupancy", "codebook")}
    old["weights"] = {"contrastive": 0.0, "regression": 1.0, "occupancy": 0.25, "codebook": 0.0}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"stage": "fusion-pretrain", "config": old}))
    result = CliRunner().invoke(app, ["fusion-pretrain", "--config", str(path), "--out", "x", "--codebook", "0.5"])
    assert result.exit_code == 0, result.output
    assert seen["cfg"].weights == {"contrastive": 0.0, "regression": 1.0, "occupancy": 0.25, "codebook": 0.5}


def test_a_rerun_keeps_saved_unset_values_and_derives_derived_ones_again(tmp_path):
    app, seen = _capturing_app(FusionRunConfig, "fusion-finetune", fixed={"mode": "finetune"},
                               omit=FusionRunConfig.pretrain_only)
    saved = dataclasses.asdict(FusionRunConfig(cache="s.zarr", out="o", mode="finetune", steps=200, max_points=None))
    assert saved["warmup_steps"] == 10
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"stage": "fusion-finetune", "config": saved}))
    assert CliRunner().invoke(app, ["fusion-finetune", "--config", str(path), "--out", "x", "--steps", "4"]).exit_code == 0
    assert seen["cfg"].max_points is None and seen["cfg"].warmup_steps == 4  # None kept; min(10, steps) again
    chosen = {**saved, "warmup_steps": 3}
    path.write_text(json.dumps({"stage": "fusion-finetune", "config": chosen}))
    assert CliRunner().invoke(app, ["fusion-finetune", "--config", str(path), "--out", "x", "--steps", "4"]).exit_code == 0
    assert seen["cfg"].warmup_steps == 3  # a chosen warm-up stays

    app, seen = _capturing_app(Stage2Config, "stage2")
    saved = dataclasses.asdict(Stage2Config(cache="c", out="o", teacher="t.pt"))
    path.write_text(json.dumps({"stage": "stage2", "config": saved}))
    assert CliRunner().invoke(app, ["stage2", "--config", str(path), "--out", "x", "--init", "random"]).exit_code == 0
    assert seen["cfg"].encoder_lr_scale == 1.0  # the --init random default, not the saved run's 0.1


def test_fusion_keeps_every_point_with_max_points_0():
    check_settings(FusionRunConfig(cache="c", out="o", max_points=0))


@pytest.mark.parametrize("content, words", [
    ('{"stage": "stage2", "config": {}}', "'stage2' run; this command trains 'stage1'"),
    ("not json", "--config"),
])
def test_a_wrong_or_broken_config_file_is_one_line(tmp_path, content, words):
    app, seen = _capturing_app(Stage1Config, "stage1")
    path = tmp_path / "config.json"
    path.write_text(content)
    result = CliRunner().invoke(app, ["stage1", "--config", str(path), "--out", "x"])
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
    assert "cfg" not in seen


def test_a_missing_cache_and_a_bad_weight_are_one_line():
    app, seen = _capturing_app(Stage1Config, "stage1")
    result = CliRunner().invoke(app, ["stage1", "--out", "x"])
    assert result.exit_code == 2 and "--cache is required" in result.output
    result = CliRunner().invoke(app, ["stage1", "--out", "x", "--cache", "c", "--weight", "no-number"])
    assert result.exit_code == 2 and "--weight is TERM=NUMBER" in result.output and "cfg" not in seen
