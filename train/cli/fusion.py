"""`train fusion pretrain|finetune`: image-to-LiDAR distillation on a scenes cache."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from train.cli.options import (
    CkptEvery,
    Frames,
    Lr,
    Out,
    Overwrite,
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
    run_config,
    train_and_report,
)

app = typer.Typer(help="Image-to-LiDAR fusion distillation on a scenes cache.", no_args_is_help=True)


def _fusion(ctx: typer.Context, mode: str, config: str | None, resume: bool, stop_at: int | None,
            progress: bool, **values) -> None:
    from train.stages.fusion import FusionRunConfig, train_fusion

    values["warmup_steps"] = min(10, values["steps"])
    cfg = run_config(ctx, FusionRunConfig, f"fusion-{mode}", {**values, "mode": mode}, config,
                      {"weights": ("contrastive", "regression", "occupancy", "codebook"),
                       "warmup_steps": ("steps",)})
    out = cfg.out
    train_and_report(lambda: train_fusion(cfg, resume=resume, progress=progress, stop_at=stop_at), out)



Dim = Annotated[int, typer.Option(help="Backbone width (WaffleIron-style, per-point features).")]
Depth = Annotated[int, typer.Option(help="Backbone blocks (planes xy, xz, yz in turn).")]
Teacher2d = Annotated[Optional[str], typer.Option(help="Pair-feature teacher (default: the cache's only one).")]
MaxPoints = Annotated[Optional[int], typer.Option(help="Random points kept per frame and step (pairs follow).")]


@app.command("pretrain")
def fusion_pretrain(
    ctx: typer.Context, out: Out, cache: RunCache = None, steps: Steps = 200, batch_size: Frames = 2, lr: Lr = 2e-3,
    workers: Workers = 2,
    seed: int = 0, dim: Dim = 64, depth: Depth = 6, teacher: Teacher2d = None, max_points: MaxPoints = 16384,
    contrastive: Annotated[float, typer.Option(help="Weight of the 2D-3D InfoNCE over pairs (0: off).")] = 1.0,
    regression: Annotated[float, typer.Option(help="Weight of the ScaLR cosine regression (0: off).")] = 1.0,
    occupancy: Annotated[float, typer.Option(help="Weight of CMCR occupancy estimation (0: off).")] = 0.0,
    codebook: Annotated[float, typer.Option(help="Weight of the CMCR shared codebook (0: off).")] = 0.0,
    ckpt_every: CkptEvery = 50, log_every: int = 10, precision: Precision = "auto", val_split: ValSplit = None,
    val_cache: ValCache = None, val_every: ValEvery = None, config: RunConfig = None,
    overwrite: Overwrite = False, resume: Resume = False, stop_at: StopAt = None, progress: Progress = True,
) -> None:
    """Pre-train a LiDAR backbone on the cache's point-pixel pairs (no labels needed)."""
    _fusion(ctx, "pretrain", config, resume, stop_at, progress, cache=cache, out=out, steps=steps,
            batch_size=batch_size, lr=lr, workers=workers, seed=seed, dim=dim, depth=depth, ckpt_every=ckpt_every,
            log_every=log_every, precision=precision, overwrite=overwrite, teacher=teacher, max_points=max_points,
            val_split=val_split, val_cache=val_cache, val_every=val_every,
            weights={"contrastive": contrastive, "regression": regression, "occupancy": occupancy,
                     "codebook": codebook})


@app.command("finetune")
def fusion_finetune(
    ctx: typer.Context, out: Out, cache: RunCache = None,
    labels: Annotated[str, typer.Option(help="Share of labelled training frames: 1%, 10% or 100%.")] = "100%",
    init: Annotated[str, typer.Option(help="A `fusion pretrain` checkpoint, or random.")] = "random",
    consistency: Annotated[bool, typer.Option("--consistency/--no-consistency",
                                              help="Fused head + KL(fused || LiDAR-only) (xModel-KD).")] = True,
    steps: Steps = 200, batch_size: Frames = 2, lr: Lr = 2e-3, workers: Workers = 2, seed: int = 0,
    dim: Dim = 64, depth: Depth = 6, teacher: Teacher2d = None, max_points: MaxPoints = 16384,
    ckpt_every: CkptEvery = 50, log_every: int = 10, precision: Precision = "auto", val_split: ValSplit = None,
    val_cache: ValCache = None, val_every: ValEvery = None, config: RunConfig = None,
    overwrite: Overwrite = False, resume: Resume = False, stop_at: StopAt = None, progress: Progress = True,
) -> None:
    """Fine-tune for per-point segmentation on a share of the labelled frames."""
    _fusion(ctx, "finetune", config, resume, stop_at, progress, cache=cache, out=out, steps=steps,
            batch_size=batch_size, lr=lr, workers=workers, seed=seed, dim=dim, depth=depth, ckpt_every=ckpt_every,
            log_every=log_every, precision=precision, overwrite=overwrite, teacher=teacher, max_points=max_points,
            val_split=val_split, val_cache=val_cache, val_every=val_every,
            labels=labels, init=init, consistency=consistency)

