"""Chunk shapes chosen by bytes, not by a fixed row count.

Zarr reads ~1 MB chunks about 6x faster than 64 KB ones (measured on these
machines, see scripts/bench_chunks.py), while very large chunks waste reads
when a loader needs a few rows. Every array gets chunks of about
``target_bytes`` uncompressed, rounded to powers of two rows.

Row arrays additionally share a *block*: ``block_rows`` is a multiple of every
row array's chunk rows, so a worker that writes rows ``[b*block_rows,
(b+1)*block_rows)`` writes whole chunks of every array and never touches a
chunk another worker writes. Blocks are the unit of parallel work and resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cache_schema.layout import RAGGED_FAMILIES, ArraySpec, Layout

DEFAULT_TARGET_BYTES = 4 * 2**20
DEFAULT_MAX_BLOCK_ROWS = 256


def pow2_floor(x: float) -> int:
    """Largest power of two <= x (at least 1)."""
    n = 1
    while n * 2 <= x:
        n *= 2
    return n


def chunk_for(spec: ArraySpec, target_bytes: int, max_rows: int | None = None) -> tuple[int, ...]:
    """Chunk shape of about ``target_bytes``; a single entry larger than that is split on its next axis.

    ``spec.inner_chunk`` caps the inner axes first (e.g. 1024 points per chunk).
    """
    inner = list(spec.inner_shape)
    row_bytes = max(spec.row_bytes(), 1)
    if spec.inner_chunk:
        inner = [min(a, c) for a, c in zip(inner, spec.inner_chunk)]
        row_bytes = max(row_bytes * int(np.prod(inner)) // max(int(np.prod(spec.inner_shape)), 1), 1)
    rows = pow2_floor(target_bytes / row_bytes)
    if max_rows is not None:
        rows = min(rows, max_rows)
    if row_bytes > target_bytes and inner and not spec.inner_chunk:
        per_sub = row_bytes / max(inner[0], 1)
        inner[0] = max(1, min(inner[0], int(target_bytes // per_sub)))
    return (rows, *inner)


def pow2_ceil(x: float) -> int:
    """Smallest power of two >= x (at least 1)."""
    n = 1
    while n < x:
        n *= 2
    return n


@dataclass(frozen=True)
class ChunkPlan:
    """Chunk shapes of every array of a layout, recorded in the store's attributes."""

    target_bytes: int
    block_rows: int
    chunks: dict[str, tuple[int, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {"target_bytes": self.target_bytes, "block_rows": self.block_rows,
                "chunks": {k: list(v) for k, v in self.chunks.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChunkPlan:
        return cls(d["target_bytes"], d["block_rows"], {k: tuple(v) for k, v in d["chunks"].items()})

    def num_blocks(self, num_rows: int) -> int:
        return -(-num_rows // self.block_rows)

    def block_range(self, block: int, num_rows: int) -> tuple[int, int]:
        start = block * self.block_rows
        if not 0 <= start < num_rows:
            raise IndexError(f"block {block} is outside 0..{self.num_blocks(num_rows) - 1}")
        return start, min(start + self.block_rows, num_rows)


def plan_chunks(layout: Layout, target_bytes: int = DEFAULT_TARGET_BYTES,
                max_block_rows: int = DEFAULT_MAX_BLOCK_ROWS) -> ChunkPlan:
    """Choose chunk shapes for every array and the row block size shared by row arrays."""
    if target_bytes < 1024:
        raise ValueError(f"target_bytes must be at least 1 KiB, got {target_bytes}")
    row_specs = layout.by_axis("row")
    block = min(max(chunk_for(s, target_bytes)[0] for s in row_specs), pow2_floor(max_block_rows))
    block = min(block, pow2_ceil(layout.num_rows))  # no block far beyond the data
    chunks = {s.path: chunk_for(s, target_bytes, max_rows=block) for s in row_specs}
    for s in layout.arrays:
        if s.axis in (*RAGGED_FAMILIES, "offsets"):
            chunks[s.path] = chunk_for(s, target_bytes)
        elif s.axis == "fixed":
            chunks[s.path] = (max(s.length or 1, 1), *s.inner_shape)
    return ChunkPlan(target_bytes, block, chunks)
