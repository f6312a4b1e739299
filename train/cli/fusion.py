"""`train fusion pretrain|finetune`: image-to-LiDAR distillation on a scenes cache."""

from __future__ import annotations

import typer

from train.cli.config_command import config_command
from train.stages.fusion import FusionRunConfig, train_fusion

app = typer.Typer(help="Image-to-LiDAR fusion distillation on a scenes cache.", no_args_is_help=True)
app.command("pretrain")(config_command(
    FusionRunConfig, "fusion-pretrain", train_fusion,
    "Pre-train a LiDAR backbone on the cache's point-pixel pairs (no labels needed).",
    fixed={"mode": "pretrain"}, omit=FusionRunConfig.finetune_only))
app.command("finetune")(config_command(
    FusionRunConfig, "fusion-finetune", train_fusion,
    "Fine-tune for per-point segmentation on a share of the labelled frames.",
    fixed={"mode": "finetune"}, omit=FusionRunConfig.pretrain_only))
