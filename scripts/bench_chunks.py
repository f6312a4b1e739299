"""Read throughput of cache arrays by chunk size, measured side by side in one run.

    .venv/bin/python scripts/bench_chunks.py [--mib 96] [--dir /tmp]

Writes the same float16 teacher-feature array (rows of V=12 views x D=768,
18 KiB each, random values: features compress about as badly as this) with
chunk targets from 64 KiB to 16 MiB, using the cache's own chunk planner and
codec, then measures a full sequential scan (what the streaming reader does)
and random single-row reads (what a naive loader does). Ratios are against the
64 KiB chunks. The page cache is warm after writing unless --drop-caches works
(root, and a kernel that allows it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import zarr
from bench_common import drop_caches

from cache_schema.chunking import chunk_for
from cache_schema.layout import ArraySpec
from cache_schema.writer import create_array

TARGETS = [64 * 2**10, 256 * 2**10, 2**20, 4 * 2**20, 16 * 2**20]


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=96, help="uncompressed size of the test array")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--random-reads", type=int, default=200)
    ap.add_argument("--drop-caches", action="store_true", help="drop the page cache before each scan")
    args = ap.parse_args()

    spec = ArraySpec("teachers/clip/image", "float16", (12, 768), ("row", "view", "dim"), "row")
    rows = args.mib * 2**20 // spec.row_bytes()
    data = np.random.default_rng(0).normal(size=(rows, 12, 768)).astype(np.float16)
    root = tempfile.mkdtemp(dir=args.dir, prefix="bench-chunks-")
    rng = np.random.default_rng(1)
    picks = rng.integers(0, rows, args.random_reads)
    results = []
    cold = True
    try:
        for target in TARGETS:
            chunks = chunk_for(spec, target)
            group = zarr.open_group(os.path.join(root, f"t{target}"), mode="w")
            arr = create_array(group, spec, data.shape, chunks)
            arr[:] = data
            files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, f"t{target}")) for f in fs
                     if not f.endswith(".json")]
            stored = sum(os.path.getsize(f) for f in files)
            dropped = args.drop_caches and drop_caches()
            cold = cold and dropped

            def scan(arr=arr):
                for r0 in range(0, rows, arr.chunks[0]):
                    arr[r0:r0 + arr.chunks[0]]

            def random_rows(arr=arr):
                for r in picks:
                    arr[int(r)]

            t_scan = _best_of(scan, 1 if dropped else 3)
            t_rand = _best_of(random_rows, 1)
            results.append((target, chunks[0], stored / len(files), len(files), t_scan, t_rand))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base_scan = results[0][4]
    base_rand = results[0][5]
    print(f"array ({rows}, 12, 768) float16, {rows * spec.row_bytes() / 2**20:.0f} MiB uncompressed, zstd-3; "
          f"{'cold' if cold else 'warm'} page cache")
    print(f"{'target':>8} {'rows/chunk':>10} {'stored/chunk':>13} {'chunks':>7} {'scan MB/s':>10} "
          f"{'scan x':>7} {'rand rows/s':>12} {'rand x':>7}")
    for target, crows, per_chunk, n, t_scan, t_rand in results:
        mbps = rows * spec.row_bytes() / 2**20 / t_scan
        print(f"{target // 1024:>6}Ki {crows:>10} {per_chunk / 2**20:>11.2f}Mi {n:>7} {mbps:>10.0f} "
              f"{base_scan / t_scan:>7.2f} {len(picks) / t_rand:>12.0f} {base_rand / t_rand:>7.2f}")


if __name__ == "__main__":
    main()
