"""Rooms cache builder: indoor rooms (S3DIS, ScanNet, the demo rooms) -> points, colours, classes, instances, boxes.

The coordinator (:func:`build_rooms`) lists the rooms, creates or resumes the
store and hands every unfinished block of rooms to :func:`build_block`, here
or on Dask workers, through the machinery the other builders use. No
teachers: a rooms cache holds the data alone. An S3DIS room reaches a million
points, so a block holds at most :data:`MAX_BLOCK_ROOMS` rooms: a worker's
memory is a few rooms, never an area.

A broken room (no ``Annotations`` folder, an empty or unreadable class file, a
line without six numbers, a missing or misshapen ScanNet ``.npy``) becomes a
failed row with its reason and the build goes on. A room loaded with a repair,
a mapping or a drop (ScanNet boxes outside its 18 box classes) is done with
its notes as its ``status_reason``; notes known from the listing (a ``stairs``
file) are also the cache's ``dataset.notes``, and the summary lists them all,
with a source's totals (boxes dropped).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cache_schema import DONE, FAILED, CacheAttrs, CacheWriter, rooms_layout
from cache_schema.writer import BlockWriter
from preprocess.build_common import (BlockReport, BuildSummary, RunOptions, build_executor, finish_build,
                                     row_failure, run_blocks, summarize)
from preprocess.room_sources import RoomCatalog, RoomData, RoomItem, list_room_source, load_room, summary_notes
from preprocess.sources import ROW_ORDER

STAGES = ("load", "write")
MAX_BLOCK_ROOMS = 4
MAX_SUMMARY_NOTES = 20  # per-room notes printed by the summary; all of them stay in rooms/status_reason
NOTE_SEPARATOR = "; "


@dataclass(frozen=True)
class RoomBuildConfig:
    """Everything that decides the content of a rooms cache (stored in its `config`)."""

    dataset: str
    root: str | None = None
    test_area: int | None = None  # None: 5 for S3DIS, the last area for the demo rooms (ScanNet has none)
    rooms: int = 24               # demo-rooms
    room_points: int = 20000      # demo-rooms
    areas: int = 3                # demo-rooms
    seed: int = 0                 # row order; demo rooms
    max_rooms: int | None = None

    @property
    def is_demo(self) -> bool:
        return self.dataset == "demo-rooms"

    def source_options(self) -> dict[str, Any]:
        demo = {"rooms": self.rooms, "room_points": self.room_points, "areas": self.areas, "seed": self.seed}
        return {"test_area": self.test_area, **(demo if self.is_demo else {})}

    def content(self, catalog: RoomCatalog) -> dict[str, Any]:
        """The stored config: the demo settings only for the demo (an S3DIS cache does not depend on them), the
        test area the source chose (None without areas), box classes and how the boxes were made."""
        d = dataclasses.asdict(self)
        d["test_area"] = catalog.test_area
        if not self.is_demo:
            d.update(rooms=None, room_points=None, areas=None)
        d["box_classes"] = list(catalog.box_classes)
        d["boxes"] = catalog.box_rule
        return d


# ---------------------------------------------------------------- worker side


def build_block(url: str, token: str, block: int, items: tuple[RoomItem, ...]) -> BlockReport:
    """Load and write one block of rooms (runs in a worker)."""
    writer = BlockWriter.attach(url, token)
    report = BlockReport(block, dict.fromkeys(STAGES, 0.0))
    n = len(items)
    status, reasons = np.full(n, DONE, np.uint8), [""] * n
    empty = {"points": np.zeros((0, 3), np.float32), "colors": np.zeros((0, 3), np.uint8),
             "labels": np.zeros(0, np.uint8), "instances": np.zeros(0, np.int32),
             "boxes/box": np.zeros((0, 6), np.float32), "boxes/label": np.zeros(0, np.uint8)}
    ragged: dict[str, list[np.ndarray]] = {k: [v] * n for k, v in empty.items()}
    for i, item in enumerate(items):
        t = time.perf_counter()
        try:
            room = load_room(item)
        except Exception as e:  # never let one room stop a build
            status[i], reasons[i], room = FAILED, row_failure(e), None
        report.seconds["load"] += time.perf_counter() - t
        if room is None:
            continue
        for path, value in room_arrays(room).items():
            ragged[path][i] = value
        reasons[i] = NOTE_SEPARATOR.join(room.notes)
    t = time.perf_counter()
    writer.write_block(block, {"rooms/ids": np.array([it.id for it in items])}, status, reasons, ragged=ragged)
    report.seconds["write"] += time.perf_counter() - t
    return report


def room_arrays(room: RoomData) -> dict[str, np.ndarray]:
    return {"points": room.points, "colors": room.colors, "labels": room.labels, "instances": room.instances,
            "boxes/box": room.boxes, "boxes/label": room.box_labels}


# ---------------------------------------------------------------- coordinator


def done_notes(writer: CacheWriter) -> list[str]:
    """The notes of done rooms, by room id, read back from the store (so a resumed build has them all)."""
    status = writer.group["rooms/status"][:]
    reasons = writer.group["rooms/status_reason"][:]
    ids = writer.group["rooms/ids"][:]
    rows = sorted(np.flatnonzero((status == DONE) & (reasons != "")), key=lambda r: str(ids[r]))
    return [n for r in rows for n in str(reasons[r]).split(NOTE_SEPARATOR)]


def room_notes(notes: list[str], known: tuple[str, ...]) -> list[str]:
    """The done rooms' ``notes`` for the summary, without those already known from the listing; at most
    ``MAX_SUMMARY_NOTES`` and a count of the rest."""
    notes = [n for n in notes if n not in known]
    if len(notes) > MAX_SUMMARY_NOTES:
        notes = notes[:MAX_SUMMARY_NOTES] + [f"... and {len(notes) - MAX_SUMMARY_NOTES} more in rooms/status_reason"]
    return notes


def build_rooms(url: str, cfg: RoomBuildConfig, run: RunOptions = RunOptions()) -> BuildSummary:
    """Build (or resume, or confirm) the rooms cache at ``url``."""
    start = time.perf_counter()
    listing = list_room_source(cfg.dataset, cfg.root, **cfg.source_options()).limited(cfg.max_rooms)
    catalog = listing.shuffled(cfg.seed)
    if not catalog.items:
        raise ValueError(f"dataset {cfg.dataset!r} at {cfg.root!r} lists no rooms")
    attrs = CacheAttrs(kind="rooms", dataset={"name": catalog.name, "source_root": catalog.source_root,
                                              **({"notes": list(catalog.notes)} if catalog.notes else {})},
                       config={**cfg.content(catalog), "row_order": ROW_ORDER},
                       label_names=catalog.label_names)
    layout = rooms_layout(len(catalog.items))
    with CacheWriter.create(url, attrs, layout, overwrite=run.overwrite,
                            max_block_rows=min(run.block_rows, MAX_BLOCK_ROOMS)) as writer:
        if writer.is_finalized:
            return summarize(writer, url, writer.finalize(), start, "room", already_complete=True)
        with build_executor(run) as ex:
            tasks = {b: (url, writer.token, b, catalog.items[slice(*writer.block_range(b))])
                     for b in writer.pending_blocks()}
            stage_seconds = run_blocks(ex, writer, build_block, tasks, STAGES, desc=f"{cfg.dataset} rooms",
                                       unit="room")
        summary = finish_build(writer, url, catalog.splits(), start, "room", stage_seconds)
        notes = done_notes(writer)
        summary.notes = [*catalog.notes, *room_notes(notes, catalog.notes), *summary_notes(catalog.name, notes)]
        return summary
