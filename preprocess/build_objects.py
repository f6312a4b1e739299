"""Object cache builder: meshes -> points, renders, captions, teacher embeddings -> `objects` cache.

The coordinator (:func:`build_objects`) lists the dataset, loads the teachers
on its CPU for their records and the class-prompt embeddings, creates or resumes the
store and hands every unfinished block of rows to :func:`build_block`, in this
process or on Dask workers. A worker keeps its renderer and teachers between
blocks, turns each shape into points and views (a broken shape becomes a failed
row with its reason), then captions and embeds the whole block in batches and
writes it. Every random choice is seeded from the shape id, so the same inputs
give the same cache whichever worker, order or run builds a block.

Caption order (``config.captions.order``; stage-1 ``--text-supervision top1``
takes caption 0): BLIP-2 captions (one per view) are ranked best first by the
first CLIP teacher (by name), as ULIP-2 ranks its BLIP-2 captions with CLIP:
the cosine between a caption's text embedding and the mean of the shape's view
embeddings. Template captions are a seeded shuffle of equivalent prompts, and a
captions file keeps its own order.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from cache_schema import DONE, FAILED, CacheAttrs, CacheWriter, objects_layout
from preprocess.build_common import (BlockReport, BuildSummary, RunOptions, build_executor, worker_teacher,
                                     coordinator_teacher, finish_build, row_failure, run_blocks,
                                     set_torch_threads, summarize, with_working_renderer)
from cache_schema.writer import BlockWriter
from preprocess.captions import captioner_settings, make_captioner
from preprocess.meshes import BadInput, load_mesh, normalize_unit_sphere
from preprocess.points import sample_points, seed_for
from preprocess.render import Renderer, ViewConfig
from preprocess.sources import ROW_ORDER, Catalog, MeshItem, list_source
from preprocess.teachers import ClipTeacher, Dinov2Teacher, Teacher

STAGES = ("load", "sample", "render", "caption", "embed", "write")


@dataclass(frozen=True)
class ObjectBuildConfig:
    """Everything that decides the content of an objects cache (stored in its `config`)."""

    dataset: str
    root: str | None = None
    num_points: int = 8192
    point_dtype: str = "float16"
    views: ViewConfig = ViewConfig()
    teachers: tuple[str, ...] = ("clip-vit-b16", "dinov2-vitb14")
    captioner: str = "template"
    num_captions: int = 5
    captions_file: str | None = None
    store_rgb: bool = True
    store_depth: bool = True
    seed: int = 0
    max_per_class: int | None = None
    demo_per_class: int = 40

    def content(self) -> dict[str, Any]:
        """The build settings as stored in `config`; teachers are recorded in the root `teachers` instead."""
        d = dataclasses.asdict(self)
        del d["teachers"]
        d["views"] = {**dataclasses.asdict(self.views), "intrinsics": self.views.intrinsics().tolist(),
                      "camera_convention": "camera-to-world, OpenGL axes (x right, y up, looks along -z)",
                      "depth": "camera z distance in normalised units, 0 = background"}
        d["points"] = "area-weighted surface samples, bounding-box centred, unit sphere"
        return d


# ---------------------------------------------------------------- worker side


@lru_cache(maxsize=2)
def _worker_tools(cfg: ObjectBuildConfig, run: RunOptions):
    set_torch_threads(run)
    renderer = Renderer(cfg.views, run.gl_platform)
    captioner = make_captioner(cfg.captioner, cfg.num_captions, cfg.captions_file, cfg.seed)
    return renderer, captioner, {n: worker_teacher(n, run.batch_size) for n in cfg.teachers}


def _shape_views(item: MeshItem, cfg: ObjectBuildConfig, renderer: Renderer, report: BlockReport):
    """Points, normals, per-point part ids (None without part labels), RGB and depth of one shape, and a note;
    raises BadInput."""
    t = time.perf_counter()
    mesh, notes = load_mesh(item, cfg.root)
    mesh, _, _ = normalize_unit_sphere(mesh)
    t1 = time.perf_counter()
    points, normals, faces = sample_points(mesh, cfg.num_points, seed_for(item.id, cfg.seed))
    # the built-in demo shapes know the part of every face (files may carry stray metadata: not trusted)
    face_part = mesh.metadata.get("face_part") if item.procedural is not None else None
    if face_part is not None and len(face_part) != len(mesh.faces):
        raise BadInput(f"part labels for {len(face_part)} faces on a mesh of {len(mesh.faces)}")
    part_label = None if face_part is None else np.asarray(face_part)[faces]
    t2 = time.perf_counter()
    rgb, depth = renderer.render(mesh)
    t3 = time.perf_counter()
    report.seconds["load"] += t1 - t
    report.seconds["sample"] += t2 - t1
    report.seconds["render"] += t3 - t2
    return points, normals, part_label, rgb, depth, "; ".join(notes)


def build_block(url: str, token: str, cfg: ObjectBuildConfig, run: RunOptions, block: int,
                items: tuple[MeshItem, ...], label_names: tuple[str, ...]) -> BlockReport:
    """Build and write one block of rows (runs in a worker)."""
    renderer, captioner, teachers = _worker_tools(cfg, run)
    writer = BlockWriter.attach(url, token)
    report = BlockReport(block, dict.fromkeys(STAGES, 0.0))
    n, v, r, p, k = len(items), cfg.views.num_views, cfg.views.resolution, cfg.num_points, cfg.num_captions
    rows: dict[str, Any] = {
        "ids": np.array([it.id for it in items]), "label": np.array([it.label for it in items]),
        "points": np.zeros((n, p, 3), np.float32), "normals": np.zeros((n, p, 3), np.float32),
        "captions": np.full((n, k), "", dtype=object),
    }
    with_parts = any(s.path == "part_label" for s in writer.layout.arrays)
    if with_parts:
        rows["part_label"] = np.zeros((n, p), np.uint8)
    rgb_all, depth_all = np.zeros((n, v, r, r, 3), np.uint8), np.zeros((n, v, r, r), np.float32)
    status, reasons = np.full(n, DONE, np.uint8), [""] * n
    for i, item in enumerate(items):
        try:
            rows["points"][i], rows["normals"][i], part_label, rgb_all[i], depth_all[i], reasons[i] = \
                _shape_views(item, cfg, renderer, report)
            if with_parts:
                if part_label is None:
                    raise BadInput("no part labels: this cache stores them for every shape")
                rows["part_label"][i] = part_label
        except Exception as e:  # never let one shape stop a build
            status[i], reasons[i] = FAILED, row_failure(e)
    ok = np.flatnonzero(status == DONE)
    t = time.perf_counter()
    for i, (caps, note) in zip(ok, captioner.caption([items[i] for i in ok], label_names, [rgb_all[i] for i in ok])):
        rows["captions"][i] = caps
        reasons[i] = "; ".join(x for x in (reasons[i], note) if x)
    report.seconds["caption"] += time.perf_counter() - t
    t = time.perf_counter()
    rows.update(embed_block_arrays(teachers, rgb_all[ok], depth_all[ok], rows["captions"][ok], ok, n, v, k))
    ranker = ranking_teacher(cfg.captioner, teachers)
    if ranker:
        put_best_first(rows, ok, ranker)
    report.seconds["embed"] += time.perf_counter() - t
    if cfg.store_rgb:
        rows["views/rgb"] = rgb_all
    if cfg.store_depth:
        rows["views/depth"] = depth_all
    t = time.perf_counter()
    writer.write_block(block, rows, status, reasons)
    report.seconds["write"] += time.perf_counter() - t
    return report


def embed_block_arrays(teachers: dict[str, Teacher], rgb: np.ndarray, depth: np.ndarray, captions: np.ndarray,
           ok: np.ndarray, n: int, v: int, k: int) -> dict[str, np.ndarray]:
    """Teacher arrays of a block; rows not in ``ok`` stay zero."""
    out: dict[str, np.ndarray] = {}
    flat_rgb = rgb.reshape(-1, *rgb.shape[2:])

    def put(path: str, values: np.ndarray, per_row: int) -> None:
        full = np.zeros((n, per_row, values.shape[-1]), np.float32)
        if len(ok):
            full[ok] = values.reshape(len(ok), per_row, values.shape[-1])
        out[path] = full

    for name, t in teachers.items():
        if isinstance(t, ClipTeacher):
            put(f"teachers/{name}/image", t.encode_images(flat_rgb), v)
            put(f"teachers/{name}/depth", t.encode_depth(depth.reshape(-1, *depth.shape[2:])), v)
            put(f"teachers/{name}/text", t.encode_texts([str(c) for c in captions.ravel()]), k)
        elif isinstance(t, Dinov2Teacher):
            cls, patch = t.encode_images(flat_rgb)
            put(f"teachers/{name}/image", cls, v)
            put(f"teachers/{name}/patch_mean", patch, v)
    return out


def ranking_teacher(captioner: str, teachers: dict[str, Teacher]) -> str | None:
    """The CLIP teacher that ranks a BLIP-2 build's captions (the first by name), or None: no ranking."""
    clip = sorted(name for name, t in teachers.items() if isinstance(t, ClipTeacher))
    return clip[0] if captioner.startswith("blip2") and clip else None


def rank_captions(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """(n, K) int: each shape's captions best first, by the cosine of their text embeddings ``text`` (n, K, D) with
    the mean of its view embeddings ``image`` (n, V, D); ties keep the captioner's order."""
    shape = image.mean(axis=1)                                                   # (n, D)
    shape = shape / np.maximum(np.linalg.norm(shape, axis=-1, keepdims=True), 1e-12)
    text = text / np.maximum(np.linalg.norm(text, axis=-1, keepdims=True), 1e-12)
    return np.argsort(-np.einsum("nkd,nd->nk", text, shape), axis=1, kind="stable")


def put_best_first(rows: dict[str, np.ndarray], ok: np.ndarray, ranker: str) -> None:
    """Reorder the captions of rows ``ok`` and every teacher's embeddings of them alike, best first by ``ranker``."""
    order = rank_captions(rows[f"teachers/{ranker}/text"][ok], rows[f"teachers/{ranker}/image"][ok])  # (n_ok, K)
    for key in [k for k in rows if k == "captions" or (k.startswith("teachers/") and k.endswith("/text"))]:
        values = rows[key][ok]                                                  # (n_ok, K) or (n_ok, K, D)
        rows[key][ok] = np.take_along_axis(values, order.reshape(order.shape + (1,) * (values.ndim - 2)), 1)


def caption_order(captioner: str, teachers: dict[str, Teacher]) -> str:
    """How a cache's K captions of a shape are ordered (its ``config.captions.order``)."""
    ranker = ranking_teacher(captioner, teachers)
    if ranker:
        return (f"best first by {ranker}: cosine of the caption's text embedding with the mean of the shape's view "
                "embeddings")
    if captioner.startswith("blip2"):
        return "one caption per view, views spread evenly from view 0 (no CLIP teacher to rank them)"
    return {"template": "a seeded shuffle of the templates (all equivalent)",
            "file": "the file's order, cycled to K"}.get(captioner, "the captioner's")


# ---------------------------------------------------------------- coordinator


def unrecorded_caption_order(url: str, cfg: ObjectBuildConfig) -> bool:
    """Whether the cache at ``url`` was built before caption orders were recorded and may go on as it is: its
    captions are templates or a file's (ranking never touched them), or it is finished (nothing more is written).
    An unfinished BLIP-2 build of that age is not: its new blocks would be ranked and its old ones not."""
    from cache_schema import open_cache

    try:
        existing = open_cache(url, allow_incomplete=True)
    except Exception:  # no cache there (or none readable): a new build records its order
        return False
    captions = existing.attrs.config.get("captions")
    if not isinstance(captions, dict) or "order" in captions:
        return False
    return not cfg.captioner.startswith("blip2") or existing.build.get("state") == "finalized"


def make_layout_and_attrs(catalog: Catalog, cfg: ObjectBuildConfig, teachers: dict[str, Teacher],
                          captioner_info: dict[str, Any], record_order: bool = True):
    records = {n: t.record for n, t in teachers.items()}
    layout = objects_layout(len(catalog.items), cfg.num_points, cfg.views.num_views, cfg.num_captions, records,
                            num_classes=len(catalog.label_names), image_hw=(cfg.views.resolution,) * 2,
                            store_rgb=cfg.store_rgb, store_depth=cfg.store_depth, point_dtype=cfg.point_dtype,
                            with_normals=True, with_part_labels=catalog.parts is not None)
    parts = {"parts": catalog.parts} if catalog.parts is not None else {}
    attrs = CacheAttrs(kind="objects", dataset={"name": catalog.name, "source_root": catalog.source_root},
                       config={**cfg.content(), "captions": {**captioner_info, **(
                           {"order": caption_order(cfg.captioner, teachers)} if record_order else {})},
                               "row_order": ROW_ORDER, **parts},
                       teachers=records, label_names=catalog.label_names)
    return layout, attrs


def build_objects(url: str, cfg: ObjectBuildConfig, run: RunOptions = RunOptions()) -> BuildSummary:
    """Build (or resume, or confirm) the objects cache at ``url``."""
    start = time.perf_counter()
    catalog = list_source(cfg.dataset, cfg.root, per_class=cfg.demo_per_class, seed=cfg.seed)
    catalog = catalog.limited(cfg.max_per_class).shuffled(cfg.seed)  # rows in a random order, not class by class
    if not catalog.items:
        raise ValueError(f"dataset {cfg.dataset!r} at {cfg.root!r} lists no shapes")
    teachers = {n: coordinator_teacher(n, run.batch_size) for n in cfg.teachers}  # records, class prompts
    captioner_info = captioner_settings(cfg.captioner, cfg.num_captions, cfg.captions_file)
    layout, attrs = make_layout_and_attrs(catalog, cfg, teachers, captioner_info,
                                          record_order=run.overwrite or not unrecorded_caption_order(url, cfg))
    with CacheWriter.create(url, attrs, layout, overwrite=run.overwrite, max_block_rows=run.block_rows) as writer:
        if writer.is_finalized:
            return summarize(writer, url, writer.finalize(), start, "shape", already_complete=True)
        with build_executor(run) as ex:
            run = with_working_renderer(ex, run)
            tasks = {b: (url, writer.token, cfg, run, b, catalog.items[slice(*writer.block_range(b))],
                         catalog.label_names) for b in writer.pending_blocks()}
            stage_seconds = run_blocks(ex, writer, build_block, tasks, STAGES, desc=f"{cfg.dataset} shapes",
                                       unit="shape")
        writer.write_fixed("views/camera", cfg.views.cameras())
        for name, t in teachers.items():
            if isinstance(t, ClipTeacher):
                writer.write_fixed(f"teachers/{name}/class_text", t.encode_classes(list(catalog.label_names)))
        summary = finish_build(writer, url, catalog.splits(), start, "shape", stage_seconds)
        if not (cfg.store_rgb or cfg.store_depth):
            v, r = cfg.views.num_views, cfg.views.resolution
            summary.notes.append(
                f"renders not stored (they were embedded, then dropped): {len(catalog.items)} shapes x {v} views x "
                f"{r}x{r} RGB + fp16 depth would be {len(catalog.items) * v * r * r * 5 / 1e9:.1f} GB before "
                "compression. Rebuild with --rgb --depth to keep them (add-teacher needs them).")
        return summary
