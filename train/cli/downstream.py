"""`train finetune`, `train fewshot`, `train segment`, `train semseg`, `train detect`, `train export-encoder`: a pre-trained encoder
put to use."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cache_schema.errors import CacheError
from train.cli.config_command import config_command
from train.cli.options import fail
from train.downstream.detect import DetectConfig, train_detect
from train.downstream.fewshot import FewshotConfig, run_fewshot
from train.downstream.finetune import FinetuneConfig, train_finetune
from train.downstream.segment import SegmentConfig, train_segment
from train.downstream.semseg import SemsegConfig, train_semseg

finetune = config_command(
    FinetuneConfig, "finetune", train_finetune,
    "Fine-tune an encoder for shape classification (Point-MAE's recipes); validates on the test split every epoch, as "
    "the published protocol does, and keeps the best as best.pt.")
segment = config_command(
    SegmentConfig, "segment", train_segment,
    "Part segmentation (Point-MAE's head and recipe) on a cache with per-point part labels; validates instance mIoU "
    "on the test split every epoch, as the published protocol does, and keeps the best as best.pt.")
semseg = config_command(
    SemsegConfig, "semseg", train_semseg,
    "Indoor semantic segmentation (ACT's S3DIS protocol: random 1 m blocks of 2,048 points, Point-MAE's segmentation "
    "head without the object class, class-weighted loss) on a rooms cache; validates mIoU on random blocks of the "
    "test split every epoch, as the reference does, and keeps the best as best.pt. Score whole rooms with `train eval "
    "semseg`.")
detect = config_command(
    DetectConfig, "detect", train_detect,
    "Indoor 3D object detection: the encoder inside 3DETR (FPS queries, an 8-layer transformer decoder, Hungarian "
    "set loss; 3DETR's ScanNet recipe and augmentations) on a rooms cache with boxes; validates AP25 on the val split "
    "every 10 epochs, as 3DETR does, and keeps the best as best.pt. Score with `train eval detect`.")


def _fewshot(cfg: FewshotConfig, resume: bool = False, progress: bool = True) -> dict:
    return {k: v for k, v in run_fewshot(cfg, resume=resume, progress=progress).items() if k != "per_fold"}


fewshot = config_command(
    FewshotConfig, "fewshot", _fewshot,
    "Few-shot classification as published (Point-BERT's n-way m-shot procedure, full fine-tuning per fold): mean and "
    "std of the folds' accuracy, written to OUT/fewshot.json. --resume keeps the folds that ended and continues a "
    "stopped one.", controls=("resume", "progress"), config=False,
    control_help={"resume": "Continue OUT: keep the folds that ended, continue a stopped fold from its last.pt, run "
                            "the rest (with the same options)."})


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
