"""`preprocess`: build teacher-feature caches. One command per job; each calls a library function.

    preprocess objects demo --teachers tiny                       # built-in demo shapes, CPU
    preprocess objects shapenet --root /data/ShapeNetCore.v2 --workers 8
    preprocess objects modelnet40 --root /data/ModelNet40 --scheduler tcp://head:8786
    preprocess add-teacher caches/shapenet.zarr --teacher dinov2-vitb14
    preprocess points scanobjectnn --root /data/ScanObjectNN/h5_files --variant pb_t50_rs
    preprocess points modelnet40-resampled --root /data/modelnet40_normal_resampled
    preprocess points shapenetpart --root /data/shapenetcore_partanno_segmentation_benchmark_v0_normal
    preprocess scenes demo-scenes --teachers dinov2-tiny           # built-in demo streets, CPU
    preprocess scenes nuscenes --root /data/nuscenes --version v1.0-trainval --pca-dim 64 --workers 8
    preprocess scenes semantickitti --root /data/SemanticKITTI --scheduler tcp://head:8786
    preprocess rooms demo-rooms                                    # built-in demo rooms, no teachers
    preprocess rooms s3dis --root /data/Stanford3dDataset_v1.2_Aligned_Version --workers 4
    preprocess rooms scannet --root /data/votenet/scannet --workers 4   # holds scannet_train_detection_data
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Optional

import typer

from cache_schema.errors import CacheError

app = typer.Typer(help="Build teacher-feature caches from meshes, point sets, LiDAR scenes or indoor rooms.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

Workers = Annotated[int, typer.Option(help="Dask worker processes on this machine (0: run in this process).")]
Scheduler = Annotated[Optional[str], typer.Option(help="Address of an existing Dask scheduler, e.g. tcp://head:8786.")]
Cluster = Annotated[str, typer.Option(
    help="local: --workers processes here (one per GPU on a GPU machine, via dask-cuda); slurm: submit SLURM jobs "
         "with dask-jobqueue, one worker and one GPU each (see --cluster-option).")]
ClusterOption = Annotated[Optional[list[str]], typer.Option(
    "--cluster-option", help="KEY=VALUE for --cluster slurm, repeatable: jobs, queue, account, walltime, cores, "
                             "memory, gpus (0 or 1 per job), job-extra, prologue, python, local-directory, interface.")]
BatchSize = Annotated[int, typer.Option(help="Teacher inference batch size.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
GlPlatform = Annotated[str, typer.Option(help="auto, osmesa (CPU) or egl (GPU), for rendering.")]
Overwrite = Annotated[bool, typer.Option(help="Replace a store built with other settings.")]


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


def _build(build, url: str, cfg, run, teachers: bool = True) -> None:
    """Run a builder and print its summary; input and cache problems end with a message, not a traceback.
    ``teachers=False``: a builder without teachers, which never needs torch (nor its import time)."""
    from preprocess.errors import EnvironmentFailure

    expected: tuple[type[Exception], ...] = (CacheError, EnvironmentFailure, FileNotFoundError, ValueError)
    if teachers:
        from preprocess.teachers import MissingWeightsError

        expected += (MissingWeightsError,)
    try:
        summary = build(url, cfg, run)
    except expected as e:
        _fail(e)
    typer.echo(str(summary))
    if not summary.complete:
        raise typer.Exit(1)


@app.callback()
def root(storage_option: Annotated[Optional[list[str]], typer.Option(
        "--storage-option", "-o", help="fsspec option KEY=VALUE for remote caches (s3://, gs://...), repeatable, "
                                       "anywhere on the line: -o anon=true, -o 'client_kwargs={\"endpoint_url\": "
                                       "\"http://minio:9000\"}'.")] = None) -> None:
    """Build teacher-feature caches from meshes, point sets, LiDAR scenes or indoor rooms (see README)."""


@app.command()
def objects(
    dataset: Annotated[str, typer.Argument(help="shapenet, modelnet40, meshes or demo (built in, no download).")],
    root: Annotated[Optional[str], typer.Option(help="Dataset folder (not needed for demo).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Cache path or fsspec URL (default: caches/DATASET.zarr).")] = None,
    teachers: Annotated[Optional[str], typer.Option(
        help="Comma-separated teachers, or 'base' (clip-vit-b16,dinov2-vitb14) or 'tiny' (random, CPU-sized). "
             "Default: tiny for the built-in demo, base otherwise.")] = None,
    captioner: Annotated[str, typer.Option(help="template, file, blip2-opt-2.7b or blip2-tiny.")] = "template",
    captions_file: Annotated[Optional[str], typer.Option(help="JSON id -> caption(s), with --captioner file.")] = None,
    num_captions: Annotated[int, typer.Option(help="Captions per shape (K).")] = 5,
    points: Annotated[int, typer.Option(help="Surface points per shape (P).")] = 8192,
    point_dtype: Annotated[str, typer.Option(help="float16 or float32.")] = "float16",
    views: Annotated[int, typer.Option(help="Rendered views per shape (V).")] = 12,
    elevations: Annotated[str, typer.Option(help="View elevations in degrees, cycled over the views.")] = "30,-15",
    resolution: Annotated[int, typer.Option(help="Render width = height in pixels.")] = 224,
    fov: Annotated[float, typer.Option(help="Vertical field of view in degrees.")] = 40.0,
    rgb: Annotated[Optional[bool], typer.Option(
        "--rgb/--no-rgb", help="Store the renders (lets teachers be added later, draws `cache show`). Default: "
                               "stored for the demo only: at ShapeNet scale they are ~100 GB that most users "
                               "never read.")] = None,
    depth: Annotated[Optional[bool], typer.Option(
        "--depth/--no-depth", help="Store the depth maps (default: like --rgb).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice (points, captions, demo shapes).")] = 0,
    max_per_class: Annotated[Optional[int], typer.Option(help="Keep the first N shapes of each class.")] = None,
    demo_per_class: Annotated[int, typer.Option(help="Shapes per demo category.")] = 40,
    workers: Workers = 0,
    scheduler: Scheduler = None,
    cluster: Cluster = "local",
    cluster_option: ClusterOption = None,
    gl_platform: GlPlatform = "auto",
    overwrite: Overwrite = False,
    block_rows: Annotated[int, typer.Option(help="Shapes per work unit (rounded down to a power of two).")] = 64,
    batch_size: BatchSize = 64,
    progress: Progress = True,
) -> None:
    """Build an objects cache: points, renders, captions and teacher embeddings of every shape.

    Re-running with the same arguments resumes an interrupted build, or says it is complete.
    """
    from preprocess.build_objects import ObjectBuildConfig, RunOptions, build_objects
    from preprocess.render import ViewConfig
    from preprocess.teachers import resolve_names

    try:
        cfg = ObjectBuildConfig(
            dataset=dataset, root=root, num_points=points, point_dtype=point_dtype,
            views=ViewConfig(views, tuple(float(e) for e in elevations.split(",")), resolution, fov),
            teachers=resolve_names(teachers or ("tiny" if dataset == "demo" else "base")),
            captioner=captioner, num_captions=num_captions,
            captions_file=captions_file, store_rgb=dataset == "demo" if rgb is None else rgb,
            store_depth=(dataset == "demo" if rgb is None else rgb) if depth is None else depth, seed=seed,
            max_per_class=max_per_class, demo_per_class=demo_per_class)
    except ValueError as e:
        _fail(e)
    _build(build_objects, out or f"caches/{dataset}.zarr", cfg, RunOptions(
        workers=workers, scheduler=scheduler, cluster=cluster, cluster_options=tuple(cluster_option or ()),
        gl_platform=gl_platform, overwrite=overwrite, block_rows=block_rows,
        batch_size=batch_size, progress=progress))


def _size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected WIDTHxHEIGHT, e.g. 448x252, got {text!r}") from None
    return w, h


@app.command()
def scenes(
    dataset: Annotated[str, typer.Argument(help="nuscenes, semantickitti or demo-scenes (built in, no download).")],
    root: Annotated[Optional[str], typer.Option(help="Dataset folder (not needed for demo-scenes).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Cache path or fsspec URL (default: caches/DATASET.zarr).")] = None,
    version: Annotated[str, typer.Option(help="nuScenes version folder, e.g. v1.0-mini or v1.0-trainval.")]
    = "v1.0-mini",
    sweeps: Annotated[bool, typer.Option("--sweeps/--keyframes",
                                         help="nuScenes: every LiDAR sweep (nearest camera images), "
                                              "not only the annotated keyframes.")] = False,
    frames: Annotated[int, typer.Option(help="demo-scenes: how many frames to generate.")] = 40,
    teachers: Annotated[Optional[str], typer.Option(
        help="Comma-separated DINOv2 teachers: dinov2-vitb14 (pretrained), dinov2-vitb14-random, dinov2-tiny "
             "(random, CPU-sized). Default: dinov2-tiny for demo-scenes, dinov2-vitb14 otherwise.")] = None,
    feature_size: Annotated[Optional[str], typer.Option(
        help="Teacher input WIDTHxHEIGHT, multiples of 14 (default: 448x252 nuScenes, 812x252 SemanticKITTI, "
             "322x196 demo).")] = None,
    pca_dim: Annotated[Optional[int], typer.Option(help="Reduce pair features to this many dims with a PCA fitted "
                                                        "on frames spread over the dataset (default: full teacher dims).")] = None,
    pca_fit_frames: Annotated[int, typer.Option(
        help="Frames whose patch features fit the PCA, spread evenly over the scene- and time-sorted listing; "
             "a quarter as many more, between them, measure its held-out error.")] = 32,
    patch_grids: Annotated[bool, typer.Option("--patch-grids/--no-patch-grids",
                                              help="Also store every camera's whole patch grid.")] = False,
    images: Annotated[bool, typer.Option("--images/--no-images",
                                         help="Store the camera images (uint8, padded to the largest).")] = False,
    min_depth: Annotated[float, typer.Option(help="Pair only points farther than this from the camera (m).")] = 1.0,
    occlusion: Annotated[bool, typer.Option("--occlusion/--no-occlusion",
                                            help="Drop pairs hidden behind nearer points (depth-buffer test).")]
    = True,
    seed: Annotated[int, typer.Option(help="Seed of the demo scenes and the PCA.")] = 0,
    max_frames: Annotated[Optional[int], typer.Option(help="Keep the first N frames (quick runs).")] = None,
    workers: Workers = 0,
    scheduler: Scheduler = None,
    cluster: Cluster = "local",
    cluster_option: ClusterOption = None,
    gl_platform: GlPlatform = "auto",
    overwrite: Overwrite = False,
    block_rows: Annotated[int, typer.Option(help="Frames per work unit (rounded down to a power of two).")] = 16,
    batch_size: BatchSize = 32,
    progress: Progress = True,
) -> None:
    """Build a scenes cache: LiDAR points, cameras, point-pixel pairs and DINOv2 features at every pair.

    Re-running with the same arguments resumes an interrupted build, or says it is complete.
    """
    from preprocess.build_common import RunOptions
    from preprocess.build_scenes import SceneBuildConfig, build_scenes
    from preprocess.pairs import PairConfig
    from preprocess.teachers import resolve_names

    try:
        cfg = SceneBuildConfig(
            dataset=dataset, root=root, version=version, sweeps=sweeps, frames=frames,
            teachers=resolve_names(teachers or ("dinov2-tiny" if dataset == "demo-scenes" else "dinov2-vitb14")),
            feature_size=_size(feature_size), pca_dim=pca_dim,
            pca_fit_frames=pca_fit_frames, store_patch_grids=patch_grids, store_images=images,
            pairs=PairConfig(min_depth=min_depth, occlusion=occlusion), seed=seed, max_frames=max_frames)
    except ValueError as e:
        _fail(e)
    _build(build_scenes, out or f"caches/{dataset}.zarr", cfg, RunOptions(
        workers=workers, scheduler=scheduler, cluster=cluster, cluster_options=tuple(cluster_option or ()),
        gl_platform=gl_platform, overwrite=overwrite, block_rows=block_rows,
        batch_size=batch_size, progress=progress))


@app.command()
def rooms(
    dataset: Annotated[str, typer.Argument(help="s3dis, scannet or demo-rooms (built in, no download).")],
    root: Annotated[Optional[str], typer.Option(
        help="S3DIS: the release folder as downloaded, Stanford3dDataset_v1.2_Aligned_Version (holding "
             "Area_1 ... Area_6). ScanNet: the folder holding scannet_train_detection_data and meta_data "
             "(votenet's scannet/ after batch_load_scannet_data.py). Not needed for demo-rooms.")] = None,
    out: Annotated[Optional[str], typer.Option(help="Cache path or fsspec URL (default: caches/DATASET.zarr).")] = None,
    test_area: Annotated[Optional[int], typer.Option(
        help="The area whose rooms form split/test, the others split/train (default: 5 for S3DIS, the last area "
             "for demo-rooms; ScanNet has no areas: its splits are train and val from meta_data).")] = None,
    rooms: Annotated[int, typer.Option(help="demo-rooms: how many rooms to generate.")] = 24,
    room_points: Annotated[int, typer.Option(help="demo-rooms: points per room.")] = 20000,
    areas: Annotated[int, typer.Option(help="demo-rooms: areas the rooms are dealt into (Area_1 ... Area_A).")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the row order and of the demo rooms.")] = 0,
    max_rooms: Annotated[Optional[int], typer.Option(
        help="Keep the first N rooms of every area, of every split for ScanNet (quick runs).")]
    = None,
    workers: Workers = 0,
    scheduler: Scheduler = None,
    cluster: Cluster = "local",
    cluster_option: ClusterOption = None,
    overwrite: Overwrite = False,
    block_rows: Annotated[int, typer.Option(
        help="Rooms per work unit, at most 4 (an S3DIS room reaches a million points; a worker holds a block).")]
    = 4,
    progress: Progress = True,
) -> None:
    """Build a rooms cache: every room's points, colours, classes, instances and boxes.

    S3DIS is read as downloaded (Area_N/<room>/Annotations/<class>_<k>.txt; its 13 classes); a line with a stray
    character is repaired with a note, stairs are read as clutter with a note. ScanNet is read as votenet prepares
    it (scannet_train_detection_data/<scene>_{vert,sem_label,ins_label,bbox}.npy; the 40 NYU40 classes, boxes of
    votenet's 18 detection classes as prepared, others dropped with a note). A broken room becomes a failed row with
    its reason. No teachers. Re-running with the same arguments resumes an interrupted build, or says it is complete.
    """
    from preprocess.build_common import RunOptions
    from preprocess.build_rooms import RoomBuildConfig, build_rooms

    cfg = RoomBuildConfig(dataset=dataset, root=root, test_area=test_area, rooms=rooms, room_points=room_points,
                          areas=areas, seed=seed, max_rooms=max_rooms)
    _build(build_rooms, out or f"caches/{dataset}.zarr", cfg, RunOptions(
        workers=workers, scheduler=scheduler, cluster=cluster, cluster_options=tuple(cluster_option or ()),
        overwrite=overwrite, block_rows=block_rows, progress=progress), teachers=False)


@app.command()
def points(
    dataset: Annotated[str, typer.Argument(help="scanobjectnn, modelnet40-resampled, shapenet55, shapenetpart or "
                                                "demo-scan (built in, no download).")],
    root: Annotated[Optional[str], typer.Option(help="Dataset folder: ScanObjectNN's h5_files, "
                                                     "modelnet40_normal_resampled, ShapeNet55-34 or "
                                                     "shapenetcore_partanno_segmentation_benchmark_v0_normal.")]
    = None,
    out: Annotated[Optional[str], typer.Option(help="Cache path or fsspec URL (default: caches/DATASET.zarr, "
                                                    "caches/scanobjectnn-VARIANT.zarr, "
                                                    "caches/demo-scan-VARIANT.zarr).")] = None,
    variant: Annotated[str, typer.Option(help="ScanObjectNN and demo-scan: obj_bg, obj_only or pb_t50_rs.")]
    = "obj_bg",
    demo_per_class: Annotated[int, typer.Option(help="demo-scan: shapes per demo category.")] = 40,
    point_dtype: Annotated[str, typer.Option(help="float32 or float16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Seed of the row order.")] = 0,
    overwrite: Overwrite = False,
    block_rows: Annotated[int, typer.Option(help="Shapes per written block (rounded down to a power of two).")]
    = 256,
    progress: Progress = True,
) -> None:
    """Build a points cache from a point dataset: points, labels, class names, official splits (no teachers).

    Re-running with the same arguments resumes an interrupted build, or says it is complete.
    """
    from preprocess.build_points import PointBuildConfig, build_points
    from preprocess.point_sources import PointDataError

    has_variants = dataset in ("scanobjectnn", "demo-scan")
    cfg = PointBuildConfig(dataset=dataset, root=root, variant=variant if has_variants else None,
                           demo_per_class=demo_per_class if dataset == "demo-scan" else None,
                           point_dtype=point_dtype, seed=seed)
    default_out = f"caches/{dataset}-{variant}.zarr" if has_variants else f"caches/{dataset}.zarr"
    try:
        summary = build_points(out or default_out, cfg, overwrite=overwrite, block_rows=block_rows,
                               progress=progress)
    except (CacheError, PointDataError, FileNotFoundError, ValueError) as e:
        _fail(e)
    typer.echo(str(summary))


@app.command("add-teacher")
def add_teacher(
    cache: Annotated[str, typer.Argument(help="An objects cache built with --rgb (and --depth for CLIP depth).")],
    teacher: Annotated[str, typer.Option(help="Teacher to add, e.g. dinov2-vitb14.")],
    workers: Workers = 0,
    scheduler: Scheduler = None,
    cluster: Cluster = "local",
    cluster_option: ClusterOption = None,
    batch_size: BatchSize = 64,
    progress: Progress = True,
) -> None:
    """Add a teacher's arrays to a finished cache from its stored renders and captions (no re-rendering)."""
    from preprocess.add_teacher import add_teacher as run_add_teacher
    from preprocess.build_common import RunOptions
    from preprocess.errors import EnvironmentFailure
    from preprocess.teachers import MissingWeightsError

    run = RunOptions(workers=workers, scheduler=scheduler, cluster=cluster,
                     cluster_options=tuple(cluster_option or ()), batch_size=batch_size, progress=progress)
    try:
        summary = run_add_teacher(cache, teacher, run)
    except (CacheError, MissingWeightsError, EnvironmentFailure, FileNotFoundError, ValueError, KeyError) as e:
        _fail(e)
    typer.echo(summary)


@app.command("class-prompts")
def class_prompts(
    cache: Annotated[str, typer.Argument(help="A finished objects cache (e.g. from `preprocess points`).")],
    teacher: Annotated[str, typer.Option(help="CLIP teacher whose text tower embeds the class names; the one a "
                                              "stage-1 student was trained with.")] = "clip-vit-b16",
) -> None:
    """Write class-name prompt embeddings into a cache, so `train eval zeroshot` runs on it."""
    from preprocess.class_prompts import add_class_prompts
    from preprocess.teachers import MissingWeightsError

    try:
        typer.echo(add_class_prompts(cache, teacher))
    except (CacheError, MissingWeightsError, FileNotFoundError, ValueError, KeyError) as e:
        _fail(e)


def main(argv: Sequence[str] | None = None) -> None:
    from cache_schema.storage import apply_storage_args

    app(args=apply_storage_args(argv), prog_name="preprocess")
