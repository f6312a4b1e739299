"""`train stage1`, `train stage2`, `train export-teacher`: pre-training on an objects cache."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cache_schema.errors import CacheError
from train.cli.options import (
    BatchSize,
    Cache,
    CkptEvery,
    Lr,
    Model,
    Out,
    Overwrite,
    Points,
    Precision,
    Progress,
    Resume,
    RunCache,
    RunConfig,
    Steps,
    StopAt,
    ValCache,
    ValEvery,
    ValSplit,
    Workers,
    fail,
    run_config,
    term_weights,
    train_and_report,
)


def stage1(
    ctx: typer.Context,
    out: Out,
    cache: RunCache = None,
    model: Model = "point-mae-tiny",
    steps: Steps = 300,
    batch_size: BatchSize = 32,
    lr: Lr = 1e-3,
    weight_decay: float = 0.05,
    warmup_steps: int = 20,
    grad_clip: float = 1.0,
    num_points: Points = 1024,
    sampling: Annotated[str, typer.Option(help="random or fps subsampling of the cached points.")] = "random",
    workers: Workers = 2,
    seed: int = 0,
    ckpt_every: CkptEvery = 100,
    log_every: int = 10,
    weight: Annotated[Optional[list[str]], typer.Option(
        help="Term weight, e.g. clip-vit-b16/text=1.0 (repeat); the terms are the cache's.")] = None,
    precision: Precision = "auto",
    val_split: ValSplit = None,
    val_cache: ValCache = None,
    val_every: ValEvery = None,
    config: RunConfig = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    stop_at: StopAt = None,
    progress: Progress = True,
) -> None:
    """Stage-1: align a Point-MAE student with every teacher in the cache (symmetric InfoNCE)."""
    from train.stages.stage1 import Stage1Config, train_stage1

    values = dict(cache=cache, out=out, model=model, steps=steps, batch_size=batch_size, lr=lr,
                  weight_decay=weight_decay, warmup_steps=warmup_steps, grad_clip=grad_clip, num_points=num_points,
                  sampling=sampling, workers=workers, seed=seed, ckpt_every=ckpt_every, log_every=log_every,
                  precision=precision, overwrite=overwrite, term_weights=term_weights(weight),
                  val_split=val_split, val_cache=val_cache, val_every=val_every)
    cfg = run_config(ctx, Stage1Config, "stage1", values, config, {"term_weights": ("weight",)})
    train_and_report(lambda: train_stage1(cfg, resume=resume, progress=progress, stop_at=stop_at), out)


def stage2(
    ctx: typer.Context,
    out: Out,
    cache: RunCache = None,
    teacher: Annotated[Optional[str], typer.Option(
        help="Stage-1 checkpoint: the frozen teacher and the initialisation (required unless --config gives it).")]
    = None,
    steps: Steps = 300,
    batch_size: BatchSize = 32,
    lr: Lr = 5e-4,
    weight_decay: float = 0.05,
    warmup_steps: int = 20,
    grad_clip: float = 1.0,
    num_points: Points = 1024,
    workers: Workers = 2,
    seed: int = 0,
    mask_ratio: Annotated[Optional[float], typer.Option(
        help="Share of the encoder's output tokens hidden from it. Default: the encoder family's own (Point-MAE "
             "0.6 of its patches; Point-M2AE 0.8 of its coarsest scale).")] = None,
    shuffle: Annotated[bool, typer.Option("--shuffle/--no-shuffle", help="Token shuffling before the local decoder.")]
    = True,
    local: Annotated[bool, typer.Option("--local/--no-local", help="Local (per-token) distillation, eq. 4.")] = True,
    use_global: Annotated[bool, typer.Option("--global/--no-global", help="Global distillation, eq. 5.")] = True,
    target: Annotated[str, typer.Option(help="features (stage-1 tokens) or points (Point-MAE Chamfer "
                                             "reconstruction, the Table 8 baseline).")] = "features",
    init: Annotated[str, typer.Option(help="ckpt (from --teacher) or random (the Table 9 baseline).")] = "ckpt",
    teacher_source: Annotated[str, typer.Option(help="model: run the frozen teacher every step; cache: stream the "
                                                     "features `train export-teacher` stored.")] = "model",
    decoder_depth: Annotated[int, typer.Option(help="Transformer blocks of each decoder.")] = 2,
    encoder_lr_scale: Annotated[Optional[float], typer.Option(
        help="The encoder's learning rate as a share of --lr (the new decoders get --lr), so that their first, "
             "random gradients do not undo stage-1. Default: 0.1 with --init ckpt, 1 with --init random.")] = None,
    ckpt_every: CkptEvery = 100,
    log_every: int = 10,
    precision: Precision = "auto",
    val_split: ValSplit = None,
    val_cache: ValCache = None,
    val_every: ValEvery = None,
    config: RunConfig = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    stop_at: StopAt = None,
    progress: Progress = True,
) -> None:
    """Stage-2: masked point modelling that distils the frozen stage-1 model's token and global features."""
    from train.stages.stage2 import Stage2Config, train_stage2

    values = dict(cache=cache, out=out, teacher=teacher, steps=steps, batch_size=batch_size, lr=lr,
                  weight_decay=weight_decay, warmup_steps=warmup_steps, grad_clip=grad_clip, num_points=num_points,
                  workers=workers, seed=seed, mask_ratio=mask_ratio, shuffle=shuffle, local=local,
                  use_global=use_global, target=target, init=init, teacher_source=teacher_source,
                  decoder_depth=decoder_depth, encoder_lr_scale=encoder_lr_scale, ckpt_every=ckpt_every,
                  log_every=log_every, precision=precision, overwrite=overwrite, val_split=val_split,
                  val_cache=val_cache, val_every=val_every)
    cfg = run_config(ctx, Stage2Config, "stage2", values, config)
    train_and_report(lambda: train_stage2(cfg, resume=resume, progress=progress, stop_at=stop_at), out)


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

