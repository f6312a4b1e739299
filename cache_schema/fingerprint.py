"""Content fingerprint of a cache, from per-row digests that the workers write.

Every worker hashes each row it writes, one sha256 per row and array (for
ragged arrays: per frame, over that frame's values), into the private arrays
``_digests/<path>``. ``finalize`` then hashes the content attributes, each
array's header and its row digests in row order (small fixed arrays and
offsets: their values), so it reads 32 bytes per row and array instead of the
whole cache; ``cache validate`` recomputes the digests from the data, block by
block in parallel, and names the rows that differ.

Decoded bytes (not stored bytes) are hashed, so the fingerprint does not change
with the compressor, its version, the chunk shapes or the block size; two
builds that wrote the same values in any order, by any number of workers,
agree. Root attributes that describe content (dataset, config, teachers,
layout) are hashed too; build times and the tool version are not.

Caches finalized before the digests existed (no ``build.fingerprint_scheme``)
were fingerprinted by hashing every value in one pass: :func:`legacy_fingerprint`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator

import numpy as np
import zarr

SCHEME = "row-digests-v1"
DIGESTS = "_digests"
DIGEST_BYTES = 32
CONTENT_ATTRS = ("schema", "schema_version", "kind", "dataset", "config", "teachers", "label_names", "layout", "splits")
PRIVATE_PREFIX = "_"


def array_paths(group: zarr.Group) -> list[str]:
    """Every array of the cache, sorted, leaving out private scratch space (``_staging``)."""
    with warnings.catch_warnings():  # the writer lock file is not a zarr node; that is expected
        warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
        members = list(group.members(max_depth=None))
    return sorted(
        name for name, node in members
        if isinstance(node, zarr.Array) and not name.split("/")[0].startswith(PRIVATE_PREFIX)
    )


def row_ranges(arr: zarr.Array) -> Iterator[tuple[int, int]]:
    """Chunk-aligned ranges along the first axis (each reads whole chunks)."""
    step = arr.chunks[0] if arr.ndim else 1
    n = arr.shape[0] if arr.ndim else 1
    for r0 in range(0, n, step):
        yield r0, min(r0 + step, n)


def block_bytes(data: np.ndarray) -> bytes:
    """Canonical bytes of decoded values: little-endian numbers, length-prefixed UTF-8 strings."""
    if data.dtype.kind in "UOT":
        return b"".join(len(b).to_bytes(4, "little") + b for b in (str(s).encode() for s in data.ravel()))
    return np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()


def hash_header(h: hashlib._Hash, path: str, arr: zarr.Array) -> None:
    dtype = "str" if arr.dtype.kind in "UOT" else str(np.dtype(arr.dtype))
    h.update(json.dumps([path, dtype, list(arr.shape)]).encode())


def digest_path(path: str) -> str:
    """Where the row digests of array ``path`` live."""
    return f"{DIGESTS}/{path.replace('/', '.')}"


def row_digests(values: np.ndarray) -> np.ndarray:
    """(n, 32) uint8: sha256 of each row's canonical bytes."""
    out = np.zeros((len(values), DIGEST_BYTES), np.uint8)
    for i, row in enumerate(values):
        out[i] = np.frombuffer(hashlib.sha256(block_bytes(np.asarray(row))).digest(), np.uint8)
    return out


def frame_digests(frames: list[np.ndarray]) -> np.ndarray:
    """(n, 32) uint8: sha256 of each frame's values of a ragged array."""
    return np.stack([np.frombuffer(hashlib.sha256(block_bytes(f)).digest(), np.uint8) for f in frames]) \
        if frames else np.zeros((0, DIGEST_BYTES), np.uint8)


def has_digests(group: zarr.Group) -> bool:
    return DIGESTS in group


def fingerprint_from_digests(attrs: dict, group: zarr.Group, digests: dict[str, np.ndarray]) -> str:
    """``sha256:<hex>`` of the content attributes, each array's header and its row digests (``digests``: path ->
    (rows, 32)); arrays without digests (fixed arrays, offsets) are hashed by value."""
    h = hashlib.sha256()
    h.update(json.dumps({k: attrs.get(k) for k in CONTENT_ATTRS}, sort_keys=True).encode())
    for path in array_paths(group):
        arr = group[path]
        hash_header(h, path, arr)
        if path in digests:
            h.update(np.ascontiguousarray(digests[path], np.uint8).tobytes())
        elif arr.ndim == 0:
            h.update(block_bytes(np.asarray(arr[...])))
        else:
            for r0, r1 in row_ranges(arr):
                h.update(block_bytes(arr[r0:r1]))
    return "sha256:" + h.hexdigest()


def stored_digests(group: zarr.Group, paths: list[str]) -> dict[str, np.ndarray]:
    """The row digests the workers wrote, for every array in ``paths`` that has them."""
    return {p: group[digest_path(p)][:] for p in paths if digest_path(p) in group}


def legacy_fingerprint(group: zarr.Group) -> str:
    """The fingerprint of caches finalized before row digests: every array's values hashed in one pass."""
    h = hashlib.sha256()
    attrs = dict(group.attrs)
    h.update(json.dumps({k: attrs.get(k) for k in CONTENT_ATTRS}, sort_keys=True).encode())
    for path in array_paths(group):
        arr = group[path]
        hash_header(h, path, arr)
        if arr.ndim == 0:
            h.update(block_bytes(np.asarray(arr[...])))
            continue
        for r0, r1 in row_ranges(arr):
            h.update(block_bytes(arr[r0:r1]))
    return "sha256:" + h.hexdigest()
