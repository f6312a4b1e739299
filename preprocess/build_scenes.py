"""Scene cache builder: LiDAR frames -> points, cameras, point-pixel pairs, dense teacher features.

The coordinator (:func:`build_scenes`) lists the frames, loads the teachers
on its CPU for their records, creates or resumes the store, has a worker fit
the optional PCA (:func:`fit_pca`: frames spread evenly over the scene- and
time-sorted listing, so every part of the dataset is in it; scored on other
frames held out the same way; stored at once, so a resumed build reduces with
the same matrix), and hands every unfinished block of frames to
:func:`build_block`, here or on Dask workers, through the machinery the object
builder uses. A broken frame (missing image or calibration, truncated points,
labels that do not match, no point inside any camera) becomes a failed row
with its reason and the build goes on.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from cache_schema import DONE, FAILED, CacheAttrs, CacheWriter, scenes_layout
from cache_schema.metadata import TeacherRecord
from cache_schema.writer import BlockWriter
from preprocess.build_common import (BlockReport, BuildSummary, RunOptions, build_executor, worker_teacher,
                                     coordinator_teacher, finish_build, row_failure, run_blocks,
                                     set_torch_threads, summarize, with_working_renderer)
from preprocess.dense_features import Pca, sample_at_pixels
from preprocess.errors import BadInput
from preprocess.pairs import PairConfig, Pairs, pair_points
from preprocess.render import choose_gl_platform
from preprocess.sources import ROW_ORDER
from preprocess.scene_sources import IGNORE_LABEL, Frame, FrameItem, SceneCatalog, list_scene_source, load_frame
from preprocess.teachers import Dinov2Teacher

STAGES = ("load", "pair", "features", "write")
# teacher input (width, height), multiples of 14, close to each dataset's image aspect
DEFAULT_FEATURE_SIZE = {"nuscenes": (448, 252), "semantickitti": (812, 252), "demo-scenes": (322, 196)}


@dataclass(frozen=True)
class SceneBuildConfig:
    """Everything that decides the content of a scenes cache (stored in its `config`)."""

    dataset: str
    root: str | None = None
    version: str = "v1.0-mini"          # nuscenes
    sweeps: bool = False                # nuscenes: every LiDAR sweep, not only keyframes
    frames: int = 40                    # demo-scenes
    teachers: tuple[str, ...] = ("dinov2-vitb14",)
    feature_size: tuple[int, int] | None = None  # teacher input (width, height); None = per dataset
    pca_dim: int | None = None
    pca_fit_frames: int = 32
    store_patch_grids: bool = False
    store_images: bool = False
    pairs: PairConfig = field(default_factory=PairConfig)
    seed: int = 0
    max_frames: int | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.feature_size or DEFAULT_FEATURE_SIZE.get(self.dataset, (448, 252)))  # type: ignore

    def content(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["teachers"]
        d["feature_size"] = list(self.input_size)
        d["features"] = ("image resized (no crop) to feature_size; patch features sampled bilinearly at each "
                         "pair's pixel (grid_sample, align_corners=False, border)")
        d["pairs"]["rule"] = ("inside the image, camera depth > min_depth; with occlusion, not farther than "
                              "(1 + tolerance) x the 3x3-eroded nearest depth of its cell x cell pixel cell, nor "
                              "than (1 + tolerance) x the depth of the LiDAR surface quads over its pixel (quads "
                              "of neighbouring returns within max_range_jump, drawn at their farthest corner over "
                              "their bounding box grown by surface_margin)")
        return d


# ---------------------------------------------------------------- worker side


@lru_cache(maxsize=2)
def _worker_teachers(cfg: SceneBuildConfig, run: RunOptions) -> dict[str, Dinov2Teacher]:
    set_torch_threads(run)
    choose_gl_platform(run.gl_platform)  # the demo scenes render their cameras
    return {n: worker_teacher(n, run.batch_size) for n in cfg.teachers}  # type: ignore[misc]


def _checked_frame(item: FrameItem, num_cameras: int, has_labels: bool) -> Frame:
    frame = load_frame(item)
    if len(frame.cameras) != num_cameras:
        raise BadInput(f"camera count: frame {item.id} has {len(frame.cameras)} cameras, expected {num_cameras}")
    if has_labels and frame.labels is None:  # e.g. nuScenes sweeps, KITTI test sequences
        frame.labels = np.full(len(frame.points), IGNORE_LABEL, np.uint8)
    return frame


def frame_pairs(frame: Frame, item: FrameItem, cfg: PairConfig) -> Pairs:
    pairs = pair_points(frame.points[:, :3], [(c.K, c.T_lidar_to_cam, c.image.shape[1::-1]) for c in frame.cameras],
                        cfg, rings=frame.rings)
    if len(pairs) == 0:
        raise BadInput(f"no points in any camera: none of the {len(frame.points)} points of {item.id} "
                       f"projects into an image beyond {cfg.min_depth} m")
    return pairs


def frame_features(teacher: Dinov2Teacher, frames: list[Frame], pairs: list[Pairs], size: tuple[int, int],
                   pca: Pca | None, keep_grids: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per frame: the pair features (M, D) and, if asked, the camera patch grids (C, h, w, D)."""
    images = [c.image for f in frames for c in f.cameras]
    features, grids = [], []
    per_frame = [len(f.cameras) for f in frames]
    step = max(1, teacher.batch_size // max(per_frame, default=1))  # whole frames per teacher batch
    for s in range(0, len(frames), step):
        n_images = sum(per_frame[s:s + step])
        first = sum(per_frame[:s])
        g = teacher.encode_patch_grids(images[first:first + n_images], size)  # (B, D, h, w)
        if pca is not None:
            flat = g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]).numpy()
            g = torch.from_numpy(pca.transform(flat).astype(np.float32)).reshape(
                g.shape[0], g.shape[2], g.shape[3], -1).permute(0, 3, 1, 2)
        k = 0
        for f, p in zip(frames[s:s + step], pairs[s:s + step]):
            out = np.zeros((len(p), g.shape[1]), np.float32)
            for c, cam in enumerate(f.cameras):
                sel = p.camera == c
                out[sel] = sample_at_pixels(g[k + c], p.uv[sel], cam.image.shape[1::-1])
            features.append(out)
            if keep_grids:
                grids.append(g[k:k + len(f.cameras)].permute(0, 2, 3, 1).numpy())
            k += len(f.cameras)
    return features, grids


def build_block(url: str, token: str, cfg: SceneBuildConfig, run: RunOptions, block: int,
                items: tuple[FrameItem, ...], catalog_info: dict[str, Any], pcas: dict[str, Pca | None]
                ) -> BlockReport:
    """Build and write one block of frames (runs in a worker)."""
    teachers = _worker_teachers(cfg, run)
    writer = BlockWriter.attach(url, token)
    report = BlockReport(block, dict.fromkeys(STAGES, 0.0))
    n, c = len(items), catalog_info["num_cameras"]
    has_labels = catalog_info["has_labels"]
    status, reasons = np.full(n, DONE, np.uint8), [""] * n
    loaded: dict[int, tuple[Frame, Pairs]] = {}
    for i, item in enumerate(items):
        t = time.perf_counter()
        try:
            frame = _checked_frame(item, c, has_labels)
            t1 = time.perf_counter()
            loaded[i] = frame, frame_pairs(frame, item, cfg.pairs)
            report.seconds["load"] += t1 - t
            report.seconds["pair"] += time.perf_counter() - t1
        except Exception as e:  # never let one frame stop a build
            status[i], reasons[i] = FAILED, row_failure(e)
    rows: dict[str, Any] = {
        "frames/ids": np.array([it.id for it in items]),
        "cameras/K": np.zeros((n, c, 3, 3), np.float32),
        "cameras/T_lidar_to_cam": np.tile(np.eye(4, dtype=np.float32), (n, c, 1, 1)),
        "cameras/image_size": np.zeros((n, c, 2), np.int32),
    }
    empty = {"points": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.uint8),
             "pairs/point": np.zeros(0, np.int32), "pairs/camera": np.zeros(0, np.uint8),
             "pairs/uv": np.zeros((0, 2), np.float32)}
    ragged: dict[str, list[np.ndarray]] = {k: [v] * n for k, v in empty.items() if k != "labels" or has_labels}
    if cfg.store_images:
        w, h = catalog_info["image_size"]
        rows["cameras/rgb"] = np.zeros((n, c, h, w, 3), np.uint8)
    for i, (frame, pairs) in loaded.items():
        for j, cam in enumerate(frame.cameras):
            rows["cameras/K"][i, j], rows["cameras/T_lidar_to_cam"][i, j] = cam.K, cam.T_lidar_to_cam
            rows["cameras/image_size"][i, j] = cam.image.shape[1::-1]
            if cfg.store_images:
                ih, iw = cam.image.shape[:2]
                rows["cameras/rgb"][i, j, :ih, :iw] = cam.image
        ragged["points"][i] = frame.points
        if has_labels:
            ragged["labels"][i] = frame.labels
        ragged["pairs/point"][i], ragged["pairs/camera"][i], ragged["pairs/uv"][i] = pairs.point, pairs.camera, pairs.uv
    t = time.perf_counter()
    ok = sorted(loaded)
    for name, teacher in teachers.items():
        dim = pcas[name].components.shape[0] if pcas[name] is not None else teacher.dim
        features, grids = frame_features(teacher, [loaded[i][0] for i in ok], [loaded[i][1] for i in ok],
                                         cfg.input_size, pcas[name], cfg.store_patch_grids)
        ragged[f"teachers/{name}/pair_features"] = [np.zeros((0, dim), np.float32)] * n
        for i, fe in zip(ok, features):
            ragged[f"teachers/{name}/pair_features"][i] = fe
        if cfg.store_patch_grids:
            gw, gh = cfg.input_size[0] // teacher.patch_size, cfg.input_size[1] // teacher.patch_size
            rows[f"teachers/{name}/patch_grid"] = np.zeros((n, c, gh, gw, dim), np.float32)
            for i, g in zip(ok, grids):
                rows[f"teachers/{name}/patch_grid"][i] = g
    report.seconds["features"] += time.perf_counter() - t
    t = time.perf_counter()
    writer.write_block(block, rows, status, reasons, ragged=ragged)
    report.seconds["write"] += time.perf_counter() - t
    return report


# ---------------------------------------------------------------- coordinator


def scene_teacher_record(teacher: Dinov2Teacher, cfg: SceneBuildConfig) -> TeacherRecord:
    """The record of a dense teacher in a scenes cache: role ``pair_features``, PCA and grid settings."""
    extra: dict[str, Any] = {"feature_size": list(cfg.input_size), "patch_size": teacher.patch_size}
    dim = teacher.dim
    if cfg.pca_dim:
        extra["pca_input_dim"], dim = teacher.dim, cfg.pca_dim
    if cfg.store_patch_grids:
        extra["patch_grid"] = [cfg.input_size[1] // teacher.patch_size, cfg.input_size[0] // teacher.patch_size]
    return dataclasses.replace(teacher.record, roles=("pair_features",), dim=dim, normalized=False, extra=extra)


PCA_MAX_PATCHES = 200_000  # patch features the PCA is fitted on, drawn with the seed from every fit frame


def pca_sample_frames(listing: tuple[FrameItem, ...], fit: int) -> tuple[list[FrameItem], list[FrameItem]]:
    """Frames to fit the PCA on and frames to score it on, alternating along the scene- and time-sorted
    listing: both spread evenly over every scene, neither is the first few frames of one."""
    held = max(2, fit // 4)
    picks = np.unique(np.linspace(0, len(listing) - 1, min(len(listing), fit + held)).round().astype(int))
    n_held = max(1, len(picks) * held // (fit + held)) if len(picks) > 1 else 0
    every = len(picks) // max(n_held, 1)
    scored = set(picks[every // 2::every][:n_held].tolist())
    return ([listing[i] for i in picks if i not in scored], [listing[i] for i in picks if i in scored])


def _patch_features(teacher: Dinov2Teacher, items: list[FrameItem], size: tuple[int, int]) -> np.ndarray:
    images = []
    for item in items:
        try:
            images += [c.image for c in load_frame(item).cameras]
        except BadInput:
            continue
    if not images:
        return np.zeros((0, teacher.dim), np.float32)
    grids = teacher.encode_patch_grids(images, size)
    return grids.permute(0, 2, 3, 1).reshape(-1, grids.shape[1]).numpy()


def fit_pca(name: str, cfg: SceneBuildConfig, run: RunOptions, fit_items: list[FrameItem],
            held_items: list[FrameItem]) -> tuple[Pca, dict[str, Any]]:
    """Fit the PCA of teacher ``name`` (on a worker: it runs the teacher) and measure its held-out error."""
    set_torch_threads(run)
    choose_gl_platform(run.gl_platform)  # the demo scenes render their cameras
    teacher = worker_teacher(name, run.batch_size)
    sample = _patch_features(teacher, fit_items, cfg.input_size)  # type: ignore[arg-type]
    if not len(sample):
        raise ValueError("no frame could be loaded to fit the PCA on")
    if len(sample) > PCA_MAX_PATCHES:
        sample = sample[np.random.default_rng(cfg.seed).choice(len(sample), PCA_MAX_PATCHES, replace=False)]
    pca = Pca.fit(sample, cfg.pca_dim, cfg.seed)  # type: ignore[arg-type]
    held = _patch_features(teacher, held_items, cfg.input_size)  # type: ignore[arg-type]
    stats = {"fit_frames": len(fit_items), "fit_patches": len(sample), "fit_relative_error": pca.relative_error(sample),
             "heldout_frames": len(held_items), "heldout_patches": len(held),
             "heldout_relative_error": pca.relative_error(held) if len(held) else None,
             "frames": "spread evenly over the scene- and time-sorted listing, fit and held-out alternating"}
    return pca, stats


def build_scenes(url: str, cfg: SceneBuildConfig, run: RunOptions = RunOptions()) -> BuildSummary:
    """Build (or resume, or confirm) the scenes cache at ``url``."""
    start = time.perf_counter()
    listing = list_scene_source(cfg.dataset, cfg.root, version=cfg.version, sweeps=cfg.sweeps,
                                frames=cfg.frames, seed=cfg.seed).limited(cfg.max_frames)
    catalog = listing.shuffled(cfg.seed)
    if not catalog.items:
        raise ValueError(f"dataset {cfg.dataset!r} at {cfg.root!r} lists no frames")
    teachers = {n: coordinator_teacher(n, run.batch_size) for n in cfg.teachers}  # CPU: records only
    for name, t in teachers.items():
        if not isinstance(t, Dinov2Teacher):
            raise ValueError(f"teacher {name!r}: scenes caches hold dense DINOv2 patch features; "
                             f"use a dinov2-* teacher")
    records = {n: scene_teacher_record(t, cfg) for n, t in teachers.items()}
    w, h = catalog.image_size
    layout = scenes_layout(len(catalog.items), len(catalog.camera_names), records, with_labels=catalog.has_labels,
                           image_hw=(h, w), store_images=cfg.store_images)
    attrs = CacheAttrs(kind="scenes", dataset={"name": catalog.name, "source_root": catalog.source_root,
                                               "cameras": list(catalog.camera_names),
                                               **({"notes": list(catalog.notes)} if catalog.notes else {})},
                       config={**cfg.content(), "row_order": ROW_ORDER}, teachers=records,
                       label_names=catalog.label_names)
    notes = list(catalog.notes)
    with CacheWriter.create(url, attrs, layout, overwrite=run.overwrite, max_block_rows=run.block_rows) as writer:
        if writer.is_finalized:
            return summarize(writer, url, writer.finalize(), start, "frame", already_complete=True)
        with build_executor(run) as ex:
            if cfg.dataset == "demo-scenes":  # the only source that renders
                run = with_working_renderer(ex, run)
            pcas: dict[str, Pca | None] = {}
            for name, t in teachers.items():
                pcas[name] = None
                if cfg.pca_dim:
                    path = f"teachers/{name}/pca_components"
                    if path in writer.group:  # resuming: reduce with the matrix the first blocks used
                        pcas[name] = Pca(writer.group[path][:], writer.group[f"teachers/{name}/pca_mean"][:])
                        continue
                    pca, stats = ex.call(fit_pca, name, cfg, run, *pca_sample_frames(listing.items,
                                                                                      cfg.pca_fit_frames))
                    writer.write_fixed(f"teachers/{name}/pca_mean", pca.mean)
                    writer.write_fixed(path, pca.components)
                    writer.group[path].attrs.update(stats)
                    pcas[name] = pca
                    notes.append(f"PCA {name}: {t.dim} -> {cfg.pca_dim} dims, relative reconstruction error "
                                 f"{stats['heldout_relative_error']:.3f} on {stats['heldout_frames']} held-out "
                                 f"frames ({stats['fit_relative_error']:.3f} on the {stats['fit_frames']} "
                                 "it was fitted on)")
            info = {"num_cameras": len(catalog.camera_names), "has_labels": catalog.has_labels,
                    "image_size": catalog.image_size}
            tasks = {b: (url, writer.token, cfg, run, b, catalog.items[slice(*writer.block_range(b))], info, pcas)
                     for b in writer.pending_blocks()}
            stage_seconds = run_blocks(ex, writer, build_block, tasks, STAGES, desc=f"{cfg.dataset} frames",
                                       unit="frame")
        summary = finish_build(writer, url, catalog.splits(), start, "frame", stage_seconds)
        summary.notes = notes
        return summary
