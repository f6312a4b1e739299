"""Content fingerprint of a cache: sha256 over the decoded data of every array.

Decoded bytes (not stored bytes) are hashed, so the fingerprint does not change
with the compressor, its version or the chunk shapes; two builds that wrote
the same values in any order, by any number of workers, agree. Root attributes
that describe content (dataset, config, teachers, layout) are hashed too;
build times and the tool version are not.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator

import numpy as np
import zarr

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


def content_fingerprint(group: zarr.Group) -> str:
    """``sha256:<hex>`` of the content attributes and every array's values."""
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
