"""`train`: pre-training stages, fine-tuning, evaluation. The root app only assembles the command modules.

    train stage1 --cache caches/demo.zarr --out runs/s1
    train stage2 --cache caches/demo.zarr --teacher runs/s1/last.pt --out runs/s2
    train mae --cache caches/shapenet.zarr --model point-m2ae --out runs/m2ae
    train joint --cache caches/demo.zarr --out runs/joint
    train export-teacher --ckpt runs/s1/last.pt --cache caches/demo.zarr
    train finetune --cache caches/scanobjectnn-obj_bg.zarr --init runs/s1/last.pt --protocol full --out runs/ft
    train eval classify --cache caches/scanobjectnn-obj_bg.zarr --ckpt runs/ft/best.pt --vote 10 --json
    train fewshot --cache caches/modelnet40-resampled.zarr --way 5 --shot 10 --init runs/s2/last.pt --out runs/fs
    train export-encoder runs/s2/last.pt --out encoder.safetensors
    train segment --cache caches/shapenetpart.zarr --init runs/s2/last.pt --out runs/seg
    train eval partseg --cache caches/shapenetpart.zarr --ckpt runs/seg/best.pt --json
    train semseg --cache caches/s3dis.zarr --init runs/s2/last.pt --out runs/semseg
    train eval semseg --cache caches/s3dis.zarr --ckpt runs/semseg/best.pt --json --save-predictions area5.npz
    train detect --cache caches/scannet.zarr --init runs/s2/last.pt --out runs/detect
    train eval detect --cache caches/scannet.zarr --ckpt runs/detect/best.pt --json --save-predictions val.npz
    train fusion pretrain --cache caches/demo-scenes.zarr --out runs/f-pre
    train fusion finetune --cache caches/demo-scenes.zarr --out runs/f-1pc --labels 1% --init runs/f-pre/last.pt
    train eval seg --cache caches/demo-scenes.zarr --ckpt runs/f-1pc/last.pt --json
    train eval zeroshot --cache caches/demo.zarr --ckpt runs/s1/last.pt --json
    train eval linear --cache caches/demo.zarr --ckpt random
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Optional

import typer

from train.cli import downstream, evaluate, fusion, pretrain, report

app = typer.Typer(help="Train point-cloud students from a teacher cache.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
app.command()(pretrain.stage1)
app.command()(pretrain.stage2)
app.command()(pretrain.mae)
app.command()(pretrain.joint)
app.command("export-teacher")(pretrain.export_teacher)
app.command()(downstream.finetune)
app.command()(downstream.fewshot)
app.command()(downstream.segment)
app.command()(downstream.semseg)
app.command()(downstream.detect)
app.command("export-encoder")(downstream.export_encoder)
app.command("report")(report.report_cmd)
app.add_typer(fusion.app, name="fusion")
app.add_typer(evaluate.app, name="eval")


@app.callback()
def root(storage_option: Annotated[Optional[list[str]], typer.Option(
        "--storage-option", "-o", help="fsspec option KEY=VALUE for remote caches (s3://, gs://...), repeatable, "
                                       "anywhere on the line: -o anon=true.")] = None) -> None:
    """Train point-cloud students from a teacher cache (see README)."""


def main(argv: Sequence[str] | None = None) -> None:
    from cache_schema.storage import apply_storage_args

    app(args=apply_storage_args(argv), prog_name="train")
