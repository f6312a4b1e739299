"""`train stage1`, `train stage2`, `train mae`, `train joint`, `train export-teacher`: pre-training on an objects cache."""

from __future__ import annotations

from typing import Annotated

import typer

from cache_schema.errors import CacheError
from train.cli.config_command import config_command
from train.cli.options import Cache, Points, Progress, fail
from train.stages.joint import JointConfig, train_joint
from train.stages.mae import MaeConfig, train_mae
from train.stages.stage1 import Stage1Config, train_stage1
from train.stages.stage2 import Stage2Config, train_stage2

stage1 = config_command(
    Stage1Config, "stage1", train_stage1,
    "Stage-1: align a point-encoder student with every teacher in the cache (symmetric InfoNCE).")
stage2 = config_command(
    Stage2Config, "stage2", train_stage2,
    "Stage-2: masked point modelling that distils the frozen stage-1 model's token and global features.")
joint = config_command(
    JointConfig, "joint", train_joint,
    "Single-stage multi-task pre-training (the paper's Table 9 baseline): stage-1's contrastive losses and stage-2's "
    "masked distillation of the student's own features, in one run from random init.")
mae = config_command(
    MaeConfig, "mae", train_mae,
    "Masked point reconstruction, the baselines' own pre-training: Point-MAE or Point-M2AE with its official "
    "objective and recipe (Chamfer-L2 on the masked patches); no teacher.")


def export_teacher(
    ckpt: Annotated[str, typer.Option(help="Stage-1 checkpoint whose features to store.")],
    cache: Cache,
    num_points: Points = 1024,
    batch_size: int = 64,
    progress: Progress = True,
) -> None:
    """Store a stage-1 model's token and global features in an objects cache (for stage2 --teacher-source cache)."""
    from train.export_teacher import export_teacher as run_export

    try:
        typer.echo(run_export(ckpt, cache, num_points=num_points, batch_size=batch_size, progress=progress))
    except (CacheError, FileNotFoundError, ValueError) as e:
        fail(e)

