"""Point-dataset builder: clouds already sampled (ScanObjectNN, ModelNet40, ShapeNet-55, the built-in
demo-scan) -> an `objects` cache.

A *points cache* holds ``ids``, ``label``, ``status``, ``points`` (and
``normals`` where the files have them), the official splits and the class
names; no renders, captions or teachers (``num_views = num_captions = 0``, see
SCHEMA.md). Fine-tuning, the SVM probe and pre-training on points alone read it
like any objects cache; ``preprocess class-prompts`` adds the class-name text
embeddings zero-shot needs.

Reading these files is I/O and parsing, not GPU work, so blocks are written in
this process, one after the other (a rerun resumes at the first unfinished
block). A shape whose own file is bad becomes a failed row with its reason; a
file every shape depends on (an h5 release, a listing) that is missing or
unreadable stops the build before anything is written.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from cache_schema import DONE, FAILED, CacheAttrs, CacheWriter, objects_layout
from preprocess.build_common import BuildSummary, summarize
from preprocess.point_sources import PointCatalog, list_point_source
from preprocess.sources import ROW_ORDER, row_order, rows_by_split


@dataclass(frozen=True)
class PointBuildConfig:
    """Everything that decides the content of a points cache (stored in its `config`)."""

    dataset: str
    root: str | None
    variant: str | None = None  # ScanObjectNN and demo-scan: obj_bg, obj_only or pb_t50_rs
    demo_per_class: int | None = None  # demo-scan: shapes per demo category
    point_dtype: str = "float32"
    seed: int = 0  # of the row order

    def content(self, catalog: PointCatalog) -> dict:
        parts = {"parts": catalog.parts} if catalog.parts is not None else {}
        return {**dataclasses.asdict(self), "source": "points", "num_points": catalog.num_points,
                "points": catalog.points_note, "normals": catalog.has_normals, "row_order": ROW_ORDER, **parts}


def build_points(url: str, cfg: PointBuildConfig, overwrite: bool = False, block_rows: int = 256,
                 progress: bool = True) -> BuildSummary:
    """Build (or resume, or confirm) the points cache at ``url``."""
    start = time.perf_counter()
    options = {"variant": cfg.variant} if cfg.variant else {}
    if cfg.demo_per_class:
        options["per_class"] = cfg.demo_per_class
    catalog = list_point_source(cfg.dataset, cfg.root, **options)
    if not catalog.items:
        raise ValueError(f"dataset {cfg.dataset!r} at {cfg.root!r} lists no shapes")
    items = row_order(catalog.items, cfg.seed)  # rows in a random order, not class by class
    layout = objects_layout(len(items), catalog.num_points, 0, 0, {}, num_classes=len(catalog.label_names),
                            point_dtype=cfg.point_dtype, with_normals=catalog.has_normals,
                            with_part_labels=catalog.parts is not None)
    attrs = CacheAttrs(kind="objects", dataset={"name": catalog.name, "source_root": catalog.source_root,
                                                **catalog.options},
                       config=cfg.content(catalog), label_names=catalog.label_names)
    with CacheWriter.create(url, attrs, layout, overwrite=overwrite, max_block_rows=block_rows) as writer:
        if writer.is_finalized:
            return summarize(writer, url, writer.finalize(), start, "shape", already_complete=True)
        for block in tqdm(writer.pending_blocks(), desc=f"{cfg.dataset} shapes (blocks)", unit="block",
                          disable=not progress):
            b0, b1 = writer.block_range(block)
            group = list(items[b0:b1])
            points, normals, reasons, *part_label = catalog.read(group)
            rows = {"ids": np.array([it.id for it in group]), "label": np.array([it.label for it in group]),
                    "points": points}
            if catalog.has_normals:
                rows["normals"] = normals
            if catalog.parts is not None:
                rows["part_label"] = part_label[0]
            status = np.array([FAILED if r else DONE for r in reasons], np.uint8)
            writer.write_block(block, rows, status, reasons)
        splits = rows_by_split(items)
        for name, union in catalog.extra_splits.items():
            splits[name] = sorted(r for part in union for r in splits.get(part, []))
        for split, rows_of_split in splits.items():
            writer.write_split(split, rows_of_split)
        return summarize(writer, url, writer.finalize(), start, "shape")
