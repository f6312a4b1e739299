"""`cache validate`: check a store against the contract and list every problem found.

Checks, in order: schema and version; build state and writer lock; every
layout array present with the declared dtype and shape; every chunk file
present; no pending rows and a reason for each failed row; offsets monotonic
and matching the flat arrays; split indices. Then, block by block in parallel
(threads here, or a Dask cluster), every chunk decoded (zstd checksums catch
corruption), finite teacher values, pair indices inside their frame, part ids
inside their class, and every row's digest recomputed; the digests that differ
from what the build wrote name their rows, and the content fingerprint is
recomputed from them. Memory stays at a few blocks: a scene cache of 20
million pairs validates in well under 2 GiB (``scripts/bench_validate.py``).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from cache_schema.errors import CacheError
from cache_schema.chunking import ChunkPlan
from cache_schema.fingerprint import (array_paths, block_bytes, fingerprint_from_digests, has_digests,
                                      legacy_fingerprint, row_digests, stored_digests)
from cache_schema.layout import DONE, FAILED, IGNORE_LABEL, PENDING, STATUS_NAMES, STR, Layout
from cache_schema.lock import describe, read_lock
from cache_schema.metadata import CacheAttrs
from cache_schema.reader import open_group_readonly
from cache_schema.storage import Location, locate


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store: ``where`` (array path or "store") and ``what``."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def validate(url: str, storage_options: dict[str, Any] | None = None, workers: int | None = None,
             scheduler: str | None = None) -> list[Problem]:
    """Every problem found in the store at ``url`` (empty list: valid).

    The data are read block by block (the build's row blocks), ``workers`` threads at a time (default: up to
    4), or on the Dask cluster at ``scheduler``; memory stays at a few blocks whatever the cache's size.
    """
    loc = locate(url, storage_options)
    try:
        group = open_group_readonly(loc)
        raw = dict(group.attrs)
        CacheAttrs.from_dict(raw, where=loc.url)
        layout = Layout.from_dict(raw["layout"])
        plan = ChunkPlan.from_dict(raw["chunking"])
    except (CacheError, KeyError, ValueError, TypeError) as e:
        return [Problem("store", f"cannot be read as a cache: {e}")]
    problems: list[Problem] = []
    problems += _check_build(loc, raw)
    arrays, shape_problems = _check_arrays(group, layout)
    problems += shape_problems
    for path in array_paths(group):
        problems += _check_chunk_files(loc, path, group[path])
    small, small_problems = _read_small(group, layout)
    problems += small_problems
    problems += _check_status(arrays, layout, small)
    ragged_problems = _check_ragged(arrays, layout, small)
    problems += ragged_problems
    problems += _check_splits(group, raw, layout)
    part_allowed = None
    if "part_label" in arrays:
        part_allowed, part_problems = _part_table(raw)
        problems += part_problems
    if shape_problems or ragged_problems:
        return problems  # the block checks below rely on the shapes and offsets
    ranges = [plan.block_range(b, layout.num_rows) for b in range(plan.num_blocks(layout.num_rows))]
    class_counts = {"labels": len(raw.get("label_names", [])),
                    "boxes/label": len(raw.get("config", {}).get("box_classes", []))}
    context = BlockContext.build(layout, small, arrays, part_allowed, class_counts)
    results = _map_blocks(loc.url, storage_options, ranges, context, workers, scheduler)
    problems += _merge_block_problems(results)
    unreadable = any("do not decode" in p.what for r in results for p in r.problems)
    problems += _check_fingerprint(group, raw, layout, results, unreadable)
    return problems


def _check_build(loc: Location, raw: dict[str, Any]) -> list[Problem]:
    out = []
    state = raw.get("build", {}).get("state")
    if state != "finalized":
        out.append(Problem("store", f"build state is {state!r}, not 'finalized': the build is running or was killed"))
    held = read_lock(loc)
    if held is not None:
        out.append(Problem("store", f"a writer lock is present ({describe(held)})"))
    return out


def _check_arrays(group: zarr.Group, layout: Layout) -> tuple[dict[str, zarr.Array], list[Problem]]:
    out, arrays = [], {}
    for spec in layout.arrays:
        try:
            arr = group[spec.path]
        except KeyError:
            out.append(Problem(spec.path, "missing"))
            continue
        arrays[spec.path] = arr
        want_str = spec.dtype == STR
        if want_str != (arr.dtype.kind in "UOT") or (not want_str and np.dtype(arr.dtype) != np.dtype(spec.dtype)):
            out.append(Problem(spec.path, f"dtype {arr.dtype}, expected {spec.dtype}"))
        lead = {"row": layout.num_rows, "offsets": layout.num_rows + 1}.get(spec.axis, spec.length)
        if arr.shape[1:] != spec.inner_shape or (lead is not None and arr.shape[0] != lead):
            out.append(Problem(spec.path, f"shape {arr.shape}, expected ({lead or 'n'}, *{spec.inner_shape})"))
    return arrays, out


def _read_small(group: zarr.Group, layout: Layout) -> tuple[dict[str, np.ndarray], list[Problem]]:
    """Status, reasons and offsets: one value per row, read whole (everything else is read by block)."""
    kept, out = {}, []
    paths = [layout.status_path, layout.status_path + "_reason", *layout.offsets_paths.values()]
    for path in paths:
        if path in group:
            try:
                kept[path] = group[path][:]
            except Exception as e:  # any codec error means a damaged chunk
                out.append(Problem(path, f"does not decode ({type(e).__name__}: {e})"))
    return kept, out


@dataclass(frozen=True)
class BlockContext:
    """What every block check needs besides its own rows (small: offsets, part tables)."""

    row_paths: tuple[str, ...]
    ragged: dict[str, tuple[str, ...]]         # family -> flat array paths
    offsets: dict[str, np.ndarray]             # family -> (rows + 1,)
    num_cameras: int | None
    status_path: str
    part_allowed: np.ndarray | None            # (classes, parts) bool, when the cache has part labels
    class_counts: dict[str, int] = field(default_factory=dict)  # ragged label path -> number of classes (0: any)

    @classmethod
    def build(cls, layout: Layout, small: dict[str, np.ndarray], arrays: dict[str, zarr.Array],
              part_allowed: np.ndarray | None, class_counts: dict[str, int] | None = None) -> BlockContext:
        families = {f: tuple(s.path for s in specs) for f, specs in layout.ragged_families().items()}
        offsets = {f: small[layout.offsets_paths[f]] for f in families if layout.offsets_paths[f] in small}
        n_cam = arrays["cameras/K"].shape[1] if "cameras/K" in arrays else None
        return cls(tuple(s.path for s in layout.by_axis("row")), families, offsets, n_cam, layout.status_path,
                   part_allowed, dict(class_counts or {}))


@dataclass
class BlockResult:
    start: int
    problems: list[Problem]
    digests: dict[str, np.ndarray]  # path -> (rows of the block, 32)


def _map_blocks(url: str, storage_options: dict[str, Any] | None, ranges: list[tuple[int, int]],
                context: BlockContext, workers: int | None, scheduler: str | None) -> list[BlockResult]:
    if scheduler is not None:
        from dask.distributed import Client

        with Client(scheduler) as client:
            futures = client.map(check_block, [url] * len(ranges), [storage_options] * len(ranges),
                                 ranges, [context] * len(ranges), pure=False)
            return sorted(client.gather(futures), key=lambda r: r.start)
    n = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, n)) as pool:  # decoding and hashing release the GIL
        return list(pool.map(lambda r: check_block(url, storage_options, r, context), ranges))


def check_block(url: str, storage_options: dict[str, Any] | None, rows: tuple[int, int],
                context: BlockContext) -> BlockResult:
    """Decode one row block of every array: damaged chunks, non-finite teachers, pairs outside their frame,
    part ids outside their class; and recompute its row digests."""
    group = open_group_readonly(locate(url, storage_options))
    r0, r1 = rows
    out: list[Problem] = []
    digests: dict[str, np.ndarray] = {}
    kept: dict[str, np.ndarray] = {}
    for path in context.row_paths:
        try:
            data = group[path][r0:r1]
        except Exception as e:  # any codec error means a damaged chunk
            out.append(Problem(path, f"rows {r0}:{r1} do not decode ({type(e).__name__}: {e})"))
            continue
        digests[path] = row_digests(data)
        out += _nonfinite(path, data)
        if path in ("part_label", "label", context.status_path):
            kept[path] = data
    if context.part_allowed is not None and {"part_label", "label"} <= set(kept):
        out += _bad_part_rows(kept["part_label"], kept["label"], kept.get(context.status_path), context.part_allowed,
                              r0)
    for family, paths in context.ragged.items():
        off = context.offsets.get(family)
        if off is None:
            continue
        for path in paths:
            d, problems = _ragged_block(group, path, off, r0, r1, context)
            out += problems
            if d is not None:
                digests[path] = d
    return BlockResult(r0, out, digests)


def _ragged_block(group: zarr.Group, path: str, off: np.ndarray, r0: int, r1: int, context: BlockContext
                  ) -> tuple[np.ndarray | None, list[Problem]]:
    """Stream the block's frames of one flat array a chunk at a time: per-frame digests and pair checks."""
    arr = group[path]
    lo, hi = int(off[r0]), int(off[r1])
    hashers = [hashlib.sha256() for _ in range(r1 - r0)]
    frames_off = context.offsets.get("points")
    out: list[Problem] = []
    bad_point = bad_camera = nonfinite = bad_class = 0
    num_classes = context.class_counts.get(path, 0)
    step = arr.chunks[0] if arr.ndim else 1
    c0 = lo
    while c0 < hi:
        c1 = min((c0 // step + 1) * step, hi)
        try:
            values = arr[c0:c1]
        except Exception as e:
            return None, [Problem(path, f"values {c0}:{c1} (frames {r0}:{r1}) do not decode "
                                        f"({type(e).__name__}: {e})")]
        first = int(np.searchsorted(off, c0, side="right")) - 1
        frame_of = np.searchsorted(off, np.arange(c0, c1), side="right") - 1
        for f in range(first, r1):
            a, b = max(c0, int(off[f])), min(c1, int(off[f + 1]))
            if a >= c1:
                break
            if a < b:
                hashers[f - r0].update(block_bytes(values[a - c0:b - c0]))
        if path == "pairs/point" and frames_off is not None:
            n_points = (frames_off[frame_of + 1] - frames_off[frame_of])
            bad_point += int(((values < 0) | (values >= n_points)).sum())
        if path == "pairs/camera" and context.num_cameras is not None:
            bad_camera += int((values >= context.num_cameras).sum())
        if num_classes:  # class indices (255 marks unlabelled points)
            bad_class += int(((values >= num_classes) & (values != IGNORE_LABEL)).sum())
        if path == "boxes/box":
            bad_class += int((~np.isfinite(values)).sum() + (values[:, 3:] < 0).sum())
        nonfinite += _count_nonfinite(path, values)
        c0 = c1
    if bad_point:
        out.append(Problem("pairs/point", f"{bad_point} pairs index a point outside their frame"))
    if bad_camera:
        out.append(Problem("pairs/camera", f"{bad_camera} pairs have a camera index >= number of cameras "
                                           f"({context.num_cameras})"))
    if nonfinite:
        out.append(Problem(path, f"{nonfinite} non-finite values (NaN or Inf)"))
    if bad_class and path == "boxes/box":
        out.append(Problem(path, f"{bad_class} box values are non-finite or negative sizes (rows {r0}:{r1})"))
    elif bad_class:
        out.append(Problem(path, f"{bad_class} values are not a class index below {num_classes} nor 255 "
                                 f"(rows {r0}:{r1})"))
    digests = np.stack([np.frombuffer(h.digest(), np.uint8) for h in hashers]) if hashers else \
        np.zeros((0, 32), np.uint8)
    return digests, out


def _count_nonfinite(path: str, data: np.ndarray) -> int:
    """NaN and Inf values in a teacher array (0 for other arrays)."""
    return int((~np.isfinite(data)).sum()) if path.startswith("teachers/") and data.dtype.kind == "f" else 0


def _nonfinite(path: str, data: np.ndarray) -> list[Problem]:
    bad = _count_nonfinite(path, data)
    return [Problem(path, f"{bad} non-finite values (NaN or Inf)")] if bad else []


def _merge_block_problems(results: list[BlockResult]) -> list[Problem]:
    """One problem per array and kind, with counts added up over blocks (decode errors stay per block)."""
    merged: dict[tuple[str, str], int] = {}
    out: list[Problem] = []
    for r in results:
        for p in r.problems:
            head, _, rest = p.what.partition(" ")
            if head.isdigit():  # "12 non-finite values ...": add the counts up
                merged[(p.where, rest)] = merged.get((p.where, rest), 0) + int(head)
            else:
                out.append(p)
    return out + [Problem(where, f"{n} {what}") for (where, what), n in merged.items()]


def _check_fingerprint(group: zarr.Group, raw: dict[str, Any], layout: Layout, results: list[BlockResult],
                       unreadable: bool) -> list[Problem]:
    """Recomputed digests against the stored ones (naming the rows that differ) and the recorded fingerprint."""
    recorded = raw.get("build", {}).get("fingerprint")
    if unreadable or not recorded:
        return []
    if not has_digests(group):
        fingerprint = legacy_fingerprint(group)
    else:
        paths = sorted({p for r in results for p in r.digests})
        recomputed = {p: np.concatenate([r.digests[p] for r in results]) for p in paths}
        out = []
        for path, stored in stored_digests(group, paths).items():
            differ = np.flatnonzero((stored != recomputed[path]).any(axis=1))
            if differ.size:
                out.append(Problem(path, f"{differ.size} rows differ from what the build wrote, e.g. rows "
                                         f"{differ[:5].tolist()}"))
        if out:
            return out
        fingerprint = fingerprint_from_digests(raw, group, recomputed)
    if fingerprint != recorded:
        return [Problem("store", f"content fingerprint {fingerprint} differs from the recorded {recorded}")]
    return []


def _part_table(raw: dict[str, Any]) -> tuple[np.ndarray | None, list[Problem]]:
    """(classes, parts) bool from ``config.parts`` (which part ids each class may use), or the problem with it."""
    parts = raw.get("config", {}).get("parts")
    if not parts or "names" not in parts or "class_parts" not in parts:
        return None, [Problem("part_label", "config.parts (names, class_parts) is missing: the labels mean nothing")]
    names = list(raw.get("label_names", []))
    allowed = np.zeros((len(names), len(parts["names"])), bool)
    for c, ids in parts["class_parts"].items():
        if c not in names:
            return None, [Problem("part_label", f"config.parts names class {c!r}, not one of label_names")]
        if any(not 0 <= i < len(parts["names"]) for i in ids):
            last = len(parts["names"]) - 1
            return None, [Problem("part_label", f"config.parts gives class {c!r} part ids outside 0-{last}")]
        allowed[names.index(c), ids] = True
    return allowed, []


def _bad_part_rows(ids: np.ndarray, label: np.ndarray, status: np.ndarray | None, allowed: np.ndarray,
                   r0: int) -> list[Problem]:
    lab = label.astype(np.int64)
    done = status == DONE if status is not None else np.ones(len(ids), bool)
    ok = ~(ids >= allowed.shape[1]).any(axis=1)
    ok[ok] = allowed[lab[ok][:, None], ids[ok]].all(axis=1)
    bad = np.flatnonzero(done & ~ok) + r0
    if bad.size:
        return [Problem("part_label", f"{bad.size} rows have part ids outside their class's parts, e.g. rows "
                                      f"{bad[:5].tolist()}")]
    return []


def _check_chunk_files(loc: Location, path: str, arr: zarr.Array) -> list[Problem]:
    if arr.size == 0:
        return []
    expected = int(np.prod([-(-s // c) for s, c in zip(arr.shape, arr.chunks)]))
    try:
        found = len(loc.fs.find(loc.path(f"{path}/c")))
    except FileNotFoundError:
        found = 0
    if found < expected:
        return [Problem(path, f"{expected - found} of {expected} chunk files are missing (never written?)")]
    return []


def _check_status(arrays: dict, layout: Layout, kept: dict[str, np.ndarray]) -> list[Problem]:
    status = kept.get(layout.status_path)
    reasons = kept.get(layout.status_path + "_reason")
    if status is None:
        return []
    out = []
    pending = np.flatnonzero(status == PENDING)
    if pending.size:
        first = pending[:5].tolist()
        out.append(Problem(layout.status_path, f"{pending.size} rows are unfinished (pending), e.g. rows {first}"))
    unknown = ~np.isin(status, list(STATUS_NAMES))
    if unknown.any():
        out.append(Problem(layout.status_path, f"{int(unknown.sum())} rows have an unknown status code"))
    if reasons is not None:
        silent = np.flatnonzero((status == FAILED) & (reasons == ""))
        if silent.size:
            out.append(Problem(layout.status_path, f"{silent.size} failed rows have no reason"))
    return out


def _check_ragged(arrays: dict, layout: Layout, kept: dict[str, np.ndarray]) -> list[Problem]:
    out = []
    for family, specs in layout.ragged_families().items():
        opath = layout.offsets_paths[family]
        offsets = kept.get(opath)
        if offsets is None:
            continue
        if offsets.size == 0 or offsets[0] != 0:
            out.append(Problem(opath, "must start at 0"))
        steps = np.diff(offsets)
        if (steps < 0).any():
            out.append(Problem(opath, f"not monotonic: decreases after frame {int(np.flatnonzero(steps < 0)[0])}"))
        for spec in specs:
            if spec.path in arrays and offsets.size and arrays[spec.path].shape[0] != offsets[-1]:
                out.append(Problem(spec.path, f"has {arrays[spec.path].shape[0]} values but {opath} ends at {offsets[-1]}"))
    return out


def _check_splits(group: zarr.Group, raw: dict[str, Any], layout: Layout) -> list[Problem]:
    out = []
    for name in raw.get("splits", []):
        path = f"split/{name}"
        if path not in group:
            out.append(Problem(path, "listed in attributes but missing"))
            continue
        try:
            idx = group[path][:]
        except Exception as e:
            out.append(Problem(path, f"does not decode ({e})"))
            continue
        if idx.size and (idx.min() < 0 or idx.max() >= layout.num_rows):
            out.append(Problem(path, f"indices outside 0..{layout.num_rows - 1}"))
        if np.unique(idx).size != idx.size:
            out.append(Problem(path, "repeats rows"))
    return out
