"""`preprocess`: build teacher-feature caches. One command per job; each calls a library function.

    preprocess objects demo --teachers tiny                       # built-in demo shapes, CPU
    preprocess objects shapenet --root /data/ShapeNetCore.v2 --workers 8
    preprocess objects modelnet40 --root /data/ModelNet40 --scheduler tcp://head:8786
    preprocess add-teacher caches/shapenet.zarr --teacher dinov2-vitb14
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Optional

import typer

from cache_schema.errors import CacheError

app = typer.Typer(help="Build teacher-feature caches from meshes or LiDAR scenes.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)

Workers = Annotated[int, typer.Option(help="Dask worker processes on this machine (0: run in this process).")]
Scheduler = Annotated[Optional[str], typer.Option(help="Address of an existing Dask scheduler, e.g. tcp://head:8786.")]
BatchSize = Annotated[int, typer.Option(help="Teacher inference batch size.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


@app.callback()
def root() -> None:
    """Build teacher-feature caches from meshes or LiDAR scenes (see README)."""


@app.command()
def objects(
    dataset: Annotated[str, typer.Argument(help="shapenet, modelnet40, meshes or demo (built in, no download).")],
    root: Annotated[Optional[str], typer.Option(help="Dataset folder (not needed for demo).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Cache path or fsspec URL (default: caches/DATASET.zarr).")] = None,
    teachers: Annotated[str, typer.Option(help="Comma-separated teachers, or 'base' (clip-vit-b16,dinov2-vitb14) "
                                               "or 'tiny' (random, CPU-sized).")] = "base",
    captioner: Annotated[str, typer.Option(help="template, file, blip2-opt-2.7b or blip2-tiny.")] = "template",
    captions_file: Annotated[Optional[str], typer.Option(help="JSON id -> caption(s), with --captioner file.")] = None,
    num_captions: Annotated[int, typer.Option(help="Captions per shape (K).")] = 5,
    points: Annotated[int, typer.Option(help="Surface points per shape (P).")] = 8192,
    point_dtype: Annotated[str, typer.Option(help="float16 or float32.")] = "float16",
    views: Annotated[int, typer.Option(help="Rendered views per shape (V).")] = 12,
    elevations: Annotated[str, typer.Option(help="View elevations in degrees, cycled over the views.")] = "30,-15",
    resolution: Annotated[int, typer.Option(help="Render width = height in pixels.")] = 224,
    fov: Annotated[float, typer.Option(help="Vertical field of view in degrees.")] = 40.0,
    rgb: Annotated[bool, typer.Option("--rgb/--no-rgb", help="Store the renders (lets teachers be added later).")] = True,
    depth: Annotated[bool, typer.Option("--depth/--no-depth", help="Store the depth maps.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of every random choice (points, captions, demo shapes).")] = 0,
    max_per_class: Annotated[Optional[int], typer.Option(help="Keep the first N shapes of each class.")] = None,
    demo_per_class: Annotated[int, typer.Option(help="Shapes per demo category.")] = 40,
    workers: Workers = 0,
    scheduler: Scheduler = None,
    gl_platform: Annotated[str, typer.Option(help="auto, osmesa (CPU) or egl (GPU).")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace a store built with other settings.")] = False,
    block_rows: Annotated[int, typer.Option(help="Shapes per work unit (rounded down to a power of two).")] = 64,
    batch_size: BatchSize = 64,
    progress: Progress = True,
) -> None:
    """Build an objects cache: points, renders, captions and teacher embeddings of every shape.

    Re-running with the same arguments resumes an interrupted build, or says it is complete.
    """
    from preprocess.build_objects import ObjectBuildConfig, RunOptions, build_objects
    from preprocess.render import ViewConfig
    from preprocess.teachers import MissingWeightsError, resolve_names

    try:
        cfg = ObjectBuildConfig(
            dataset=dataset, root=root, num_points=points, point_dtype=point_dtype,
            views=ViewConfig(views, tuple(float(e) for e in elevations.split(",")), resolution, fov),
            teachers=resolve_names(teachers), captioner=captioner, num_captions=num_captions,
            captions_file=captions_file, store_rgb=rgb, store_depth=depth, seed=seed,
            max_per_class=max_per_class, demo_per_class=demo_per_class)
        run = RunOptions(workers=workers, scheduler=scheduler, gl_platform=gl_platform, overwrite=overwrite,
                         block_rows=block_rows, batch_size=batch_size, progress=progress)
        summary = build_objects(out or f"caches/{dataset}.zarr", cfg, run)
    except (CacheError, MissingWeightsError, FileNotFoundError, ValueError) as e:
        _fail(e)
    typer.echo(str(summary))


@app.command("add-teacher")
def add_teacher(
    cache: Annotated[str, typer.Argument(help="An objects cache built with --rgb (and --depth for CLIP depth).")],
    teacher: Annotated[str, typer.Option(help="Teacher to add, e.g. dinov2-vitb14.")],
    workers: Workers = 0,
    scheduler: Scheduler = None,
    batch_size: BatchSize = 64,
    progress: Progress = True,
) -> None:
    """Add a teacher's arrays to a finished cache from its stored renders and captions (no re-rendering)."""
    from preprocess.add_teacher import add_teacher as run_add_teacher
    from preprocess.teachers import MissingWeightsError

    try:
        summary = run_add_teacher(cache, teacher, workers=workers, scheduler=scheduler, batch_size=batch_size,
                                  progress=progress)
    except (CacheError, MissingWeightsError, FileNotFoundError, ValueError, KeyError) as e:
        _fail(e)
    typer.echo(summary)


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else None, prog_name="preprocess")
