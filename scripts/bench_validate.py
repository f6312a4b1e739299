"""`cache validate` and `finalize` at nuScenes scale: peak memory and speed on a generated scene cache.

    .venv/bin/python scripts/bench_validate.py [--pairs 20000000] [--frames 1000] [--keep PATH]

Writes a scenes cache through the real writer (random values, nuScenes-like
shapes: ~34k points and 20k point-pixel pairs per frame, 6 cameras, 64-dim
fp16 pair features after PCA), then, side by side in this run:

- ``cache validate`` in a fresh process per setting (1, 2 and 4 threads),
  reporting its peak resident memory (``ru_maxrss`` of the child) and frames/s;
- the fingerprint as ``finalize`` computes it (from the workers' row digests)
  against the one-pass full read that caches had before the digests.

The cache is generated, not committed; it is deleted afterwards unless
``--keep`` is given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import zarr

from cache_schema.fingerprint import array_paths, fingerprint_from_digests, legacy_fingerprint, stored_digests
from cache_schema.layout import DONE, scenes_layout
from cache_schema.metadata import CacheAttrs, TeacherRecord
from cache_schema.writer import CacheWriter

CAMERAS = 6


def generate(url: str, frames: int, pairs: int, points: int, dim: int, block_rows: int) -> float:
    """Write the cache; returns seconds."""
    t0 = time.perf_counter()
    teacher = {"dinov2-vitb14": TeacherRecord("dinov2-vitb14", "transformers", "facebook/dinov2-base", "none",
                                              "sha256:synthetic", dim, ("pair_features",), pretrained=False)}
    layout = scenes_layout(frames, CAMERAS, teacher)
    attrs = CacheAttrs(kind="scenes", dataset={"name": "synthetic-nuscenes", "source_root": "generated"},
                       config={"pairs_per_frame": pairs // frames}, teachers=teacher,
                       label_names=tuple(f"class{i}" for i in range(16)))
    per_frame = pairs // frames
    with CacheWriter.create(url, attrs, layout, max_block_rows=block_rows, overwrite=True) as w:
        for b in w.pending_blocks():
            s, e = w.block_range(b)
            rng = np.random.default_rng(b)
            n = e - s
            pts = [np.round(rng.normal(0, 20, (points, 4)), 2).astype(np.float32) for _ in range(n)]
            ragged = {
                "points": pts,
                "labels": [rng.integers(0, 16, points).astype(np.uint8) for _ in range(n)],
                "pairs/point": [np.sort(rng.integers(0, points, per_frame)).astype(np.int32) for _ in range(n)],
                "pairs/camera": [rng.integers(0, CAMERAS, per_frame).astype(np.uint8) for _ in range(n)],
                "pairs/uv": [np.round(rng.uniform(0, 1600, (per_frame, 2)), 1).astype(np.float32) for _ in range(n)],
                "teachers/dinov2-vitb14/pair_features": [rng.normal(size=(per_frame, dim)).astype(np.float16)
                                                         for _ in range(n)],
            }
            rows = {"frames/ids": np.array([f"frame_{i:06d}" for i in range(s, e)]),
                    "cameras/K": np.tile(np.eye(3, dtype=np.float32), (n, CAMERAS, 1, 1)),
                    "cameras/T_lidar_to_cam": np.tile(np.eye(4, dtype=np.float32), (n, CAMERAS, 1, 1)),
                    "cameras/image_size": np.full((n, CAMERAS, 2), (1600, 900), np.int32)}
            w.write_block(b, rows, np.full(n, DONE, np.uint8), [""] * n, ragged=ragged)
        w.write_split("train", np.arange(frames))
        w.finalize()
    return time.perf_counter() - t0


def validate_in_child(url: str, workers: int) -> tuple[float, float, list]:
    """(seconds, peak RSS MiB, problems) of `cache validate` in a fresh process.

    The peak is the child's own ``VmHWM`` (its address space's high-water mark): ``ru_maxrss`` of a child
    also counts the parent's pages it was forked from.
    """
    code = ("import json, re, time; from cache_schema.validate import validate; t = time.perf_counter(); "
            f"p = validate({url!r}, workers={workers}); s = time.perf_counter() - t; "
            "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
            "print(json.dumps([s, hwm, [str(x) for x in p]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, hwm_kib, problems = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds, hwm_kib / 1024, problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=20_000_000)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--points", type=int, default=34_000, help="LiDAR points per frame")
    ap.add_argument("--dim", type=int, default=64, help="pair feature dims (after PCA)")
    ap.add_argument("--block-rows", type=int, default=16)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--keep", default=None, help="write the cache here and keep it")
    args = ap.parse_args()

    root = tempfile.mkdtemp(prefix="bench-validate-")
    url = args.keep or f"{root}/scenes.zarr"
    try:
        gen = generate(url, args.frames, args.pairs, args.points, args.dim, args.block_rows)
        group = zarr.open_group(url, mode="r")
        n_pairs = group["pairs/point"].shape[0]
        print(f"generated {args.frames} frames, {n_pairs:,} pairs, {args.frames * args.points:,} points in "
              f"{gen:.0f} s (written, consolidated, finalized)")
        whole = n_pairs * (4 + 1) + n_pairs * (8 + 8 + 1)  # pairs/point + camera, and per-pair int64 temporaries
        print(f"holding pairs/point and pairs/camera whole, with per-pair int64 temporaries: "
              f"{whole / 2**30:.2f} GiB for this cache\n")
        print("| validate | seconds | frames/s | pairs/s | peak RSS | problems |")
        print("|---|---|---|---|---|---|")
        for w in (int(x) for x in args.workers.split(",")):
            seconds, peak, problems = validate_in_child(url, w)
            print(f"| {w} thread{'s' if w > 1 else ''} | {seconds:.1f} | {args.frames / seconds:.1f} | "
                  f"{n_pairs / seconds / 1e6:.2f} M | {peak:.0f} MiB | {len(problems)} |")

        t = time.perf_counter()
        digests = stored_digests(group, array_paths(group))
        fast = fingerprint_from_digests(dict(group.attrs), group, digests)
        t_fast = time.perf_counter() - t
        t = time.perf_counter()
        legacy_fingerprint(group)
        t_full = time.perf_counter() - t
        assert fast == group.attrs["build"]["fingerprint"]
        print("\n| finalize fingerprint | seconds | ratio |")
        print("|---|---|---|")
        print(f"| from row digests (now) | {t_fast:.2f} | 1.0x |")
        print(f"| one-pass full read (before) | {t_full:.1f} | {t_full / t_fast:.0f}x |")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
