"""`cache validate`: check a store against the contract and list every problem found.

Checks, in order: schema and version; build state and writer lock; every
layout array present with the declared dtype and shape; every chunk file
present and decodable (zstd checksums catch corruption); offsets monotonic
and matching the flat arrays; pair indices inside their frame; finite teacher
values; no pending rows and a reason for each failed row; split indices; and
finally the content fingerprint recomputed from the same pass.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from cache_schema.errors import CacheError
from cache_schema.fingerprint import CONTENT_ATTRS, array_paths, block_bytes, hash_header, row_ranges
from cache_schema.layout import DONE, FAILED, PENDING, RAGGED_OFFSETS, STATUS_NAMES, STR, Layout
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


def validate(url: str, storage_options: dict[str, Any] | None = None) -> list[Problem]:
    """Every problem found in the store at ``url`` (empty list: valid)."""
    loc = locate(url, storage_options)
    try:
        group = open_group_readonly(loc)
        raw = dict(group.attrs)
        CacheAttrs.from_dict(raw, where=loc.url)
        layout = Layout.from_dict(raw["layout"])
    except (CacheError, KeyError, ValueError, TypeError) as e:
        return [Problem("store", f"cannot be read as a cache: {e}")]
    problems: list[Problem] = []
    problems += _check_build(loc, raw)
    arrays, shape_problems = _check_arrays(group, layout)
    problems += shape_problems
    decoded, scan_problems, fingerprint = _scan(loc, group, raw)
    problems += scan_problems
    unreadable = any("do not decode" in p.what for p in scan_problems)
    problems += _check_status(arrays, layout, decoded)
    problems += _check_ragged(arrays, layout, decoded)
    problems += _check_splits(group, raw, layout)
    if "part_label" in arrays and not unreadable:
        problems += _check_part_labels(group, raw, decoded)
    recorded = raw.get("build", {}).get("fingerprint")
    if recorded and not unreadable and fingerprint != recorded:
        problems.append(Problem("store", f"content fingerprint {fingerprint} differs from the recorded {recorded}"))
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


def _scan(loc: Location, group: zarr.Group, raw: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[Problem], str]:
    """Read every chunk once: presence, decoding, finite teachers, fingerprint; keep small arrays."""
    out: list[Problem] = []
    h = hashlib.sha256()
    h.update(json.dumps({k: raw.get(k) for k in CONTENT_ATTRS}, sort_keys=True).encode())
    kept: dict[str, np.ndarray] = {}
    for path in array_paths(group):
        arr = group[path]
        out += _check_chunk_files(loc, path, arr)
        hash_header(h, path, arr)
        keep = path.endswith(("status", "status_reason", "offsets")) or path in ("pairs/point", "pairs/camera")
        parts, nonfinite = [], 0
        for r0, r1 in row_ranges(arr):
            try:
                data = arr[r0:r1]
            except Exception as e:  # any codec error means a damaged chunk
                out.append(Problem(path, f"rows {r0}:{r1} do not decode ({type(e).__name__}: {e})"))
                continue
            h.update(block_bytes(data))
            if path.startswith("teachers/") and data.dtype.kind == "f":
                bad = ~np.isfinite(data)
                if bad.any():
                    nonfinite += int(bad.sum())
            if keep:
                parts.append(data)
        if nonfinite:
            out.append(Problem(path, f"{nonfinite} non-finite values (NaN or Inf)"))
        if keep and parts:
            kept[path] = np.concatenate(parts)
    return kept, out, "sha256:" + h.hexdigest()


def _check_part_labels(group: zarr.Group, raw: dict[str, Any], kept: dict[str, np.ndarray]) -> list[Problem]:
    """Every done row's part ids exist and belong to its class (``config.parts``); read block by block."""
    parts = raw.get("config", {}).get("parts")
    if not parts or "names" not in parts or "class_parts" not in parts:
        return [Problem("part_label", "config.parts (names, class_parts) is missing: the labels mean nothing")]
    names = list(raw.get("label_names", []))
    allowed = np.zeros((len(names), len(parts["names"])), bool)
    for c, ids in parts["class_parts"].items():
        if c not in names:
            return [Problem("part_label", f"config.parts names class {c!r}, not one of label_names")]
        if any(not 0 <= i < len(parts["names"]) for i in ids):
            last = len(parts["names"]) - 1
            return [Problem("part_label", f"config.parts gives class {c!r} part ids outside 0-{last}")]
        allowed[names.index(c), ids] = True
    status = kept.get("status")
    arr, label = group["part_label"], group["label"]
    bad_rows: list[int] = []
    for r0, r1 in row_ranges(arr):
        ids, lab = arr[r0:r1], label[r0:r1].astype(np.int64)
        done = status[r0:r1] == DONE if status is not None else np.ones(r1 - r0, bool)
        out_of_range = (ids >= allowed.shape[1]).any(axis=1)
        ok = ~out_of_range
        ok[ok] = allowed[lab[ok][:, None], ids[ok]].all(axis=1)
        bad_rows += (np.flatnonzero(done & ~ok) + r0).tolist()
    if bad_rows:
        return [Problem("part_label", f"{len(bad_rows)} rows have part ids outside their class's parts, e.g. rows "
                                      f"{bad_rows[:5]}")]
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
        opath = RAGGED_OFFSETS[family]
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
    pts_off, pair_off = kept.get("frames/offsets"), kept.get("pairs/offsets")
    point, camera = kept.get("pairs/point"), kept.get("pairs/camera")
    if not out and pts_off is not None and pair_off is not None and point is not None:
        frame_of_pair = np.repeat(np.arange(len(pair_off) - 1), np.diff(pair_off))
        n_pts = np.diff(pts_off)[frame_of_pair]
        bad = (point < 0) | (point >= n_pts)
        if bad.any():
            out.append(Problem("pairs/point", f"{int(bad.sum())} pairs index a point outside their frame"))
        n_cam = arrays["cameras/K"].shape[1] if "cameras/K" in arrays else None
        if camera is not None and n_cam is not None and (camera >= n_cam).any():
            out.append(Problem("pairs/camera", f"camera index >= number of cameras ({n_cam})"))
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
