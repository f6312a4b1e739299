"""Writing a cache: create a store, fill it block by block, finalize it.

The coordinator of a build makes a :class:`CacheWriter` (creates or resumes the
store and holds the writer lock). Workers, in this or other processes, make a
:class:`BlockWriter` with ``BlockWriter.attach(url, token)`` and write whole
row blocks; blocks never share a chunk, so no further locking is needed::

    with CacheWriter.create(url, attrs, layout) as w:
        for b in w.pending_blocks():           # resume: only unfinished blocks
            w.write_block(b, arrays, status, reasons)
        w.write_fixed("views/camera", cameras)
        w.write_split("train", train_rows)
        w.finalize()                           # ragged consolidation + fingerprint

Ragged per-frame data (scenes) is passed per frame; a block's frames are staged
under ``_staging/`` and concatenated into flat values + int64 offsets by
:meth:`CacheWriter.finalize`, writing whole output chunks.

A row's status is written last, so a block killed half-way stays pending and
is written again by the next run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from cache_schema.chunking import (
    DEFAULT_MAX_BLOCK_ROWS,
    DEFAULT_TARGET_BYTES,
    ChunkPlan,
    chunk_for,
    plan_chunks,
    pow2_ceil,
)
from cache_schema.errors import IncompleteCacheError, LayoutMismatchError
from cache_schema.fingerprint import (DIGEST_BYTES, SCHEME, digest_path, fingerprint_from_digests, frame_digests,
                                      has_digests, legacy_fingerprint, row_digests, stored_digests)
from cache_schema.layout import DONE, FAILED, PENDING, RAGGED_FAMILIES, RETRY_PREFIX, STR, ArraySpec, Layout
from cache_schema.lock import DEFAULT_HEARTBEAT_S, DEFAULT_STALE_AFTER_S, LOCK_NAME, WriterLock, verify_token
from cache_schema.metadata import CacheAttrs
from cache_schema.storage import Location, locate

STAGING = "_staging"
COMPRESSOR = zarr.codecs.ZstdCodec(level=3, checksum=True)  # checksum: corrupt chunks fail loudly


def _write_all_chunks() -> Any:
    """Store chunks equal to the fill value too, so a missing chunk file always means damage."""
    return zarr.config.set({"array.write_empty_chunks": True})


def create_array(group: zarr.Group, spec: ArraySpec, shape: tuple[int, ...], chunks: tuple[int, ...],
                 name: str | None = None) -> zarr.Array:
    """Create (or replace) one array the way every array of a cache is stored."""
    lead = min(chunks[0], pow2_ceil(shape[0])) if shape else 1  # no chunk far larger than the array
    chunks = tuple(max(1, c) for c in (lead, *chunks[1:]))
    return group.create_array(
        name or spec.path,
        shape=shape,
        chunks=chunks,
        dtype=str if spec.dtype == STR else spec.dtype,
        fill_value="" if spec.dtype == STR else 0,
        compressors=COMPRESSOR,
        dimension_names=spec.dims,
        config={"write_empty_chunks": True},
        overwrite=True,
    )


def create_digests(group: zarr.Group, specs: Sequence[ArraySpec], num_rows: int, block_rows: int) -> None:
    """The (rows, 32) digest array of every row and ragged array in ``specs`` (see ``fingerprint``)."""
    for spec in specs:
        if spec.axis in ("row", *RAGGED_FAMILIES):
            dspec = ArraySpec(digest_path(spec.path), "uint8", (DIGEST_BYTES,), ("row", "sha256"), "row")
            create_array(group, dspec, (num_rows, DIGEST_BYTES), (block_rows, DIGEST_BYTES))


def _as_dtype(path: str, value: Any, spec: ArraySpec) -> np.ndarray:
    arr = np.asarray(value)
    if spec.dtype == STR:
        if arr.size and arr.dtype.kind not in "UOT":
            raise LayoutMismatchError(f"{path}: expected strings, got dtype {arr.dtype}")
        return arr.astype(str)
    return arr.astype(spec.dtype, copy=False)


class BlockWriter:
    """Writes whole row blocks into a store created (and locked) by a :class:`CacheWriter`."""

    def __init__(self, loc: Location, group: zarr.Group, token: str) -> None:
        self.loc = loc
        self.group = group
        self.token = token
        attrs = dict(group.attrs)
        self.layout = Layout.from_dict(attrs["layout"])
        self.plan = ChunkPlan.from_dict(attrs["chunking"])

    @classmethod
    def attach(cls, url: str, token: str, storage_options: dict[str, Any] | None = None) -> BlockWriter:
        """Open a store whose build is running, as one of its workers (``token`` from the coordinator)."""
        loc = locate(url, storage_options)
        verify_token(loc, token)
        return cls(loc, zarr.open_group(loc.zarr_store(read_only=False), mode="r+"), token)

    @property
    def num_blocks(self) -> int:
        return self.plan.num_blocks(self.layout.num_rows)

    def block_range(self, block: int) -> tuple[int, int]:
        return self.plan.block_range(block, self.layout.num_rows)

    def pending_blocks(self) -> list[int]:
        """Blocks that still hold a pending row (all of them in a new store) or a row to retry."""
        todo = (self.group[self.layout.status_path][:] == PENDING) | self.retry_rows()
        return [b for b in range(self.num_blocks) if todo[slice(*self.block_range(b))].any()]

    def retry_rows(self) -> np.ndarray:
        """(rows,) bool: failed for environmental reasons (reason starts with ``RETRY_PREFIX``)."""
        reasons = self.group[self.layout.status_path + "_reason"][:]
        return np.fromiter((str(r).startswith(RETRY_PREFIX) for r in reasons), bool, len(reasons))

    def write_block(
        self,
        block: int,
        arrays: Mapping[str, Any],
        status: Sequence[int] | np.ndarray,
        reasons: Sequence[str] | None = None,
        ragged: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        """Write every row array of one block (status and reasons last).

        ``arrays``: path -> (n, *inner) for every row array but the status pair.
        ``status``: (n,) DONE or FAILED; ``reasons``: (n,) text, required for failed rows.
        ``ragged``: path -> list of n per-frame arrays, for every flat array (scenes).
        """
        start, stop = self.block_range(block)
        n = stop - start
        status_arr, reasons_arr = self._check_status(block, n, status, reasons)
        row_specs = [s for s in self.layout.by_axis("row")
                     if s.path not in (self.layout.status_path, self.layout.status_path + "_reason")]
        _check_keys(f"block {block}", {s.path for s in row_specs}, set(arrays))
        values = {}
        for spec in row_specs:
            v = _as_dtype(spec.path, arrays[spec.path], spec)
            if v.shape != (n, *spec.inner_shape):
                raise LayoutMismatchError(
                    f"block {block}: {spec.path} has shape {v.shape}, expected {(n, *spec.inner_shape)}")
            values[spec.path] = v
        if ragged and not self.layout.ragged_families():
            raise LayoutMismatchError(f"block {block}: an {self.layout.kind} cache has no ragged arrays")
        verify_token(self.loc, self.token)
        status_path = self.layout.status_path
        with _write_all_chunks():
            if self.layout.ragged_families():
                self._stage_ragged(block, n, ragged or {})
            for path, v in values.items():
                self.group[path][start:stop] = v
                self._write_digests(path, start, stop, row_digests(v))
            self._write_digests(status_path + "_reason", start, stop, row_digests(reasons_arr))
            self._write_digests(status_path, start, stop, row_digests(status_arr))
            self.group[status_path + "_reason"][start:stop] = reasons_arr
            self.group[status_path][start:stop] = status_arr

    def _write_digests(self, path: str, start: int, stop: int, digests: np.ndarray) -> None:
        if digest_path(path) in self.group:  # stores made before digests existed have none
            self.group[digest_path(path)][start:stop] = digests

    def write_arrays(self, block: int, arrays: Mapping[str, Any]) -> None:
        """Write some row arrays of one block (e.g. a teacher added later); status is left alone."""
        start, stop = self.block_range(block)
        specs = {s.path: s for s in self.layout.by_axis("row")}
        verify_token(self.loc, self.token)
        with _write_all_chunks():
            for path, value in arrays.items():
                if path not in specs or path.startswith(self.layout.status_path):
                    raise LayoutMismatchError(f"block {block}: {path} is not a writable row array of this layout")
                v = _as_dtype(path, value, specs[path])
                if v.shape != (stop - start, *specs[path].inner_shape):
                    raise LayoutMismatchError(f"block {block}: {path} has shape {v.shape}")
                self.group[path][start:stop] = v
                self._write_digests(path, start, stop, row_digests(v))

    def _check_status(self, block: int, n: int, status: Any, reasons: Any) -> tuple[np.ndarray, np.ndarray]:
        status_arr = np.asarray(status, dtype=np.uint8)
        if status_arr.shape != (n,):
            raise LayoutMismatchError(f"block {block}: status has shape {status_arr.shape}, expected ({n},)")
        if not np.isin(status_arr, (DONE, FAILED)).all():
            raise LayoutMismatchError(f"block {block}: status must be DONE ({DONE}) or FAILED ({FAILED})")
        reasons_arr = np.array(reasons if reasons is not None else [""] * n, dtype=str)
        if reasons_arr.shape != (n,):
            raise LayoutMismatchError(f"block {block}: reasons has shape {reasons_arr.shape}, expected ({n},)")
        missing = (status_arr == FAILED) & (reasons_arr == "")
        if missing.any():
            raise LayoutMismatchError(f"block {block}: failed rows {np.flatnonzero(missing).tolist()} need a reason")
        return status_arr, reasons_arr

    def _stage_ragged(self, block: int, n: int, ragged: Mapping[str, Sequence[Any]]) -> None:
        families = self.layout.ragged_families()
        _check_keys(f"block {block} (ragged)", {s.path for specs in families.values() for s in specs}, set(ragged))
        stage = self.group.require_group(f"{STAGING}/b{block:06d}")
        for family, specs in families.items():
            counts = None
            for spec in specs:
                frames = ragged[spec.path]
                if len(frames) != n:
                    raise LayoutMismatchError(f"block {block}: {spec.path} has {len(frames)} frames, expected {n}")
                parts = [_as_dtype(spec.path, f, spec).reshape(-1, *spec.inner_shape) for f in frames]
                these = np.array([len(p) for p in parts], dtype=np.int64)
                if counts is not None and not np.array_equal(counts, these):
                    raise LayoutMismatchError(
                        f"block {block}: {spec.path} has per-frame lengths differing from {specs[0].path}")
                counts = these
                self._write_digests(spec.path, *self.block_range(block), frame_digests(parts))
                flat = np.concatenate(parts) if parts else np.zeros((0, *spec.inner_shape), spec.dtype)
                arr = create_array(stage, spec, flat.shape, chunk_for(spec, self.plan.target_bytes),
                                   name=spec.path.replace("/", "."))
                arr[...] = flat
            cspec = ArraySpec(f"{family}_counts", "int64", (), ("frame",), "row")
            create_array(stage, cspec, (n,), (max(n, 1),))[...] = counts


def _check_keys(where: str, expected: set[str], given: set[str]) -> None:
    missing, extra = sorted(expected - given), sorted(given - expected)
    if missing or extra:
        raise LayoutMismatchError(f"{where}: missing arrays {missing}, unexpected arrays {extra}")


class CacheWriter(BlockWriter):
    """Creates or resumes a store, holds its writer lock and finalizes it."""

    def __init__(self, loc: Location, group: zarr.Group, lock: WriterLock) -> None:
        super().__init__(loc, group, lock.token)
        self.lock = lock

    @classmethod
    def create(
        cls,
        url: str | os.PathLike[str],
        attrs: CacheAttrs,
        layout: Layout,
        *,
        target_chunk_bytes: int = DEFAULT_TARGET_BYTES,
        max_block_rows: int = DEFAULT_MAX_BLOCK_ROWS,
        overwrite: bool = False,
        storage_options: dict[str, Any] | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
    ) -> CacheWriter:
        """Take the lock; resume a store built with the same settings, or start a new one.

        A store with different attributes or layout is refused unless ``overwrite``.
        """
        if attrs.kind != layout.kind:
            raise LayoutMismatchError(f"attrs say kind={attrs.kind!r} but the layout is {layout.kind!r}")
        loc = locate(url, storage_options)
        plan = plan_chunks(layout, target_chunk_bytes, max_block_rows)
        wanted = json.loads(json.dumps({**attrs.to_dict(), "layout": layout.to_dict(), "chunking": plan.to_dict()}))
        lock = WriterLock(loc, heartbeat_s, stale_after_s).acquire()
        try:
            if loc.exists() and overwrite:
                _clear(loc)
            store = loc.zarr_store(read_only=False)
            if loc.exists():
                group = zarr.open_group(store, mode="r+")
                _check_resumable(loc.url, dict(group.attrs), wanted)
            else:
                group = zarr.open_group(store, mode="a")
                group.attrs.update(wanted)
                for spec in layout.arrays:
                    if spec.axis == "row":
                        create_array(group, spec, (layout.num_rows, *spec.inner_shape), plan.chunks[spec.path])
                create_digests(group, layout.arrays, layout.num_rows, plan.block_rows)
            if group.attrs.get("build", {}).get("state") != "finalized":
                group.attrs["build"] = {"state": "building", "started": _now(), "fingerprint": None}
            return cls(loc, group, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open_existing(cls, url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> CacheWriter:
        """Take the lock on an existing cache to extend it (see :meth:`add_arrays`)."""
        loc = locate(url, storage_options)
        lock = WriterLock(loc).acquire()
        try:
            if not loc.exists():
                raise IncompleteCacheError(f"no cache at {loc.url}")
            group = zarr.open_group(loc.zarr_store(read_only=False), mode="r+")
            CacheAttrs.from_dict(dict(group.attrs), where=loc.url)
            return cls(loc, group, lock)
        except BaseException:
            lock.release()
            raise

    def add_arrays(self, specs: Sequence[ArraySpec], attrs_update: Mapping[str, Any]) -> None:
        """Declare new arrays (and attributes such as a teacher record); the store is building until finalize."""
        existing = {a.path for a in self.layout.arrays}
        new = [s for s in specs if s.path not in existing]
        layout = Layout(self.layout.kind, self.layout.num_rows, (*self.layout.arrays, *new))
        chunks = dict(self.plan.chunks)
        for spec in new:
            if spec.axis == "row":
                chunks[spec.path] = chunk_for(spec, self.plan.target_bytes, max_rows=self.plan.block_rows)
                create_array(self.group, spec, (layout.num_rows, *spec.inner_shape), chunks[spec.path])
        if has_digests(self.group):
            create_digests(self.group, new, layout.num_rows, self.plan.block_rows)
        self.layout, self.plan = layout, ChunkPlan(self.plan.target_bytes, self.plan.block_rows, chunks)
        self.group.attrs.update({**json.loads(json.dumps(dict(attrs_update))), "layout": layout.to_dict(),
                                 "chunking": self.plan.to_dict(),
                                 "build": {"state": "building", "started": _now(), "fingerprint": None}})

    def _require_building(self) -> None:
        if self.is_finalized:
            raise IncompleteCacheError(f"{self.loc.url} is finalized; its content can no longer change")

    @property
    def is_finalized(self) -> bool:
        """True when the store was already finished with these settings: there is nothing to do."""
        return self.group.attrs.get("build", {}).get("state") == "finalized"

    def write_fixed(self, path: str, value: Any) -> None:
        """Write one whole ``fixed`` array of the layout (cameras, class prompts, PCA)."""
        self._require_building()
        spec = self.layout[path]
        if spec.axis != "fixed":
            raise LayoutMismatchError(f"{path} is a {spec.axis} array; write it with write_block")
        v = _as_dtype(path, value, spec)
        if v.shape[1:] != spec.inner_shape or (spec.length is not None and v.shape[0] != spec.length):
            raise LayoutMismatchError(f"{path} has shape {v.shape}, expected {(spec.length, *spec.inner_shape)}")
        create_array(self.group, spec, v.shape, v.shape)[...] = v

    def write_split(self, name: str, rows: Sequence[int] | np.ndarray) -> None:
        """Store a named split as int32 row indices (``split/<name>``)."""
        self._require_building()
        idx = np.asarray(rows, dtype=np.int64)
        n = self.layout.num_rows
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= n)):
            raise LayoutMismatchError(f"split {name!r}: row indices must be 1-D and within 0..{n - 1}")
        if np.unique(idx).size != idx.size:
            raise LayoutMismatchError(f"split {name!r} repeats rows")
        # each split its own dimension: they differ in length, and xarray reads a group's dims as one set
        spec = ArraySpec(f"split/{name}", "int32", (), (f"{name}_row",), "fixed", len(idx))
        create_array(self.group, spec, (len(idx),), (max(len(idx), 1),))[...] = idx.astype(np.int32)
        self.group.attrs["splits"] = sorted({*self.group.attrs.get("splits", []), name})

    def finalize(self) -> str:
        """Check every row is finished, consolidate ragged data, record the content fingerprint."""
        if self.is_finalized:
            return self.group.attrs["build"]["fingerprint"]
        status = self.group[self.layout.status_path][:]
        pending = np.flatnonzero(status == PENDING)
        if pending.size:
            blocks = sorted({int(r) // self.plan.block_rows for r in pending})
            raise IncompleteCacheError(
                f"{self.loc.url}: {pending.size} rows are still pending (blocks {blocks[:10]}"
                f"{'...' if len(blocks) > 10 else ''}); write them before finalizing")
        retry = np.flatnonzero(self.retry_rows())
        if retry.size:
            raise IncompleteCacheError(
                f"{self.loc.url}: {retry.size} rows failed for environmental reasons (rows {retry[:10].tolist()}); "
                "run the build again to retry them before finalizing")
        for spec in self.layout.by_axis("fixed"):
            if spec.path not in self.group:
                raise IncompleteCacheError(f"{self.loc.url}: fixed array {spec.path} was never written")
        if self.layout.ragged_families() and (STAGING in self.group or not self._consolidated()):
            with _write_all_chunks():
                self._consolidate()
        if has_digests(self.group):
            paths = [s.path for s in self.layout.arrays]
            fingerprint = fingerprint_from_digests(dict(self.group.attrs), self.group,
                                                   stored_digests(self.group, paths))
            scheme = SCHEME
        else:  # a store begun before row digests existed
            fingerprint, scheme = legacy_fingerprint(self.group), "legacy-full-read"
        self.group.attrs["build"] = {
            "state": "finalized", "started": self.group.attrs["build"].get("started"), "finalized": _now(),
            "fingerprint": fingerprint, "fingerprint_scheme": scheme, "rows_done": int((status == DONE).sum()),
            "rows_failed": int((status == FAILED).sum()),
        }
        if STAGING in self.group:
            self.loc.fs.rm(self.loc.path(STAGING), recursive=True)
        return fingerprint

    def _consolidate(self) -> None:
        """Concatenate staged blocks into flat values + offsets, one output chunk at a time."""
        if STAGING not in self.group:
            raise IncompleteCacheError(f"{self.loc.url}: no staged ragged data to consolidate")
        stage = self.group[STAGING]
        blocks = [stage[f"b{b:06d}"] for b in range(self.num_blocks)]
        for family, specs in self.layout.ragged_families().items():
            counts = np.concatenate([blk[f"{family}_counts"][:] for blk in blocks])
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            ospec = self.layout[self.layout.offsets_paths[family]]
            create_array(self.group, ospec, offsets.shape, chunk_for(ospec, self.plan.target_bytes))[...] = offsets
            block_starts = offsets[[self.block_range(b)[0] for b in range(self.num_blocks)] + [self.layout.num_rows]]
            for spec in specs:
                out = create_array(self.group, spec, (int(offsets[-1]), *spec.inner_shape), self.plan.chunks[spec.path])
                parts = [blk[spec.path.replace("/", ".")] for blk in blocks]
                step = out.chunks[0]
                for c0 in range(0, out.shape[0], step):
                    c1 = min(c0 + step, out.shape[0])
                    out[c0:c1] = _gather(parts, block_starts, c0, c1)

    def _consolidated(self) -> bool:
        return all(path in self.group for path in self.layout.offsets_paths.values())

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

def _gather(parts: list[zarr.Array], starts: np.ndarray, c0: int, c1: int) -> np.ndarray:
    """Values [c0, c1) of the concatenation of ``parts`` (part b starts at ``starts[b]``).

    Only the parts that overlap the range are visited (a binary search), so consolidating is linear in
    frames and output chunks, not their product.
    """
    pieces = []
    first = int(np.searchsorted(starts, c0, side="right")) - 1
    for b in range(max(first, 0), len(parts)):
        if starts[b] >= c1:
            break
        lo, hi = max(c0, int(starts[b])), min(c1, int(starts[b + 1]))
        if lo < hi:
            pieces.append(parts[b][lo - starts[b]:hi - starts[b]])
    return np.concatenate(pieces)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _clear(loc: Location) -> None:
    """Delete everything in the store but the lock we hold."""
    for child in loc.fs.ls(loc.root, detail=False):
        if child.rstrip("/").rsplit("/", 1)[-1] != LOCK_NAME:
            loc.fs.rm(child, recursive=True)


def _check_resumable(url: str, existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    ignore = {"tool", "build", "splits"}
    diffs = [d for k in sorted(set(existing) | set(wanted)) if k not in ignore
             for d in _differences(existing.get(k), wanted.get(k), k)]
    if diffs:
        shown = ", ".join(diffs[:6]) + (f" and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise LayoutMismatchError(
            f"{url} already holds a cache built with different settings ({shown} differ); "
            "resume with the same settings, pass overwrite to start again, or write to another path")


def _differences(a: Any, b: Any, path: str) -> list[str]:
    """Dotted paths where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [path]
