"""`train finetune`, `train fewshot`, `train segment`, `train export-encoder`: a pre-trained encoder put to use."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from cache_schema.errors import CacheError
from train.cli.options import (
    ENCODERS_HELP,
    Out,
    Overwrite,
    Precision,
    Progress,
    Resume,
    RunCache,
    RunConfig,
    StopAt,
    ValSplit,
    Workers,
    fail,
    run_config,
    train_and_report,
)

Init = Annotated[str, typer.Option(help="Encoder to start from: a stage-1 / stage-2 / finetune checkpoint, an exported "
                                        ".safetensors, or random.")]
ModelPreset = Annotated[str, typer.Option("--model", help=f"Encoder with --init random: {ENCODERS_HELP}.")]


def finetune(
    ctx: typer.Context,
    out: Out,
    cache: RunCache = None,
    init: Init = "random",
    protocol: Annotated[str, typer.Option(help="full (encoder + MLP-3 head trained), mlp3 (encoder frozen, MLP-3 "
                                               "head) or linear (encoder frozen, one linear layer).")] = "full",
    model: ModelPreset = "point-mae-tiny",
    recipe: Annotated[str, typer.Option(help="auto (from the cache), modelnet40 or scanobjectnn: the defaults of "
                                             "every option below left unset.")] = "auto",
    epochs: Annotated[Optional[int], typer.Option(help="Epochs [recipe: 300].")] = None,
    warmup_epochs: Annotated[Optional[int], typer.Option(help="Linear warm-up epochs [recipe: 10].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Shapes per step on each process [recipe: 32].")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak AdamW learning rate [recipe: 5e-4].")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="[recipe: 0.05]")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="[recipe: 10]")] = None,
    num_points: Annotated[Optional[int], typer.Option(help="Points per shape [recipe: 1024 ModelNet40, 2048 "
                                                           "ScanObjectNN].")] = None,
    num_group: Annotated[Optional[int], typer.Option(help="Patches per cloud [recipe: 64, 128 ScanObjectNN].")]
    = None,
    group_size: Annotated[Optional[int], typer.Option(help="Points per patch [recipe: 32].")] = None,
    sampling: Annotated[str, typer.Option(help="prefix (Point-MAE: N of the first 1.17 N stored points, random "
                                               "order), random, first or fps.")] = "prefix",
    augmentation: Annotated[Optional[str], typer.Option(help="scale-translate, rotate or pretrain [recipe: "
                                                             "scale-translate ModelNet40, rotate ScanObjectNN].")]
    = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="[recipe: 0.2]")] = None,
    drop_path_rate: Annotated[Optional[float], typer.Option(help="[recipe: 0.1]")] = None,
    val_split: ValSplit = "test",
    workers: Workers = 2,
    seed: int = 0,
    log_every: int = 10,
    precision: Precision = "auto",
    config: RunConfig = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    stop_at: StopAt = None,
    progress: Progress = True,
) -> None:
    """Fine-tune an encoder for shape classification (Point-MAE's recipes); validates on the test split every
    epoch, as the published protocol does, and keeps the best as best.pt."""
    from train.downstream.finetune import FinetuneConfig, train_finetune

    values = dict(cache=cache, out=out, init=init, protocol=protocol, model=model, recipe=recipe, epochs=epochs,
                  warmup_epochs=warmup_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                  grad_clip=grad_clip, num_points=num_points, num_group=num_group, group_size=group_size,
                  sampling=sampling, augmentation=augmentation, label_smoothing=label_smoothing,
                  drop_path_rate=drop_path_rate, val_split=val_split, workers=workers, seed=seed,
                  log_every=log_every, precision=precision, overwrite=overwrite)
    cfg = run_config(ctx, FinetuneConfig, "finetune", values, config)
    train_and_report(lambda: train_finetune(cfg, resume=resume, progress=progress, stop_at=stop_at), out)


def export_encoder(
    ckpt: Annotated[str, typer.Argument(help="A stage-1, stage-2, finetune or segment checkpoint, an exported "
                                              "encoder, or a released Point-MAE / Point-M2AE checkpoint.")],
    out: Annotated[str, typer.Option(help="The file to write: .safetensors, or .pth with --format point-mae / "
                                          "point-m2ae.")],
    fmt: Annotated[str, typer.Option("--format", help="safetensors (this tool: nothing pickled, load with `from "
                                                      "train import load_encoder`), or the encoder's family "
                                                      "(point-mae, point-m2ae): {'base_model': state} in the "
                                                      "official names + OUT.yaml with the official config's model: "
                                                      "section, for the official fine-tuning code.")]
    = "safetensors",
) -> None:
    """Write the encoder alone: for this tool (safetensors) or for the official repositories (.pth + .yaml)."""
    from train.encoder_io import export_encoder as run_export

    wanted = ".safetensors" if fmt == "safetensors" else ".pth"
    if not out.endswith(wanted):
        fail(ValueError(f"--out must end in {wanted} with --format {fmt}, got {out!r}"))
    try:
        typer.echo(json.dumps(run_export(ckpt, out, fmt)))
    except (CacheError, FileNotFoundError, ValueError) as e:
        fail(e)


def fewshot(
    out: Out,
    cache: Annotated[str, typer.Option(help="A points cache with train and test splits (ModelNet40 in the papers).")],
    way: Annotated[int, typer.Option(help="Classes per fold (5 or 10 in the papers).")] = 5,
    shot: Annotated[int, typer.Option(help="Training objects per class (10 or 20).")] = 10,
    folds: Annotated[int, typer.Option(help="Folds, each fine-tuned from --init.")] = 10,
    queries: Annotated[int, typer.Option(help="Test objects per class and fold.")] = 20,
    init: Init = "random",
    model: ModelPreset = "point-mae-tiny",
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per fold [Point-MAE's few-shot config: 150].")]
    = None,
    warmup_epochs: Annotated[Optional[int], typer.Option(help="[10]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="[32, at most a fold's training objects]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="[5e-4]")] = None,
    num_points: Annotated[Optional[int], typer.Option(help="[recipe: 1024]")] = None,
    num_group: Annotated[Optional[int], typer.Option(help="[recipe: 64]")] = None,
    group_size: Annotated[Optional[int], typer.Option(help="[recipe: 32]")] = None,
    workers: Workers = 0,
    seed: int = 0,
    precision: Precision = "auto",
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Few-shot classification as published (Point-BERT's n-way m-shot procedure, full fine-tuning per fold):
    mean and std of the folds' accuracy, written to OUT/fewshot.json."""
    from train.downstream.fewshot import run_fewshot
    from train.downstream.finetune import FinetuneConfig

    try:
        cfg = FinetuneConfig(cache=cache, out=out, init=init, protocol="full", model=model, epochs=epochs,
                             warmup_epochs=warmup_epochs, batch_size=batch_size, lr=lr, num_points=num_points,
                             num_group=num_group, group_size=group_size, workers=workers, seed=seed,
                             precision=precision, overwrite=overwrite)
        summary = run_fewshot(cfg, way, shot, folds, queries, progress=progress)
    except (CacheError, FileNotFoundError, ValueError) as e:
        fail(e)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "per_fold"}))


def segment(
    ctx: typer.Context,
    out: Out,
    cache: RunCache = None,
    init: Init = "random",
    model: ModelPreset = "point-mae-tiny",
    train_split: Annotated[Optional[str], typer.Option(help="[trainval when the cache has it, else train]")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs [Point-MAE: 300].")] = None,
    warmup_epochs: Annotated[Optional[int], typer.Option(help="[10]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Shapes per step on each process [16].")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak AdamW learning rate [2e-4].")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="[0.05]")] = None,
    num_points: Annotated[Optional[int], typer.Option(help="Points per shape [2048].")] = None,
    num_group: Annotated[Optional[int], typer.Option(help="Patches per cloud [the encoder's].")] = None,
    group_size: Annotated[Optional[int], typer.Option(help="Points per patch [the encoder's].")] = None,
    augmentation: Annotated[Optional[str], typer.Option(help="[scale-shift: scale 0.8-1.25, shift +-0.1]")] = None,
    val_split: ValSplit = "test",
    workers: Workers = 2,
    seed: int = 0,
    log_every: int = 10,
    precision: Precision = "auto",
    config: RunConfig = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    stop_at: StopAt = None,
    progress: Progress = True,
) -> None:
    """Part segmentation (Point-MAE's head and recipe) on a cache with per-point part labels; validates instance
    mIoU on the test split every epoch, as the published protocol does, and keeps the best as best.pt."""
    from train.downstream.segment import SegmentConfig, train_segment

    values = dict(cache=cache, out=out, init=init, model=model, train_split=train_split, epochs=epochs,
                  warmup_epochs=warmup_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                  num_points=num_points, num_group=num_group, group_size=group_size, augmentation=augmentation,
                  val_split=val_split, workers=workers, seed=seed, log_every=log_every, precision=precision,
                  overwrite=overwrite)
    cfg = run_config(ctx, SegmentConfig, "segment", values, config)
    train_and_report(lambda: train_segment(cfg, resume=resume, progress=progress, stop_at=stop_at), out)
